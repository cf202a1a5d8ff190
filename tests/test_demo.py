"""`zk0 demo` end to end: a real TLS federation (server + two nodes) trains, leaves a complete run
record, and no process behind; Ctrl-C mid-run leaves nothing behind either."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from zk0cli.services.demo import demo_processes

pytestmark = pytest.mark.slow


def demo_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ZK0_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home / "hf"),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }


def demo_roots(text: str) -> list[Path]:
    """The demo prints its throwaway root first ("demo federation under ROOT")."""
    return [Path(line.split(" under ", 1)[1].strip()) for line in text.splitlines() if "demo federation under" in line]


def test_demo_trains_a_tls_federation_and_leaves_nothing_running(tmp_path):
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-m", "zk0cli", "demo", "--rounds", "1", "--json"],
        env=demo_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["state"] == "completed"
    assert [r["round"] for r in result["rounds"]] == [0, 1]
    assert result["rounds"][1]["num_clients"] == 2  # both nodes, each with its own key, trained
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == home / "data" / "runs"  # the record outlives the throwaway root
    for name in ("config.json", "federated_metrics.json", "round_0_server_eval.json", "round_1_server_eval.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert result["videos"] and all(Path(v).stat().st_size > 0 for v in result["videos"])
    assert result["plots"] and all(Path(p).is_file() for p in result["plots"])
    assert result["checkpoints"] and all(Path(c).is_dir() for c in result["checkpoints"])
    root = Path(result["root"])
    assert not root.exists()  # no --keep
    assert demo_roots(done.stderr) == [root]
    assert demo_processes(root) == []


def test_ctrl_c_mid_run_stops_every_demo_process(tmp_path):
    home = tmp_path / "home"
    demo = subprocess.Popen(
        [sys.executable, "-m", "zk0cli", "demo", "--rounds", "3", "--keep"],
        env=demo_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        root = _wait_for_training(home, demo)
        assert demo_processes(root), "the federation should be running before the Ctrl-C"
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "every process it started was stopped" in stderr
    assert demo_processes(root) == []
    assert not [p for p in psutil.process_iter(["environ"]) if _names(p, root)]


def _wait_for_training(home: Path, demo: subprocess.Popen, timeout_s: float = 300) -> Path:
    """The demo's root once its run has started (a run directory exists under the caller's runs dir)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert demo.poll() is None, demo.stderr.read()[-3000:]
        runs = list((home / "data" / "runs").glob("*-demo/status.json"))
        if runs:
            roots = list(Path("/tmp").glob("zk0-demo-*"))
            live = [r for r in roots if demo_processes(r)]
            if live:
                return live[0]
        time.sleep(1)
    raise AssertionError("the demo did not start training in time")


def _names(proc, root: Path) -> bool:
    try:
        return (proc.info["environ"] or {}).get("ZK0_HOME", "").startswith(str(root) + os.sep)
    except psutil.Error:
        return False


def test_a_failed_demo_stops_everything_and_keeps_its_logs(tmp_path):
    """The error's hint names a log: that log must still be there after the clean-up."""
    import shutil

    done = subprocess.run(
        [sys.executable, "-m", "zk0cli", "demo", "--rounds", "1", "--set", "policy=/no/such/checkpoint"],
        env=demo_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    said = done.stdout + done.stderr  # without --json, progress goes to stdout
    [root] = demo_roots(said)
    try:
        assert done.returncode != 0 and "no checkpoint directory at /no/such/checkpoint" in done.stderr
        assert f"kept {root} for its logs" in " ".join(said.split())
        assert (root / "server" / "state" / "logs" / "server.log").is_file()
        assert demo_processes(root) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)
