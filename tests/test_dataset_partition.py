"""Episode partitions and held-out splits: non-overlapping, complete, usable by LeRobot."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.datasets.partition import open_partition, partition_episodes, select_episodes, split_heldout
from zk0cli.datasets.uri import parse_uri


@given(episodes=st.sets(st.integers(0, 500), max_size=60), n=st.integers(1, 12))
def test_partitions_cover_every_episode_exactly_once(episodes, n):
    parts = [partition_episodes(episodes, n, i) for i in range(n)]
    flat = [e for part in parts for e in part]
    assert sorted(flat) == sorted(episodes)
    assert all(e % n == i for i, part in enumerate(parts) for e in part)


@given(count=st.integers(1, 40), data=st.data())
def test_heldout_is_the_last_episodes(count, data):
    heldout = data.draw(st.integers(0, count - 1))
    split = split_heldout(range(count), heldout)
    assert split.heldout == list(range(count - heldout, count))
    assert split.train + split.heldout == list(range(count))


def test_select_never_trains_on_heldout():
    episodes = range(10)
    heldout = select_episodes(episodes, heldout=2, split="heldout")
    train = [e for i in range(3) for e in select_episodes(episodes, num_partitions=3, partition_id=i, heldout=2)]
    assert heldout == [8, 9] and sorted(train) == list(range(8))


@pytest.mark.parametrize(
    "call",
    [
        lambda: partition_episodes(range(4), 0, 0),
        lambda: partition_episodes(range(4), 2, 2),
        lambda: partition_episodes(range(4), 2, -1),
        lambda: split_heldout(range(4), 4),
        lambda: split_heldout(range(4), -1),
        lambda: select_episodes(range(4), split="test"),
    ],
)
def test_bad_arguments_are_bad_input(call):
    with pytest.raises(Zk0Error) as err:
        call()
    assert err.value.code is ExitCode.BAD_INPUT and err.value.hint


def test_open_partition_feeds_a_dataloader(sample_dataset):
    uri = parse_uri(str(sample_dataset))
    fps = 30
    dataset = open_partition(
        uri, num_partitions=2, partition_id=1, delta_timestamps={"action": [i / fps for i in range(5)]}
    )
    assert len(dataset) == 40  # episode 1 of 0..2
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True)))
    assert batch["action"].shape == (8, 5, 6) and set(batch["episode_index"].tolist()) == {1}
    heldout = open_partition(uri, heldout=1, split="heldout")
    assert {int(heldout[i]["episode_index"]) for i in range(len(heldout))} == {2}


def test_empty_partition_is_refused(sample_dataset):
    with pytest.raises(Zk0Error) as err:
        open_partition(parse_uri(str(sample_dataset)), num_partitions=5, partition_id=4)
    assert "has no episodes" in err.value.message
