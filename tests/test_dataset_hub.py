"""hf: datasets through a real Hub API (olah on loopback): the download code zk0 and LeRobot use."""

from __future__ import annotations

import json
import os
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


WATCH = """
import json, sys
from contextlib import contextmanager
from zk0cli.datasets import hub_progress
from zk0cli.datasets.uri import dataset_root, parse_uri

seen = []

@contextmanager
def watch(what):
    seen.append({"what": what, "reports": []})
    yield lambda *numbers: seen[-1]["reports"].append(numbers)

hub_progress.set_watcher(watch)
dataset_root(parse_uri(sys.argv[1]))
print(json.dumps(seen))
"""


def test_a_hub_download_reports_its_files_and_bytes_and_hubs_own_bars_stay_off(olah_hub, tmp_path):
    """Issue 12 §3: downloads get zk0's own progress; huggingface_hub's tqdm class is zk0's, so
    its bars never print, even where HF_HUB_DISABLE_PROGRESS_BARS is not set."""
    source = write_sample(tmp_path / "pick", episodes=2, frames_per_episode=20, image_size=32, seed=5)
    uri = olah_hub.add_dataset("acme/progress-pick", source)
    env = {k: v for k, v in olah_hub.client_env(tmp_path / "hf").items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run([sys.executable, "-c", WATCH, uri], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no "Fetching N files", no bars
    (download,) = json.loads(done.stdout)
    files = [p for p in source.rglob("*") if p.is_file()]
    assert download["what"] == uri
    reports = download["reports"]
    assert reports[-1] == [len(files), len(files), sum(p.stat().st_size for p in files)]
    assert all(a[0] <= b[0] and a[2] <= b[2] for a, b in zip(reports, reports[1:], strict=False))  # only forward


def test_zk0s_download_line_shows_on_a_terminal_and_nowhere_else(olah_hub, tmp_path):
    source = write_sample(tmp_path / "stack", episodes=2, frames_per_episode=20, image_size=32, seed=6)
    uri = olah_hub.add_dataset("acme/progress-stack", source)
    files = len([p for p in source.rglob("*") if p.is_file()])
    piped = zk0(olah_hub.client_env(tmp_path / "piped-hf"), "dataset", "validate", uri)
    assert piped.returncode == 0, piped.stderr
    assert "fetching" not in piped.stderr + piped.stdout and "\r" not in piped.stderr + piped.stdout

    on_terminal = on_a_terminal(olah_hub.client_env(tmp_path / "tty-hf"), "dataset", "validate", uri)
    assert f"fetching {uri}" in on_terminal and f"{files}/{files} files" in on_terminal
    as_json = on_a_terminal(olah_hub.client_env(tmp_path / "json-hf"), "dataset", "validate", uri, "--json")
    assert "fetching" not in as_json  # --json: a script reads it, even from a terminal


def on_a_terminal(env: dict[str, str], *args: str) -> str:
    """What `zk0 ARGS` writes to stderr when stderr is a terminal, as a person running zk0 has it."""
    import pty

    terminal, side = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "zk0cli", *args],
        env={**env, "COLUMNS": "120", "TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # stdout is the command's result; the progress goes to stderr
        stderr=side,
    )
    os.close(side)
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    assert process.wait(timeout=300) == 0
    os.close(terminal)
    return shown.decode(errors="replace")
