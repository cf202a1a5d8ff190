"""`zk0 dataset validate`: the real recording, damaged samples (each caught and named), bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zk0cli.core.checks import Status
from zk0cli.datasets.uri import parse_uri
from zk0cli.datasets.validate import validate_dataset

DATA_FILE = Path("data/chunk-000/file-000.parquet")
EPISODES_FILE = Path("meta/episodes/chunk-000/file-000.parquet")
STATE_ACTION_TIME = (
    "spec: observation.state",
    "spec: action",
    "spec: fps",
    "counts",
    "episodes metadata",
    "doubled data",
    "frame index",
    "timestamps",
    "values: finite",
    "values: motion",
    "values: range",
    "stats",
    "tasks",
)


def _checks(root: Path, **kwargs) -> dict:
    report = validate_dataset(parse_uri(str(root)), **kwargs)
    return {c.name: c for c in report.checks}


def _failed(checks: dict) -> set[str]:
    return {name for name, c in checks.items() if c.status is Status.FAIL}


def _rewrite(path: Path, change) -> None:
    """Apply change(table) -> table to a parquet file in place."""
    table = pq.read_table(path)
    pq.write_table(change(table), path)


def _set_column(table: pa.Table, name: str, values) -> pa.Table:
    column = pa.array(values, type=table.schema.field(name).type)
    return table.set_column(table.schema.get_field_index(name), name, column)


def _vectors(table: pa.Table, name: str) -> np.ndarray:
    column = table[name].combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), -1).copy()


def _fixed_list(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), values.shape[1])


# --- the real recording -----------------------------------------------------------------------


def test_real_recording_passes_data_checks_and_names_both_missing_videos(real_dataset, cli):
    result = cli("dataset", "validate", f"local:{real_dataset}", "--json")
    assert result.code == 1
    report = result.json()
    checks = {c["name"]: c for c in report["checks"]}
    assert all(checks[name]["status"] == "ok" for name in STATE_ACTION_TIME), {
        n: checks[n]["detail"] for n in STATE_ACTION_TIME if checks[n]["status"] != "ok"
    }
    videos = checks["media: videos"]
    assert videos["status"] == "fail"
    assert "videos/observation.images.front/chunk-000/file-000.mp4" in videos["detail"]
    assert "videos/observation.images.top/chunk-000/file-000.mp4" in videos["detail"]
    assert report["summary"]["errors"] == 1 and report["summary"]["frames"] == 1492
    assert report["summary"]["episodes"] == 4 and report["timing"]["max_error_s"] < 1e-4


def test_real_recording_human_report(real_dataset, cli):
    result = cli("dataset", "validate", str(real_dataset))
    assert result.code == 1 and "Traceback" not in result.stdout + result.stderr
    assert "not accepted: 1 error(s)" in result.stdout and "1492 frames" in result.stdout


def test_sample_is_accepted(sample_dataset, cli):
    result = cli("dataset", "validate", str(sample_dataset), "--deep", "--json")
    assert result.code == 0, result.stdout
    statuses = {c["name"]: c["status"] for c in result.json()["checks"]}
    assert statuses["media: image decoding"] == "ok"
    assert set(statuses.values()) == {"ok"}


# --- damaged on purpose -----------------------------------------------------------------------


def test_duplicated_parquet_file(sample_dataset):
    shutil.copy(sample_dataset / DATA_FILE, sample_dataset / "data/chunk-000/file-001.parquet")
    checks = _checks(sample_dataset)
    doubled = checks["doubled data"]
    assert doubled.status is Status.FAIL
    assert "data/chunk-000/file-001.parquet is a byte copy of data/chunk-000/file-000.parquet" in doubled.detail
    assert "delete data/chunk-000/file-001.parquet" in doubled.fix
    assert checks["counts"].status is Status.FAIL and "240" in checks["counts"].detail


def test_duplicated_rows_inside_one_file(sample_dataset):
    _rewrite(sample_dataset / DATA_FILE, lambda t: pa.concat_tables([t, t.slice(0, 5)]))
    doubled = _checks(sample_dataset)["doubled data"]
    assert doubled.status is Status.FAIL and doubled.data["episodes"] == [0]


def test_shifted_timestamps_in_one_episode(sample_dataset):
    def shift(table):
        timestamps = table["timestamp"].to_numpy().copy()
        timestamps[table["episode_index"].to_numpy() == 1] += 0.013
        return _set_column(table, "timestamp", timestamps)

    _rewrite(sample_dataset / DATA_FILE, shift)
    checks = _checks(sample_dataset)
    timestamps = checks["timestamps"]
    assert timestamps.status is Status.FAIL and timestamps.data["episodes"] == [1]
    assert timestamps.data["worst_episodes"][0]["episode"] == 1
    assert timestamps.data["smallest_passing_tolerance_s"] == pytest.approx(0.0131)
    assert _failed(checks) == {"timestamps"}
    assert _checks(sample_dataset, tolerance_s=0.0131)["timestamps"].status is Status.OK


def test_nan_in_an_action(sample_dataset):
    def poison(table):
        action = _vectors(table, "action")
        action[np.flatnonzero(table["episode_index"].to_numpy() == 2)[5], 0] = np.nan
        return table.set_column(table.schema.get_field_index("action"), "action", _fixed_list(action))

    _rewrite(sample_dataset / DATA_FILE, poison)
    finite = _checks(sample_dataset)["values: finite"]
    assert finite.status is Status.FAIL and finite.data["episodes"] == [2]
    assert "shoulder_pan.pos" in finite.detail and "delete_episodes" in finite.fix


def test_deleted_episode_metadata_row(sample_dataset):
    _rewrite(sample_dataset / EPISODES_FILE, lambda t: t.filter(pa.array(t["episode_index"].to_numpy() != 1)))
    meta = _checks(sample_dataset)["episodes metadata"]
    assert meta.status is Status.FAIL and meta.data["episodes"] == [1]
    assert "no metadata row for episode(s) 1" in meta.detail


def test_wrong_state_dimension(sample_dataset):
    def five_joints(table):
        state = _vectors(table, "observation.state")[:, :5]
        return table.set_column(
            table.schema.get_field_index("observation.state"), "observation.state", _fixed_list(state)
        )

    _rewrite(sample_dataset / DATA_FILE, five_joints)
    checks = _checks(sample_dataset)
    assert checks["features"].status is Status.FAIL
    assert "observation.state has 5 values per frame in the data, info.json says (6,)" in checks["features"].detail

    info_path = sample_dataset / "meta/info.json"
    info = json.loads(info_path.read_text())
    info["features"]["observation.state"].update(shape=[5], names=info["features"]["observation.state"]["names"][:5])
    info_path.write_text(json.dumps(info))
    spec = _checks(sample_dataset)["spec: observation.state"]
    assert spec.status is Status.FAIL and "shape (5,), expected (6,)" in spec.detail


def test_v21_layout_is_recognised_with_the_conversion_command(v21_dataset, cli):
    result = cli("dataset", "validate", str(v21_dataset), "--json")
    assert result.code == 1
    checks = {c["name"]: c for c in result.json()["checks"]}
    assert checks["format"]["status"] == "fail" and "v2.1" in checks["format"]["detail"]
    assert f"zk0 dataset convert {v21_dataset}" in checks["format"]["fix"]
    assert (
        f"python -m lerobot.scripts.convert_dataset_v21_to_v30 --repo-id=local/sample --root={v21_dataset} "
        "--push-to-hub=false"
    ) in checks["format"]["fix"]
    info = cli("dataset", "info", str(v21_dataset), "--json")
    assert info.code == 0 and info.json()["codebase_version"] == "v2.1" and info.json()["tasks"]


def test_truncated_parquet_is_named(sample_dataset, cli):
    data = sample_dataset / DATA_FILE
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    result = cli("dataset", "validate", str(sample_dataset), "--json")
    assert result.code == 1 and "Traceback" not in result.stderr
    checks = {c["name"]: c for c in result.json()["checks"]}
    assert checks["data files"]["status"] == "fail" and str(DATA_FILE) in checks["data files"]["detail"]


def test_broken_image_is_caught_with_deep(sample_dataset):
    def break_first_image(table):
        images = table["observation.images.front"].to_pylist()
        images[0] = {"bytes": b"not a png", "path": None}
        column = pa.array(images, type=table.schema.field("observation.images.front").type)
        return table.set_column(
            table.schema.get_field_index("observation.images.front"), "observation.images.front", column
        )

    _rewrite(sample_dataset / DATA_FILE, break_first_image)
    assert _checks(sample_dataset)["media: image decoding"].status is Status.SKIP
    decoding = _checks(sample_dataset, deep=True)["media: image decoding"]
    assert decoding.status is Status.FAIL and decoding.data["episodes"] == [0]


def test_missing_stats_and_empty_task(sample_dataset):
    (sample_dataset / "meta/stats.json").unlink()
    _rewrite(sample_dataset / "meta/tasks.parquet", lambda t: _set_column(t, "task", ["  "] * t.num_rows))
    checks = _checks(sample_dataset)
    assert checks["stats"].status is Status.FAIL and "recompute_stats" in checks["stats"].fix
    assert checks["tasks"].status is Status.FAIL and "empty instruction" in checks["tasks"].detail


def test_dead_motor_is_a_warning(sample_dataset):
    def freeze_gripper(table):
        state = _vectors(table, "observation.state")
        state[table["episode_index"].to_numpy() == 0, 5] = 10.0
        return table.set_column(
            table.schema.get_field_index("observation.state"), "observation.state", _fixed_list(state)
        )

    _rewrite(sample_dataset / DATA_FILE, freeze_gripper)
    motion = _checks(sample_dataset)["values: motion"]
    assert motion.status is Status.WARN and motion.data["episodes"] == [0] and "gripper.pos" in motion.detail


def test_custom_spec_by_path(sample_dataset, tmp_path, cli):
    spec = tmp_path / "slow.toml"
    spec.write_text('name = "slow"\nfps = 25\nmin_cameras = 2\n')
    result = cli("dataset", "validate", str(sample_dataset), "--spec", str(spec), "--json")
    assert result.code == 1
    failed = {c["name"] for c in result.json()["checks"] if c["status"] == "fail"}
    assert failed == {"spec: fps", "spec: cameras"}


# --- bad input, as a new user would try it ----------------------------------------------------


def _one_line_error(result, code: int) -> None:
    assert result.code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Error: ") and lines[1].startswith("hint: ") and len(lines) == 2, lines


def test_hf_without_network_is_unreachable(cli):
    _one_line_error(cli("dataset", "validate", "hf:zk0-test/nowhere"), 3)
    _one_line_error(cli("dataset", "info", "hf:zk0-test/nowhere@main"), 3)


@pytest.mark.parametrize("make", ["missing", "file", "empty", "not a dataset", "malformed info"])
def test_local_paths_that_are_not_datasets(make, tmp_path, sample_dataset, cli):
    target = {
        "missing": tmp_path / "nope",
        "file": tmp_path / "file.txt",
        "empty": tmp_path / "empty",
        "not a dataset": tmp_path / "docs",
        "malformed info": sample_dataset,
    }[make]
    if make == "file":
        target.write_text("hello")
    elif make == "empty":
        target.mkdir()
    elif make == "not a dataset":
        target.mkdir()
        (target / "notes.txt").write_text("hello")
    elif make == "malformed info":
        (target / "meta/info.json").write_text('{"codebase_version": "v3.0", ')
    for command in ("validate", "info"):
        _one_line_error(cli("dataset", command, f"local:{target}"), 2)


def test_bad_uri_and_spec(sample_dataset, cli):
    _one_line_error(cli("dataset", "validate", "s3://bucket/set"), 2)
    _one_line_error(cli("dataset", "validate", str(sample_dataset), "--spec", "no-such-spec"), 2)


def test_sample_bad_inputs(tmp_path, cli):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    _one_line_error(cli("dataset", "sample", str(tmp_path / "full")), 2)
    _one_line_error(cli("dataset", "sample", str(tmp_path / "new"), "--episodes", "-2"), 2)
    _one_line_error(cli("dataset", "sample", str(tmp_path / "new"), "--task", "juggle"), 2)
    assert not (tmp_path / "new").exists()


def test_sample_then_info(tmp_path, cli):
    written = cli(
        "dataset",
        "sample",
        str(tmp_path / "stack"),
        "--task",
        "stack",
        "--episodes",
        "2",
        "--frames-per-episode",
        "12",
        "--image-size",
        "16",
        "--json",
    )
    assert written.code == 0 and written.json()["uri"] == f"local:{tmp_path / 'stack'}"
    info = cli("dataset", "info", written.json()["uri"], "--json").json()
    assert (info["episodes"], info["frames"], info["robot_type"]) == (2, 24, "so100_follower")
    assert info["cameras"] == ["observation.images.front"] and info["tasks"] == ["Stack the red cube on the blue cube"]
    human = cli("dataset", "info", written.json()["uri"])
    assert human.code == 0 and "2 episodes, 24 frames at 30 fps" in human.stdout


@pytest.mark.slow
def test_video_timestamp_error_found_before_training(tmp_path):
    """A 13 ms timestamp error passes LeRobot's loading and only fails when a frame is decoded."""
    from zk0cli.datasets.sample import write_sample

    root = write_sample(tmp_path / "video", episodes=2, frames_per_episode=12, image_size=32, video=True)
    assert _failed(_checks(root, deep=True)) == set()

    def shift(table):
        timestamps = table["timestamp"].to_numpy().copy()
        timestamps[table["episode_index"].to_numpy() == 1] += 0.013
        return _set_column(table, "timestamp", timestamps)

    _rewrite(root / DATA_FILE, shift)
    checks = _checks(root, deep=True)
    assert _failed(checks) == {"timestamps", "media: video decoding"}
    decoding = checks["media: video decoding"]
    assert decoding.data["episodes"] == [1] and "FrameTimestampError" in decoding.detail

    video = next((root / "videos").rglob("*.mp4"))
    video.unlink()
    missing = _checks(root)["media: videos"]
    assert missing.status is Status.FAIL and video.relative_to(root).as_posix() in missing.detail


def _move_episode_2_to_its_own_file(root: Path) -> None:
    table = pq.read_table(root / DATA_FILE)
    episodes = table["episode_index"].to_numpy()
    pq.write_table(table.filter(pa.array(episodes < 2)), root / DATA_FILE)
    pq.write_table(table.filter(pa.array(episodes == 2)), root / "data/chunk-000/file-001.parquet")


def test_data_split_over_several_files_reads_in_order(sample_dataset):
    """Several data files are read in one pyarrow call; rows must keep file order."""
    _move_episode_2_to_its_own_file(sample_dataset)
    _rewrite(
        sample_dataset / EPISODES_FILE,
        lambda t: _set_column(t, "data/file_index", (t["episode_index"].to_numpy() == 2).astype(np.int64)),
    )
    assert _failed(_checks(sample_dataset)) == set()


def test_episode_in_another_file_than_its_metadata_says(sample_dataset):
    _move_episode_2_to_its_own_file(sample_dataset)
    meta = _checks(sample_dataset)["episodes metadata"]  # meta/episodes still says file-000 for episode 2
    assert meta.status is Status.FAIL and meta.data["episodes"] == [2] and "not in the data file" in meta.detail


def test_hf_dataset_in_the_local_cache_is_used_offline(sample_dataset, tmp_path, monkeypatch, cli):
    """The Hub is what this machine lacks: lay the sample out as a cached Hub snapshot instead."""
    cache = tmp_path / "lerobot-home" / "hub" / "datasets--zk0-test--cached"
    commit = "0" * 40
    shutil.copytree(sample_dataset, cache / "snapshots" / commit)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "lerobot-home"))
    result = cli("dataset", "validate", "hf:zk0-test/cached", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["root"] == str(cache / "snapshots" / commit)
    assert cli("dataset", "info", "hf:zk0-test/cached", "--json").json()["frames"] == 120


def test_a_hub_snapshot_of_symlinks_counts_its_blobs_once(tmp_path):
    """The Hub cache keeps files as blobs and a snapshot as symlinks to them: its size is the blobs'."""
    from zk0cli.datasets.layout import disk_size

    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot"
    (snapshot / "data").mkdir(parents=True)
    blobs.mkdir()
    (blobs / "a").write_bytes(b"x" * 1000)
    (snapshot / "data" / "chunk.parquet").symlink_to(blobs / "a")
    (snapshot / "data" / "same.parquet").symlink_to(blobs / "a")  # one blob, two names: counted once
    (snapshot / "meta.json").write_bytes(b"y" * 24)
    (snapshot / "loop").symlink_to(tmp_path, target_is_directory=True)  # never entered
    assert disk_size(snapshot) == 1024
