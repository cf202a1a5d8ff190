"""Shared fixtures. Every test gets its own ZK0_HOME and an offline Hugging Face setup."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from zk0cli.cli.app import main

SHARED_DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "so101-record-test"


@pytest.fixture(autouse=True)
def zk0_home(tmp_path, monkeypatch) -> Path:
    """A throwaway ZK0_HOME; no test touches the user's real config, and the Hub is offline."""
    home = tmp_path / "zk0home"
    monkeypatch.setenv("ZK0_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "hf" / "lerobot"))
    for name in list(__import__("os").environ):
        if name.startswith("ZK0_") and name != "ZK0_HOME":
            monkeypatch.delenv(name)
    return home


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def cli(capsys):
    """Run `zk0 ARGS...` in-process the way the console script does, capturing its output."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


# --- datasets ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sample_dataset_master(tmp_path_factory) -> Path:
    """One small image dataset written with LeRobot's writer, shared read-only by the session."""
    from zk0cli.datasets.sample import write_sample

    return write_sample(
        tmp_path_factory.mktemp("datasets") / "pick", episodes=3, frames_per_episode=40, image_size=32, seed=0
    )


@pytest.fixture
def sample_dataset(sample_dataset_master, tmp_path) -> Path:
    """A private copy of the shared sample: damage it freely."""
    import shutil

    return Path(shutil.copytree(sample_dataset_master, tmp_path / "sample"))


@pytest.fixture
def real_dataset(tmp_path) -> Path:
    """A private copy of the real SO-101 recording (its two videos are missing on purpose)."""
    import shutil

    if not SHARED_DATASET.is_dir():
        pytest.skip(f"the real recording is not on this machine: {SHARED_DATASET}")
    return Path(shutil.copytree(SHARED_DATASET, tmp_path / "so101-record-test"))


@pytest.fixture
def v21_dataset(sample_dataset) -> Path:
    """The sample rearranged into LeRobot's v2.1 layout: one data file per episode, jsonl metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = sample_dataset
    episodes_meta = pq.read_table(next((root / "meta/episodes").rglob("*.parquet"))).to_pylist()
    data_file = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(data_file)
    episode_of_row = table["episode_index"].to_numpy()
    for row in episodes_meta:
        episode = row["episode_index"]
        rows = pa.array(episode_of_row == episode)
        pq.write_table(table.filter(rows), root / f"data/chunk-000/episode_{episode:06d}.parquet")
    data_file.unlink()

    def jsonl(name: str, items) -> None:
        (root / "meta" / name).write_text("".join(json.dumps(item) + "\n" for item in items))

    tasks = pq.read_table(root / "meta/tasks.parquet").to_pylist()
    jsonl("tasks.jsonl", ({"task_index": t["task_index"], "task": t["task"]} for t in tasks))
    jsonl(
        "episodes.jsonl",
        ({"episode_index": r["episode_index"], "tasks": r["tasks"], "length": r["length"]} for r in episodes_meta),
    )
    jsonl(
        "episodes_stats.jsonl",
        ({"episode_index": r["episode_index"], "stats": _episode_stats(r)} for r in episodes_meta),
    )
    import shutil

    shutil.rmtree(root / "meta/episodes")
    (root / "meta/tasks.parquet").unlink()
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    info.update(
        codebase_version="v2.1",
        total_chunks=1,
        total_videos=0,
        data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
    )
    info_path.write_text(json.dumps(info, indent=2))
    return root


def _episode_stats(row: dict) -> dict:
    """{'stats/<feature>/<metric>': v} columns of a v3.0 episodes row as v2.1's {feature: {metric: v}}."""
    stats: dict = {}
    for column, value in row.items():
        if column.startswith("stats/"):
            feature, metric = column[len("stats/") :].rsplit("/", 1)
            stats.setdefault(feature, {})[metric] = value
    return stats


# --- federated engine (tests/test_fl_*) -------------------------------------------------------


@pytest.fixture(scope="session")
def fl_datasets(tmp_path_factory) -> list[Path]:
    """Two small datasets with different tasks (pick, stack), one per federated client, written once."""
    from zk0cli.datasets.sample import write_sample

    root = tmp_path_factory.mktemp("fl-datasets")
    return [
        write_sample(root / task, task=task, episodes=3, frames_per_episode=30, image_size=32, seed=index)
        for index, task in enumerate(("pick", "stack"))
    ]


@pytest.fixture
def torch_one_thread(monkeypatch):
    """torch on one thread (and OMP_NUM_THREADS=1 for child processes): on a shared 2-core machine
    two intra-op threads per process make SmolVLA steps tens of times slower."""
    import torch

    previous = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- a Hub on loopback ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def olah_hub(tmp_path_factory):
    """olah serving git repositories through the Hub's API on 127.0.0.1 (installed by
    `./install.sh --test`); tests add their repos with ``add_dataset`` / ``add_model``."""
    from hub_server import OLAH, OlahHub

    if not OLAH.exists():
        pytest.skip(f"olah is not installed at {OLAH}: run ./install.sh --test")
    hub = OlahHub(tmp_path_factory.mktemp("olah")).start()
    yield hub
    hub.stop()
