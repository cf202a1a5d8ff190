"""Supervisor restart latency: kill -9 a supervised SuperNode, time until it is back.

Sets up a throwaway federation on 127.0.0.1 (TLS and node auth from `zk0 init`, server and one
registered node, both detached), then a few times: waits until the node has run longer than the
quick-failure window (so the restart is immediate, as for a node that crashes mid-training),
kill -9 its SuperNode and measures
  - runtime: until the new SuperNode's Runtime API answers /health,
  - connected: until the supervisor reports it healthy again, i.e. activated on the SuperLink.
Baseline, same run: a cold `flower-supernode` start to /health (what a restart would cost without
the supervisor's warm spare). Target: connected < 2 s.

    .venv/bin/python bench/supervisor_restart.py [--tries 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from zk0cli.core.paths import Paths
from zk0cli.services import supervisor
from zk0cli.services.supervisor import RestartPolicy
from zk0cli.services.supervisor.proctree import child_env

TARGET_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zk0(home: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "zk0cli", *args],
        env={**os.environ, "ZK0_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        sys.exit(f"zk0 {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def wait_health(url: str, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise TimeoutError(url)


def one_restart(paths: Paths) -> tuple[float, float]:
    state = supervisor.read_state(paths, "node-bench")
    old = state["processes"]["supernode"]
    url = f"http://127.0.0.1:{old['ports']['runtime']}/health"
    killed = time.monotonic()
    os.kill(old["pid"], signal.SIGKILL)
    runtime = wait_health(url) - killed
    while True:
        process = supervisor.read_state(paths, "node-bench")["processes"]["supernode"]
        if process["pid"] not in (None, old["pid"]) and process["state"] == "healthy":
            return runtime, time.monotonic() - killed
        if time.monotonic() - killed > 60:
            raise TimeoutError("node did not reconnect")
        time.sleep(0.01)


def cold_start(home: Path) -> float:
    port = free_port()
    env = child_env(home / "cold")
    (home / "cold").mkdir(exist_ok=True)
    start = time.monotonic()
    process = subprocess.Popen(
        ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{free_port()}", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return wait_health(f"http://127.0.0.1:{port}/health") - start
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="zk0-bench-restart-"))
    server, node = root / "server", root / "node"
    port, control = free_port(), free_port()
    zk0(server, "init", "--role", "server", "-y")
    zk0(node, "init", "--role", "node", "--ca-cert", str(server / "config" / "pki" / "ca.pem"), "-y")
    try:
        zk0(
            server,
            "server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--control-port",
            str(control),
            "--detach",
        )
        zk0(server, "server", "nodes", "add", str(node / "config" / "pki" / "node_key.pub"), "--name", "bench")
        zk0(
            node,
            "node",
            "join",
            "--server",
            f"127.0.0.1:{port}",
            "--dataset",
            str(root),
            "--name",
            "bench",
            "--skip-validation",
            "--detach",
        )
        paths = Paths.resolve(node)
        settle_s = RestartPolicy().quick_exit_s + 1
        runtime, connected = [], []
        for attempt in range(1, args.tries + 1):
            time.sleep(settle_s)  # past the quick-failure window: the restart is immediate
            r, c = one_restart(paths)
            runtime.append(r)
            connected.append(c)
            print(f"try {attempt}: runtime API back in {r:.2f} s, connected again in {c:.2f} s", flush=True)
        cold = [cold_start(root) for _ in range(args.tries)]
    finally:
        zk0(node, "stop", "--all")
        zk0(server, "stop", "--all")
    result = {
        "tries": args.tries,
        "median_runtime_api_s": round(statistics.median(runtime), 3),
        "median_connected_s": round(statistics.median(connected), 3),
        "baseline_cold_start_runtime_api_s": round(statistics.median(cold), 3),
        "ratio_warm_over_cold": round(statistics.median(runtime) / statistics.median(cold), 3),
        "target_connected_s": TARGET_S,
        "meets_target": statistics.median(connected) < TARGET_S,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
