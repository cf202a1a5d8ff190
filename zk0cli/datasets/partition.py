"""Episode-level splits: federated partitions and train / held-out sets.

Whole episodes only, never frames: frames of one episode are strongly correlated, so splitting
inside an episode would leak held-out data into training and make partitions overlap in content.
Held-out episodes are removed first, then the remaining episodes are dealt to partitions by
``episode_index % num_partitions``, so no episode is ever in two places.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from zk0cli.core.errors import bad_input

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from zk0cli.datasets.uri import DatasetUri

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class EpisodeSplit:
    train: list[int]
    heldout: list[int]


def partition_episodes(episodes: Iterable[int], num_partitions: int, partition_id: int) -> list[int]:
    """The sorted episodes of one partition: those with ``episode_index % num_partitions == partition_id``."""
    if num_partitions < 1:
        raise bad_input(f"num-partitions must be at least 1, got {num_partitions}", hint="pass num-partitions >= 1")
    if not 0 <= partition_id < num_partitions:
        raise bad_input(
            f"partition-id {partition_id} is outside 0..{num_partitions - 1}",
            hint=f"pass a partition-id between 0 and {num_partitions - 1}",
        )
    return sorted(e for e in set(episodes) if e % num_partitions == partition_id)


def split_heldout(episodes: Iterable[int], heldout: int) -> EpisodeSplit:
    """Hold out the last ``heldout`` episodes (by index); the rest are for training."""
    ordered = sorted(set(episodes))
    if heldout < 0:
        raise bad_input(f"held-out episodes must be >= 0, got {heldout}", hint="pass 0 to train on every episode")
    if heldout >= len(ordered) and ordered:
        raise bad_input(
            f"cannot hold out {heldout} of {len(ordered)} episodes and still train",
            hint=f"hold out at most {len(ordered) - 1} episode(s)",
        )
    cut = len(ordered) - heldout
    return EpisodeSplit(train=ordered[:cut], heldout=ordered[cut:])


def select_episodes(
    episodes: Iterable[int],
    *,
    num_partitions: int = 1,
    partition_id: int = 0,
    heldout: int = 0,
    split: Split = "train",
) -> list[int]:
    """Episodes for one (partition, split): held-out episodes are shared, training ones partitioned."""
    halves = split_heldout(episodes, heldout)
    if split == "heldout":
        return halves.heldout
    if split != "train":
        raise bad_input(f"unknown split {split!r}", hint="use 'train' or 'heldout'")
    return partition_episodes(halves.train, num_partitions, partition_id)


def open_partition(
    uri: DatasetUri,
    *,
    num_partitions: int = 1,
    partition_id: int = 0,
    heldout: int = 0,
    split: Split = "train",
    delta_timestamps: dict[str, list[float]] | None = None,
) -> LeRobotDataset:
    """A LeRobotDataset holding only this partition's episodes (LeRobot's ``episodes=`` argument).

    It is an ordinary LeRobotDataset: DataLoaders, delta_timestamps and LeRobot's training code
    work on it unchanged. Its ``meta.stats`` still describe the whole dataset.
    """
    from zk0cli.datasets.uri import open_dataset, open_metadata

    meta = open_metadata(uri)
    chosen = select_episodes(
        range(meta.total_episodes),
        num_partitions=num_partitions,
        partition_id=partition_id,
        heldout=heldout,
        split=split,
    )
    if not chosen:
        raise bad_input(
            f"{uri}: partition {partition_id} of {num_partitions} ({split}) has no episodes "
            f"({meta.total_episodes} in the dataset, {heldout} held out)",
            hint="use fewer partitions, hold out fewer episodes, or record more episodes",
        )
    return open_dataset(uri, episodes=chosen, delta_timestamps=delta_timestamps)
