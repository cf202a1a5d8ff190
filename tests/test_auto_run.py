"""`zk0 server serve --auto-run`: idle until enough nodes are online, then one session after another,
with real Flower processes on loopback (insecure: node auth and TLS are covered by test_server_node)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from serve_args import insecure_loopback_serve

from zk0cli.core.errors import ExitCode
from zk0cli.core.paths import Paths
from zk0cli.services import flower, supervisor

pytestmark = pytest.mark.slow

SMALL_SESSION = [
    "--set",
    "policy='tiny'",
    "--set",
    "local-steps=1",
    "--set",
    "eval-batches=1",
    "--set",
    "fraction-evaluate=0.0",
    "--set",
    "client-eval-episodes=0",
    "--set",
    "video-frequency=1000",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zk0(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ZK0_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home / "hf"),
        "NO_COLOR": "1",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "zk0cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def runs(home: Path) -> list[dict]:
    return flower.run_flwr(Paths.resolve(home), ["ls", flower.CLI_CONNECTION]).get("runs", [])


def test_bad_auto_run_settings_stop_serve_before_anything_starts(tmp_path):
    bad = zk0(
        tmp_path,
        "server",
        "serve",
        "--insecure",
        "--no-require-node-auth",
        "--auto-run",
        "--set",
        "no-such-key=1",
        "--port",
        str(free_port()),
    )
    assert bad.returncode == ExitCode.BAD_INPUT and "unknown run-config key 'no-such-key'" in bad.stderr
    assert "Traceback" not in bad.stderr and supervisor.read_state(Paths.resolve(tmp_path), "server") is None


def test_auto_run_waits_for_nodes_then_runs_session_after_session(tmp_path):
    from zk0cli.datasets.sample import write_sample

    server, node = tmp_path / "server", tmp_path / "node"
    port = free_port()
    dataset = write_sample(tmp_path / "data" / "pick", task="pick", episodes=2, frames_per_episode=16, image_size=32)
    heldout = write_sample(tmp_path / "data" / "eval", task="sort", episodes=1, frames_per_episode=16, image_size=32)
    started = zk0(
        server,
        *insecure_loopback_serve(port),
        "--auto-run",
        "--min-nodes",
        "1",
        "--rounds",
        "1",
        *SMALL_SESSION,
        "--set",
        f"eval-datasets='local:{heldout}'",
        "--detach",
        "--json",
    )
    assert started.returncode == 0, started.stderr
    pids = []
    try:
        assert json.loads(started.stdout)["info"]["auto_run"] == {"min_nodes": 1, "rounds": 1}
        time.sleep(15)  # idle: no node, so no session
        assert runs(server) == []
        joined = zk0(
            node,
            "node",
            "join",
            "--insecure",
            "--server",
            f"127.0.0.1:{port}",
            "--dataset",
            str(dataset),
            "--skip-validation",
            "--name",
            "solo",
            "--detach",
        )
        assert joined.returncode == 0, joined.stderr
        deadline = time.monotonic() + 420
        listed: list[dict] = []
        while time.monotonic() < deadline:
            listed = runs(server)
            if any(r["status"] == "finished:completed" for r in listed) and len(listed) >= 2:
                break
            assert not any(
                r["status"].startswith("finished:") and r["status"] != "finished:completed" for r in listed
            ), listed
            time.sleep(10)
        assert len(listed) >= 2, listed  # the next session started once the first one ended
        log = zk0(server, "logs", "server", "--since", "30m").stdout
        assert "auto-run: 0/1 node(s) online, waiting" in log and "auto-run: session run" in log
    finally:
        for home, service in ((node, "node-solo"), (server, "server")):
            state = supervisor.read_state(Paths.resolve(home), service) or {}
            pids += [state.get("supervisor", {}).get("pid")]
            pids += [p.get("pid") for p in state.get("processes", {}).values()]
            if state:
                supervisor.stop_service(Paths.resolve(home), service)
    assert not [
        pid for pid in pids if pid and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
