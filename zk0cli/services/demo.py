"""`zk0 demo`: a whole federation on this machine, in one command, with the production code paths.

What it does, in order (every step through the service code the real commands use):

1. A throwaway root (a temp dir, or ``--keep`` to keep it) holds one ZK0_HOME per party: the
   server's and one per node, because nodes sharing a ZK0_HOME share one key and the server
   would see them as one node.
2. ``zk0 init``: the server's CA and TLS certificate for 127.0.0.1, each node's key pinned to it.
3. Two generated SO-100-style datasets with different tasks (one per node) and a third,
   smaller one the server evaluates on (nodes never see it); the tiny offline backbone.
4. ``zk0 server serve`` (TLS, node auth, fleet-only proxy, SQLite state) on free loopback ports,
   ``zk0 server nodes add`` for each node key, ``zk0 node join`` for each node, all supervised.
5. ``zk0 run --rounds N --stream``: the run record goes to the caller's runs dir (not the
   throwaway root), so ``zk0 report RUN`` works afterwards.
6. Every service it started is stopped, also on Ctrl-C or a failure, and a last sweep kills any
   process still referring to the throwaway root.

The demo's run config only makes the workload small (few frames, few steps, one evaluation
batch, one video at the end); the engine runs exactly as in production. Each node's processes get
one compute thread (``OMP_NUM_THREADS=1``): two nodes on two cores would otherwise fight.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zk0cli.core.errors import bad_input
from zk0cli.core.paths import Paths

HOST = "127.0.0.1"
NODES = (("alice", "pick"), ("bob", "stack"))  # (node name, task of its generated dataset)
EVAL_TASK = "sort"
SAMPLE: dict[str, Any] = dict(episodes=2, frames_per_episode=24, image_size=32)  # per node
EVAL_SAMPLE: dict[str, Any] = dict(episodes=1, frames_per_episode=24, image_size=32)

# Small workload, same engine: every key is an ordinary run-config key (`zk0 run --set`).
DEMO_RUN_CONFIG: dict[str, Any] = {
    "policy": "tiny",  # the offline backbone written above: a fresh machine has no Hub access
    "local-steps": 5,
    "batch-size": 4,
    "eval-batches": 1,
    # Each node has only two episodes: holding one out for federated evaluation would halve its
    # training data and add a message per node per round. The server evaluates on its own
    # held-out dataset instead, and the nodes train on all their episodes.
    "fraction-evaluate": 0.0,
    "client-eval-episodes": 0,
    "video-frequency": 1000,  # one video, at the last round (always written there)
    "checkpoint-interval": 1000,  # one checkpoint, at the last round
    "min-available-nodes": len(NODES),
}
# The nodes' and the server's processes: offline (no Hub on a fresh machine), one thread each.
PROCESS_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class DemoOptions:
    rounds: int = 3
    keep: bool = False  # keep the throwaway root (keys, logs, datasets, SuperLink database)
    root: Path | None = None  # where the throwaway homes go; None: a new temp dir
    settings: dict[str, Any] = field(default_factory=dict)  # extra run-config keys, over DEMO_RUN_CONFIG


@dataclass
class DemoResult:
    root: Path
    kept: bool
    run_id: str
    run_dir: Path
    state: str
    rounds: list[dict[str, Any]]  # federated_metrics.json lines
    seconds: float
    stage_seconds: dict[str, float]  # setup / federation start / training / stop
    plots: list[Path]
    checkpoints: list[Path]
    videos: list[Path]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "kept": self.kept,
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "state": self.state,
            "seconds": round(self.seconds, 1),
            "stage_seconds": {k: round(v, 1) for k, v in self.stage_seconds.items()},
            "rounds": self.rounds,
            "plots": [str(p) for p in self.plots],
            "checkpoints": [str(p) for p in self.checkpoints],
            "videos": [str(p) for p in self.videos],
        }


def run(
    options: DemoOptions, runs_dir: Path, *, on_message: Callable[[str], None], on_round: Callable[[dict, int], None]
) -> DemoResult:
    """Set up, train, tear down; the record stays in ``runs_dir``. Ctrl-C stops everything started."""
    from zk0cli.fl.records import new_run_name
    from zk0cli.fl.run_config import RunConfig

    if options.rounds < 1:
        raise bad_input(f"--rounds must be at least 1, got {options.rounds}", hint="e.g. zk0 demo --rounds 3")
    settings = {
        **DEMO_RUN_CONFIG,
        **options.settings,
        "runs-dir": str(runs_dir),
        "run-name": f"{new_run_name()}-demo",
        "num-server-rounds": options.rounds,
    }
    RunConfig.from_mapping(settings)  # a bad --set stops here, before anything starts
    root = Path(options.root) if options.root else Path(tempfile.mkdtemp(prefix="zk0-demo-"))
    federation = Federation(root)
    stages: dict[str, float] = {}
    started = time.monotonic()
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill PID` cleans up like Ctrl-C
    failed = False  # a failure keeps the root for its logs; Ctrl-C (not an Exception) cleans up
    try:
        with _Stage(stages, "setup"):
            federation.prepare(on_message)
        with _Stage(stages, "federation start"):
            federation.start(on_message)
        with _Stage(stages, "training"):
            submitted, status = federation.train(settings, options.rounds, on_message, on_round)
    except Exception:
        failed = True
        raise
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with _Stage(stages, "stop"):
            federation.stop(on_message)
        signal.signal(signal.SIGINT, previous_sigint)
        signal.signal(signal.SIGTERM, previous_sigterm)
        if failed and not options.keep:
            on_message(f"kept {root} for its logs: the demo failed (remove it when done)")
        elif not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    return _result(root, options.keep, submitted, status, time.monotonic() - started, stages)


def _raise_interrupt(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


class _Stage:
    """Time one stage of the demo into ``stages`` (also when it raises)."""

    def __init__(self, stages: dict[str, float], name: str):
        self.stages, self.name = stages, name

    def __enter__(self) -> None:
        self.began = time.monotonic()

    def __exit__(self, *exc_info) -> None:
        self.stages[self.name] = time.monotonic() - self.began


class Federation:
    """The server and the nodes of the demo, each a ZK0_HOME under one root."""

    def __init__(self, root: Path):
        self.root = root
        self.server = Paths.resolve(root / "server")
        self.nodes = {name: Paths.resolve(root / name) for name, _ in NODES}
        self.datasets: dict[str, Path] = {}
        self.eval_dataset = root / "datasets" / f"eval-{EVAL_TASK}"
        self.address = ""
        self.started: list[tuple[Paths, str]] = []  # (home, service), in start order

    def prepare(self, say: Callable[[str], None]) -> None:
        from zk0cli.datasets.sample import write_sample
        from zk0cli.policy.backbone import TINY, ensure_tiny_backbone
        from zk0cli.services import init

        say(f"demo federation under {self.root}")
        init.init_server(self.server, self.server.config_file, [HOST], force=False)
        for paths in self.nodes.values():
            init.init_node(paths, paths.config_file, self.server.pki_dir / "ca.pem", force=False)
        for seed, (name, task) in enumerate(NODES):
            self.datasets[name] = self.root / "datasets" / f"{name}-{task}"
            say(f"generating dataset {self.datasets[name].name} ({task}, {SAMPLE['episodes']} episodes)")
            write_sample(self.datasets[name], task=task, seed=seed, **SAMPLE)
        say(f"generating server evaluation dataset {self.eval_dataset.name} ({EVAL_TASK})")
        write_sample(self.eval_dataset, task=EVAL_TASK, seed=len(NODES), **EVAL_SAMPLE)
        for paths in (self.server, *self.nodes.values()):
            ensure_tiny_backbone(paths.data_dir / "backbones" / TINY.name)

    def start(self, say: Callable[[str], None]) -> None:
        from zk0cli.services import flower, supervisor
        from zk0cli.services import node as node_service
        from zk0cli.services import server as server_service

        options = server_service.ServeOptions(
            host=HOST, port=flower.free_port(), control_port=flower.free_port(), require_node_auth=True
        )
        spec = server_service.build_spec(self.server, options)
        _add_env(spec, self.server.config_dir.parent)
        server_service.prepare_cli_connection(self.server, spec)
        self.address = spec.info["public_address"]
        self.started.append((self.server, spec.name))
        supervisor.start_detached(self.server, spec)
        say(f"server running: fleet {self.address} (TLS, node auth), control {spec.info['control_address']} (loopback)")
        keys = {name: node_service.require_node_pki(paths) for name, paths in self.nodes.items()}
        with ThreadPoolExecutor(len(keys)) as pool:  # each registration is a flwr CLI start-up: overlap them
            list(pool.map(lambda name: server_service.add_node(self.server, keys[name].public_key, name), keys))
        say(f"registered the node keys of {', '.join(keys)}")
        for name, paths in self.nodes.items():
            pki = keys[name]
            uri = f"local:{self.datasets[name]}"
            node_service.check_server(self.address, ca_cert=pki.ca_cert)
            node_spec = node_service.build_spec(
                paths,
                node_service.JoinOptions(server=self.address, dataset=uri),
                node_name=name,
                dataset_uri=uri,
                pki=pki,
            )
            _add_env(node_spec, paths.config_dir.parent)
            self.started.append((paths, node_spec.name))
            supervisor.start_detached(paths, node_spec)
            say(f"node {name} joined with {self.datasets[name].name}")

    def train(
        self, settings: dict[str, Any], rounds: int, say: Callable[[str], None], on_round: Callable[[dict, int], None]
    ):
        from zk0cli.services import runs

        run_settings = {**settings, "eval-datasets": f"local:{self.eval_dataset}"}
        submitted = runs.submit_run(self.server, rounds=rounds, settings=run_settings, defaults={})  # a fresh home
        say(f"run {submitted.run_id}: {rounds} round(s) with {len(self.nodes)} nodes -> {submitted.run_dir}")
        status = runs.follow_run(self.server, submitted, on_round, poll_s=0.5)
        return submitted, status

    def stop(self, say: Callable[[str], None]) -> None:
        """Nodes first, then the server; then whatever still names the root (a half-started service)."""
        from zk0cli.core.errors import Zk0Error
        from zk0cli.services import supervisor

        def stop(started: tuple[Paths, str]) -> None:
            try:
                supervisor.stop_service(*started)
            except Zk0Error:
                pass  # never got as far as writing its state: the sweep below finds it

        nodes, server = self.started[1:], self.started[:1]
        for group in (nodes, server):  # the nodes together (each waits for its SuperNode to leave), then the server
            with ThreadPoolExecutor(max(len(group), 1)) as pool:
                list(pool.map(stop, group))
        left = sweep_processes(self.root)
        say("stopped every demo process" + (f" ({len(left)} found by the final sweep)" if left else ""))


def _add_env(spec, home: Path) -> None:
    """Each party's processes see their own ZK0_HOME (backbone, runs) and the demo's offline/thread settings."""
    for process in spec.processes:
        process.env.update(PROCESS_ENV, ZK0_HOME=str(home))


def demo_processes(root: Path) -> list:
    """Live processes whose command line names ``root``, with all their descendants."""
    import psutil

    marker = str(root) + os.sep  # paths under the root, never a sibling with a longer name
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            home = (proc.info["environ"] or {}).get("ZK0_HOME", "")
            if proc.pid != os.getpid() and (marker in cmdline or home.startswith(marker)):
                found[proc.pid] = proc
                found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            continue
    return [p for p in found.values() if _alive(p)]


def sweep_processes(root: Path, grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process still tied to ``root``; the pids that had to be stopped."""
    from zk0cli.services.supervisor import terminate_processes

    procs = demo_processes(root)
    terminate_processes(procs, grace_s=grace_s)
    return [p.pid for p in procs]


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _result(root: Path, kept: bool, submitted, status: dict, seconds: float, stages: dict[str, float]) -> DemoResult:
    run_dir = submitted.run_dir
    try:
        rounds = json.loads((run_dir / "federated_metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rounds = []
    checkpoints = sorted(p for p in (run_dir / "checkpoints").glob("round_*") if p.is_dir())
    return DemoResult(
        root=root,
        kept=kept,
        run_id=submitted.run_id,
        run_dir=run_dir,
        state=str(status.get("state", "")),
        rounds=rounds,
        seconds=seconds,
        stage_seconds=stages,
        plots=sorted((run_dir / "plots").glob("*.png")),
        checkpoints=checkpoints,
        videos=sorted((run_dir / "videos").glob("*.mp4")),
    )
