"""How fast `zk0 status` answers, against the flwr CLI asked for the same information.

    .venv/bin/python bench/status_speed.py [--runs 5] [--refreshes 20]

1. Nothing running: wall time of `zk0 status --json` against `flwr ls --format json` on the
   same (closed) connection, and `zk0 --version` as the floor every zk0 command pays.
   Target: zk0 <= 0.5 s.
2. One refresh against a live SuperLink (a real flower-superlink and flower-supernode on
   loopback, one supervised service, one run record): CPU seconds of one
   ``StatusCollector.snapshot()`` plus drawing it (all threads of this process), against the CPU
   of `flwr ls` + `flwr supernode list` (runs and nodes, what the snapshot reads from the
   SuperLink). Target: <= 0.2 s.
3. One auto-run poll against the same SuperLink (the nodes online, the session run's status):
   wall and CPU of zk0's in-process Control-API calls against the two flwr CLI calls auto-run
   made before (`flwr supernode list` + `flwr ls --run-id`). Target: <= 0.05 s wall.

Both commands come from this virtualenv; each is run once to warm the file cache (and to write
zk0's .pyc files, as an install does: PYTHONDONTWRITEBYTECODE is dropped for them), then the
measured runs alternate so a busy moment hits both alike. Prints medians and ratios; exit code 1
when a target is missed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TARGET_EMPTY_S = 0.5
TARGET_REFRESH_CPU_S = 0.2
TARGET_POLL_S = 0.05
BIN = Path(sys.executable).parent
RECORD = Path(__file__).resolve().parents[1] / "tests" / "data" / "status_run_record"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(argv: list[str], env: dict[str, str], *, check: bool = True) -> tuple[float, float]:
    """(wall seconds, user + system CPU seconds) of one run of the command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=check)
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_empty(home: Path, runs: int) -> dict[str, tuple[float, float]]:
    from zk0cli.core.paths import Paths
    from zk0cli.services import flower

    env = dict(os.environ, ZK0_HOME=str(home), NO_COLOR="1", FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    flower.write_cli_connection(Paths.resolve(home), address=f"127.0.0.1:{free_port()}", root_ca=None)
    flwr_env = dict(env, FLWR_HOME=str(flower.cli_home(Paths.resolve(home))))
    commands = {
        "zk0": ([str(BIN / "zk0"), "status", "--json"], env),
        "floor": ([str(BIN / "zk0"), "--version"], env),  # the zk0 command's own start-up
        "flwr": ([str(BIN / "flwr"), "ls", flower.CLI_CONNECTION, "--format", "json"], flwr_env),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for argv, command_env in commands.values():
        measure(argv, command_env, check=False)
    for _ in range(runs):
        for name, (argv, command_env) in commands.items():
            samples[name].append(measure(argv, command_env, check=False))  # flwr exits 1: nothing to reach
    return {
        name: (statistics.median(w for w, _ in found), statistics.median(c for _, c in found))
        for name, found in samples.items()
    }


def wait_healthy(port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"flower-superlink on port {port} did not become healthy")


def replay_record(runs_dir: Path) -> None:
    from zk0cli.fl.records import RunRecord

    config = json.loads((RECORD / "config.json").read_text())
    record = RunRecord.create(runs_dir, "bench-run")
    record.write_config(config["run_config"], config["dataset_fingerprints"], {"flwr_run_id": config["flwr_run_id"]})
    for n in range(config["run_config"]["num-server-rounds"] + 1):
        record.write_round(json.loads((RECORD / f"round_{n}_server_eval.json").read_text()))
    record.write_status("completed", rounds=config["run_config"]["num-server-rounds"])


def bench_poll(paths, flwr_env: dict[str, str], runs: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) medians of one auto-run poll, zk0's way and the flwr CLI's way."""
    from zk0cli.services import flower
    from zk0cli.services.runs import run_status
    from zk0cli.services.server import list_nodes

    run_id = "4242"  # a session run: unknown to this SuperLink, which answers that as fast
    flwr = [str(BIN / "flwr")]
    asks = [
        [*flwr, "supernode", "list", flower.CLI_CONNECTION, "--format", "json"],
        [*flwr, "ls", flower.CLI_CONNECTION, "--run-id", run_id, "--format", "json"],
    ]

    def zk0_poll() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        online = [n for n in list_nodes(paths) if n["status"] == "online"]
        assert online and run_status(paths, run_id) == ""
        return time.perf_counter() - wall, time.process_time() - cpu

    def flwr_poll() -> tuple[float, float]:
        done = [measure(argv, flwr_env, check=False) for argv in asks]
        return sum(w for w, _ in done), sum(c for _, c in done)

    zk0_poll()
    samples = [(zk0_poll(), flwr_poll()) for _ in range(runs)]
    return {
        name: (statistics.median(s[i][0] for s in samples), statistics.median(s[i][1] for s in samples))
        for i, name in enumerate(("zk0", "flwr"))
    }


def bench_refresh(home: Path, refreshes: int, runs: int) -> tuple[float, float, dict, dict]:
    from rich.console import Console

    from zk0cli.core.paths import Paths
    from zk0cli.services import flower, supervisor
    from zk0cli.services.status import StatusCollector
    from zk0cli.ui.status import render_status

    os.environ["ZK0_HOME"] = str(home)
    paths = Paths.resolve(home)
    env = dict(
        os.environ,
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
    )
    port = free_port()
    link = subprocess.Popen(
        [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    node = subprocess.Popen(
        [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--port", str(free_port())],
        env=dict(env, FLWR_HOME=str(home / "node-home")),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    service = supervisor.ServiceSpec(
        name="server",
        kind="server",
        processes=[supervisor.ProcessSpec(name="sleeper", argv=[sys.executable, "-c", "import time; time.sleep(600)"])],
    )
    try:
        wait_healthy(port)
        flower.write_cli_connection(paths, address=f"127.0.0.1:{port}", root_ca=None)
        supervisor.start_detached(paths, service, wait_s=60)
        replay_record(paths.runs_dir)
        flwr_env = dict(env, FLWR_HOME=str(flower.cli_home(paths)), NO_COLOR="1")
        collector = StatusCollector(paths, role="server")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not collector.snapshot().federation.online:
            time.sleep(0.5)  # wait for the node to join, so the refresh reads a node too
        snapshot = collector.snapshot()
        console = Console(width=120, file=io.StringIO(), force_terminal=True)  # drawn as --watch draws it
        started = time.process_time()
        for _ in range(refreshes):
            snapshot = collector.snapshot()
            console.print(render_status(snapshot, width=console.width))
        zk0_cpu = (time.process_time() - started) / refreshes
        flwr = [str(BIN / "flwr")]
        asks = [
            [*flwr, "ls", flower.CLI_CONNECTION, "--format", "json"],
            [*flwr, "supernode", "list", flower.CLI_CONNECTION, "--format", "json"],
        ]
        flwr_cpu = statistics.median(sum(measure(argv, flwr_env)[1] for argv in asks) for _ in range(runs))
        seen = {
            "services": len(snapshot.services),
            "nodes": len(snapshot.federation.nodes),
            "runs": len(snapshot.runs),
            "sources": {k: v.state for k, v in snapshot.sources.items()},
        }
        return zk0_cpu, flwr_cpu, seen, bench_poll(paths, flwr_env, runs)
    finally:
        supervisor.stop_service(paths, "server")
        for proc in (node, link):
            os.killpg(proc.pid, 15)
        for proc in (node, link):
            proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command")
    parser.add_argument("--refreshes", type=int, default=20, help="snapshots averaged for the CPU cost")
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        empty = bench_empty(Path(tmp) / "empty", args.runs)
        (zk0_s, zk0_cpu_s), (flwr_s, flwr_cpu_s) = empty["zk0"], empty["flwr"]
        print(
            f"nothing running (median of {args.runs}): zk0 status --json {zk0_s:.3f} s wall / {zk0_cpu_s:.3f} s CPU, "
            f"flwr ls --format json {flwr_s:.3f} s wall / {flwr_cpu_s:.3f} s CPU; "
            f"ratio zk0/flwr {zk0_s / flwr_s:.2f} wall, {zk0_cpu_s / flwr_cpu_s:.2f} CPU; "
            f"target zk0 <= {TARGET_EMPTY_S} s"
        )
        floor_s, floor_cpu_s = empty["floor"]
        print(
            f"  of which the zk0 command's own start-up (zk0 --version): {floor_s:.3f} s wall / {floor_cpu_s:.3f} s CPU"
        )
        ok &= zk0_s <= TARGET_EMPTY_S
        zk0_cpu, flwr_cpu, seen, poll = bench_refresh(Path(tmp) / "live", args.refreshes, args.runs)
        print(
            f"one refresh (live SuperLink, {seen}): zk0 snapshot + render {zk0_cpu * 1000:.1f} ms CPU, "
            f"flwr ls + flwr supernode list {flwr_cpu * 1000:.0f} ms CPU; ratio zk0/flwr {zk0_cpu / flwr_cpu:.3f}; "
            f"target zk0 <= {TARGET_REFRESH_CPU_S * 1000:.0f} ms"
        )
        ok &= zk0_cpu <= TARGET_REFRESH_CPU_S
        (poll_s, poll_cpu_s), (before_s, before_cpu_s) = poll["zk0"], poll["flwr"]
        print(
            f"one auto-run poll (median of {args.runs}): zk0 {poll_s * 1000:.1f} ms wall / {poll_cpu_s * 1000:.1f} ms "
            f"CPU, flwr supernode list + flwr ls --run-id {before_s:.2f} s wall / {before_cpu_s:.2f} s CPU; "
            f"ratio zk0/flwr {poll_s / before_s:.3f} wall; target zk0 <= {TARGET_POLL_S * 1000:.0f} ms"
        )
        ok &= poll_s <= TARGET_POLL_S
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
