"""`write_sample`: SO-100-shaped LeRobot datasets that carry information, deterministic per seed."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.datasets.sample import CAMERA_KEY, SO100_JOINTS, write_sample
from zk0cli.datasets.uri import open_dataset, parse_uri


def _frames(root):
    return pq.read_table(next((root / "data").rglob("*.parquet"))).to_pandas()


def test_sample_is_so100_shaped_and_loads_in_lerobot(sample_dataset):
    info = json.loads((sample_dataset / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "so100_follower" and info["fps"] == 30
    for key in ("observation.state", "action"):
        assert info["features"][key]["dtype"] == "float32"
        assert info["features"][key]["shape"] == [6] and info["features"][key]["names"] == SO100_JOINTS
    assert info["features"][CAMERA_KEY]["dtype"] == "image" and info["features"][CAMERA_KEY]["shape"] == [32, 32, 3]
    dataset = open_dataset(parse_uri(str(sample_dataset)))
    item = dataset[5]
    assert item[CAMERA_KEY].shape == (3, 32, 32) and item["action"].shape == (6,)
    assert item["task"] == "Pick up the cube and place it in the box"


def test_motion_is_smooth_and_state_follows_action(sample_dataset):
    frames = _frames(sample_dataset)
    for _, episode in frames.groupby("episode_index"):
        action = np.stack(episode["action"].to_numpy())
        state = np.stack(episode["observation.state"].to_numpy())
        assert np.all(action.std(axis=0) > 0.5)  # every joint moves, the gripper included
        assert np.abs(np.diff(action[:, :5], axis=0)).max() < 25  # no jumps between frames
        assert np.abs(state - action).mean() < np.abs(state - action[::-1]).mean()


def test_images_change_with_the_state(sample_dataset):
    dataset = open_dataset(parse_uri(str(sample_dataset)), episodes=[0])
    first, middle = dataset[0][CAMERA_KEY], dataset[20][CAMERA_KEY]
    assert float((first - middle).abs().mean()) > 0.005


def test_deterministic_given_the_seed(tmp_path):
    kwargs = dict(episodes=1, frames_per_episode=12, image_size=16)
    a = _frames(write_sample(tmp_path / "a", seed=3, **kwargs))
    b = _frames(write_sample(tmp_path / "b", seed=3, **kwargs))
    c = _frames(write_sample(tmp_path / "c", seed=4, **kwargs))
    assert a.equals(b) and not a.equals(c)


def test_tasks_move_differently(tmp_path):
    means = {}  # task -> the mean trajectory (frame x joint) over its episodes
    for task in ("pick", "stack", "sort"):
        frames = _frames(write_sample(tmp_path / task, task=task, episodes=2, frames_per_episode=20, image_size=16))
        means[task] = np.stack(frames["action"].to_numpy()).reshape(2, 20, -1).mean(axis=0)
    assert np.abs(means["pick"] - means["stack"]).max() > 5
    assert np.abs(means["pick"] - means["sort"]).max() > 5


def test_sort_alternates_colours_so_every_pair_of_episodes_shows_both_bins(tmp_path):
    """A held-out sort episode (the last) is never of a colour no training episode had: the arm
    pans left (red bin) in even episodes and right (green bin) in odd ones."""
    frames = _frames(write_sample(tmp_path / "sort", task="sort", episodes=4, frames_per_episode=40, image_size=16))
    place_pan = [  # shoulder_pan while the cube is lowered into its bin (~80% of the episode)
        float(np.stack(episode["action"].to_numpy())[int(0.8 * len(episode)), 0])
        for _, episode in frames.groupby("episode_index")
    ]
    assert [pan < -20 for pan in place_pan] == [True, False, True, False]
    assert [pan > 20 for pan in place_pan] == [False, True, False, True]


def test_refuses_non_empty_dir_and_bad_counts(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    for call in (
        lambda: write_sample(tmp_path / "full"),
        lambda: write_sample(tmp_path / "neg", episodes=-1),
        lambda: write_sample(tmp_path / "zero", episodes=0),
        lambda: write_sample(tmp_path / "task", task="dance"),
    ):
        with pytest.raises(Zk0Error) as err:
            call()
        assert err.value.code is ExitCode.BAD_INPUT and err.value.hint
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    assert not (tmp_path / "neg").exists()


def test_writes_into_an_existing_empty_dir_without_leftovers(tmp_path):
    (tmp_path / "empty").mkdir()
    write_sample(tmp_path / "empty", episodes=1, frames_per_episode=10, image_size=16)
    assert (tmp_path / "empty" / "meta" / "info.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no staging dir left behind


def test_two_camera_video_at_a_given_size_decodes_through_lerobot(cli, tmp_path):
    """Issue 15: `--cameras front,wrist --image-size HxW --video`, written by LeRobot's own video
    encoder; the frames come back from its video backend at that size, and no image leftovers."""
    root = tmp_path / "two-cams"
    done = cli(
        "--json", "dataset", "sample", str(root), "--episodes", "2", "--frames-per-episode", "10",
        "--cameras", "front,wrist", "--image-size", "48x80", "--video",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    assert done.json()["image_size"] == [48, 80] and done.json()["cameras"] == ["front", "wrist"]
    info = json.loads((root / "meta" / "info.json").read_text())
    for name in ("front", "wrist"):
        feature = info["features"][f"observation.images.{name}"]
        assert feature["dtype"] == "video" and feature["shape"] == [48, 80, 3]
        assert list((root / "videos" / f"observation.images.{name}").rglob("*.mp4"))
    assert not (root / "images").exists()
    dataset = open_dataset(parse_uri(f"local:{root}"))
    frame = dataset[5]
    front, wrist = frame["observation.images.front"], frame["observation.images.wrist"]
    assert front.shape == wrist.shape == (3, 48, 80)
    assert float((front.float() - wrist.float()).abs().mean()) / 255 > 0.02  # the wrist camera sees something else
    validated = cli("dataset", "validate", f"local:{root}")
    assert validated.code == 0, validated.stdout + validated.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image-size", "0x640"], "image height must be at least 16, got 0"),
        (["--image-size", "480by640"], "is not HEIGHTxWIDTH"),
        (["--cameras", "front,top"], "unknown top"),
        (["--cameras", "front,front"], "empty or repeated"),
    ],
)
def test_bad_sample_cameras_or_size_is_one_line_and_exit_2(cli, tmp_path, args, message):
    done = cli("dataset", "sample", str(tmp_path / "x"), *args)
    assert done.code == ExitCode.BAD_INPUT, done.stderr
    assert message in done.stderr and "hint:" in done.stderr
