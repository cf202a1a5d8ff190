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
    from zk0cli.services.datasets.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("datasets") / "pick", episodes=3, frames_per_episode=40,
                        image_size=32, seed=0)


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
