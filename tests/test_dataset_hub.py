"""hf: datasets through a real Hub API (olah on loopback): the download code zk0 and LeRobot use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zk0cli.datasets.sample import write_sample
from zk0cli.datasets.uri import fingerprint_dir

pytestmark = pytest.mark.slow


def zk0(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zk0cli", *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_hub_datasets_fingerprint_is_the_same_on_a_cold_and_a_warm_cache(olah_hub, tmp_path):
    """Issue 12: `train --match-run` said "fingerprints differ" on a fresh cache, where only meta/
    had been fetched when the fingerprint was taken."""
    source = write_sample(tmp_path / "pick", episodes=2, frames_per_episode=20, image_size=32, seed=3)
    uri = olah_hub.add_dataset("acme/fingerprint-pick", source)
    cold_env = olah_hub.client_env(tmp_path / "cold-hf")
    cold = zk0(cold_env, "dataset", "info", uri, "--fingerprint", "--json")
    assert cold.returncode == 0, cold.stderr
    assert json.loads(cold.stdout)["fingerprint"] == fingerprint_dir(source)

    warm_env = olah_hub.client_env(tmp_path / "warm-hf")
    validated = zk0(warm_env, "dataset", "validate", uri, "--deep", "--json")  # LeRobot fetches and reads it all
    assert validated.returncode == 0, validated.stderr + validated.stdout
    assert "Fetching" not in validated.stderr and "it/s" not in validated.stderr  # no Hub progress bars
    warm = zk0(warm_env, "dataset", "info", uri, "--fingerprint", "--json")
    assert json.loads(warm.stdout)["fingerprint"] == fingerprint_dir(source)
