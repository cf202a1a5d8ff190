"""A dataset cloned without Git LFS: every command that opens it names the pointers and the fix."""

import hashlib

import pytest

from zk0cli.core.errors import ExitCode


def make_pointer(path, content: bytes) -> None:
    """What `git clone` without git-lfs leaves in place of a tracked file (the spec's format)."""
    oid = hashlib.sha256(content).hexdigest()
    path.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(content)}\n")


@pytest.fixture
def cloned_without_lfs(real_dataset):
    """The real SO-101 recording with its parquet files replaced by LFS pointers."""
    parquets = sorted(real_dataset.rglob("*.parquet"))
    for path in parquets:
        make_pointer(path, path.read_bytes())
    return real_dataset, len(parquets)


@pytest.mark.parametrize("command", [["dataset", "validate"], ["dataset", "info"], ["dataset", "convert"]])
def test_lfs_pointers_are_named_counted_and_fixed_with_git_lfs_pull(cli, cloned_without_lfs, command):
    root, count = cloned_without_lfs
    result = cli(*command, str(root))
    assert result.code == ExitCode.BAD_INPUT
    assert f"{count} file(s) in {root} are Git LFS pointers" in result.stderr
    assert "git lfs pull" in result.stderr and "data/chunk-000/file-000.parquet" in result.stderr
    assert "magic bytes" not in result.stderr and "Traceback" not in result.stderr


def test_a_small_file_that_is_not_a_pointer_is_left_alone(cli, sample_dataset):
    (sample_dataset / "README.md").write_text("version 2 of this dataset\n")  # small, but not a pointer
    result = cli("dataset", "info", str(sample_dataset))
    assert result.code == 0, result.stderr


def test_node_join_names_the_pointers_before_it_joins(cli, cloned_without_lfs):
    root, count = cloned_without_lfs
    result = cli("node", "join", "--server", "127.0.0.1:9", "--dataset", f"local:{root}", "--insecure")
    assert result.code == ExitCode.BAD_INPUT, result.stderr  # before it looks for the server
    assert f"{count} file(s) in {root} are Git LFS pointers" in result.stderr and "git lfs pull" in result.stderr


def test_video_pointers_are_named(cli, tmp_path):
    """A video dataset whose parquet files came through but whose mp4 files are pointers."""
    from zk0cli.datasets.sample import write_sample

    root = write_sample(tmp_path / "video", episodes=2, frames_per_episode=10, image_size=32, video=True, seed=0)
    videos = sorted(root.rglob("*.mp4"))
    for path in videos:
        make_pointer(path, path.read_bytes())
    result = cli("dataset", "validate", str(root))
    assert result.code == ExitCode.BAD_INPUT
    assert f"{len(videos)} file(s) in {root} are Git LFS pointers" in result.stderr
    assert videos[0].relative_to(root).as_posix() in result.stderr and "git lfs pull" in result.stderr


def test_jsonl_pointers_of_a_v21_dataset_are_named_by_convert(cli, v21_dataset, tmp_path):
    """LeRobot's v2.1 layout keeps its metadata in jsonl: `convert` used to fail with 'line
    contains invalid json' on their pointers."""
    jsonl = sorted((v21_dataset / "meta").glob("*.jsonl"))
    for path in jsonl:
        make_pointer(path, path.read_bytes())
    result = cli("dataset", "convert", str(v21_dataset), "-o", str(tmp_path / "converted"))
    assert result.code == ExitCode.BAD_INPUT, result.stderr
    assert f"{len(jsonl)} file(s) in {v21_dataset} are Git LFS pointers" in result.stderr
    assert "meta/episodes.jsonl" in result.stderr and "invalid json" not in result.stderr
