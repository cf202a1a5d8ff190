"""`zk0 sim`: the zk0 Flower app on Flower's Simulation Engine (Ray), on this machine.

zk0 starts its own local SuperLink in simulation mode (free loopback ports, FLWR_HOME under the
state dir, logs there too), submits the app with ``flwr run <app dir> zk0-sim`` and
``--federation-config num-supernodes=N``, follows the run record as rounds finish, and stops the
SuperLink and every process under it when the run ends, fails or is interrupted. Flower would
otherwise leave its background SuperLink running on fixed ports.

Data: ``--dataset`` URIs (one per client, cycled; one URI is partitioned across the clients), or
the run config's ``datasets``; with neither, generated SO-100-style samples, a different task per
client, and the tiny offline backbone. With no ``eval-datasets`` the server evaluates on the
held-out episodes of the clients' datasets (never trained on).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zk0cli.core.errors import Zk0Error, bad_input, env_not_ready, unreachable
from zk0cli.core.files import atomic_write_text
from zk0cli.core.paths import Paths
from zk0cli.fl.record_follow import FollowedRun, follow_record, read_or_none
from zk0cli.fl.records import RunRecord, new_run_name, summary
from zk0cli.fl.run_config import RunConfig
from zk0cli.fl.tracking import require_wandb
from zk0cli.services import flower
from zk0cli.services.flower import free_port
from zk0cli.services.supervisor import child_env, terminate_processes

APP_DIR = Path(__file__).resolve().parents[1] / "fl" / "app"
CONNECTION = "zk0-sim"
SAMPLE_TASKS = ("pick", "stack", "sort")
SAMPLE_EPISODES, SAMPLE_FRAMES = 4, 50
POLL_S = 1.0


@dataclass
class SimRequest:
    clients: int = 2
    rounds: int = 3
    run_config: dict[str, Any] = field(default_factory=dict)  # --run-config overrides, typed
    datasets: list[str] = field(default_factory=list)  # --dataset URIs
    client_cpus: int = 1  # Ray CPUs per client
    client_gpus: float = 0.0  # fraction of a GPU per client (e.g. 0.5 puts two clients on one GPU)
    timeout_s: float = 0.0  # 0 waits as long as the run takes
    ray_address: str = ""  # an existing Ray cluster (host:port) for the clients; "" starts a local one


@dataclass
class RoundProgress:
    round: int
    rounds: int
    summary: dict[str, Any]


@dataclass
class SimResult:
    run_dir: Path
    flwr_run_id: str
    state: str
    rounds: list[dict[str, Any]]  # federated_metrics.json lines
    seconds: float
    config: RunConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "flwr_run_id": self.flwr_run_id,
            "state": self.state,
            "seconds": round(self.seconds, 1),
            "rounds": self.rounds,
        }


def resolve_config(request: SimRequest, paths: Paths, *, say: Callable[[str], None] | None = None) -> RunConfig:
    """The run config the simulation submits, validated here so a bad value never starts Flower;
    ``say`` hears the warnings and the samples being generated."""
    if request.clients < 1:
        raise bad_input(f"--clients must be at least 1, got {request.clients}", hint="e.g. zk0 sim --clients 2")
    if request.rounds < 1:
        raise bad_input(f"--rounds must be at least 1, got {request.rounds}", hint="e.g. zk0 sim --rounds 3")
    values = {**request.run_config, "num-server-rounds": request.rounds, "min-available-nodes": request.clients}
    if request.datasets:
        values["datasets"] = " ".join(_canonical(uri) for uri in request.datasets)
    config = RunConfig.from_mapping(values)  # validation before anything starts
    warning = config.check_sampling(request.clients, "clients")
    if warning and say:
        say(f"aggregation: {warning[0]}; {warning[1]}")
    require_wandb(config)
    if request.ray_address:
        check_ray_address(request.ray_address)
    if not config.datasets:
        values.update(datasets=" ".join(sample_datasets(paths, request.clients, progress=say)))
        values.setdefault("policy", "tiny")  # out of the box: the offline backbone, whatever the default
    values.setdefault("runs-dir", str(paths.runs_dir))
    values.setdefault("run-name", new_run_name() + "-sim")
    return RunConfig.from_mapping(values)


def check_ray_address(address: str) -> None:
    """A Ray cluster's GCS address must answer before Flower is asked to use it: Ray would
    otherwise fail deep inside the SuperLink's simulation process."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise bad_input(
            f"--ray-address {address!r} is not host:port",
            hint="the address `ray start --head` prints, e.g. 10.0.0.5:6379",
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3.0).close()
    except OSError as exc:
        raise unreachable(
            f"no Ray cluster answers at {address} ({exc.strerror or exc})",
            hint="start one with `ray start --head --port 6379` (same Python, zk0 installed on every node)",
        ) from None


def _canonical(text: str) -> str:
    from zk0cli.datasets.uri import parse_uri

    return str(parse_uri(text))


def sample_datasets(paths: Paths, clients: int, *, progress: Callable[[str], None] | None = None) -> list[str]:
    """One generated dataset per client (tasks cycle pick, stack, sort), written once and reused."""
    from zk0cli.datasets.sample import write_sample
    from zk0cli.policy.backbone import ensure_tiny_backbone

    ensure_tiny_backbone()
    uris = []
    for client in range(clients):
        task = SAMPLE_TASKS[client % len(SAMPLE_TASKS)]
        root = paths.data_dir / "samples" / f"sim-{task}-{client}"
        if not (root / "meta" / "info.json").is_file():
            if progress:
                progress(f"generating sample dataset {root.name} ({task})")
            write_sample(root, task=task, episodes=SAMPLE_EPISODES, frames_per_episode=SAMPLE_FRAMES, seed=client)
        uris.append(f"local:{root}")
    return uris


def run(
    request: SimRequest,
    paths: Paths,
    *,
    on_round: Callable[[RoundProgress], None] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> SimResult:
    say = on_message or (lambda _: None)
    config = resolve_config(request, paths, say=say)
    run_dir = Path(config.runs_dir) / config.run_name
    started = time.monotonic()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None  # `kill PID` = Ctrl-C
    try:
        with LocalSuperLink(paths, threads=request.client_cpus, ray_address=request.ray_address) as superlink:
            say(f"local SuperLink on 127.0.0.1:{superlink.port} (logs: {superlink.log_file})")
            flwr_run_id = superlink.submit(config, request)
            say(f"Flower run {flwr_run_id}: {request.clients} clients x {request.rounds} rounds -> {run_dir}")
            try:
                state = _follow(superlink, flwr_run_id, run_dir, config, request, on_round)
            except Zk0Error:
                superlink.save_run_log(flwr_run_id, run_dir / "flower.log")
                raise
            superlink.save_run_log(flwr_run_id, run_dir / "flower.log")
    except KeyboardInterrupt:
        if run_dir.is_dir():  # the server app was stopped with everything else: say so in the record
            RunRecord(run_dir).write_status("interrupted", hint=f"re-run it: zk0 sim --from-record {run_dir}")
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)
    rounds = _summaries(run_dir)
    return SimResult(run_dir, flwr_run_id, state, rounds, time.monotonic() - started, config)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _follow(
    superlink: LocalSuperLink,
    flwr_run_id: str,
    run_dir: Path,
    config: RunConfig,
    request: SimRequest,
    on_round: Callable[[RoundProgress], None] | None,
) -> str:
    """Report rounds as their records appear; return when the run completes, raise when it fails."""
    deadline = time.monotonic() + request.timeout_s if request.timeout_s else None

    def check() -> None:
        if deadline and time.monotonic() > deadline:
            raise unreachable(
                f"the simulation did not finish within {request.timeout_s:g} s",
                hint=f"raise --timeout, or lower --rounds / local-steps; partial record in {run_dir}",
            )
        if not superlink.alive():
            raise Zk0Error("the local SuperLink exited during the simulation", hint=f"see {superlink.log_file}")

    def report(entry: dict[str, Any]) -> None:
        if on_round:
            on_round(RoundProgress(entry["round"], config.num_server_rounds, summary(entry)))

    follow_record(
        FollowedRun(run_dir, "the simulation", f"see {superlink.log_file} and `flwr log {flwr_run_id}`"),
        on_round=report,
        flower_status=lambda: superlink.run_status(flwr_run_id),
        poll_s=POLL_S,
        check=check,
    )
    return "completed"


def _summaries(run_dir: Path) -> list[dict[str, Any]]:
    lines = read_or_none(run_dir / "federated_metrics.json")
    return lines if isinstance(lines, list) else []


# --------------------------------------------------------------------------- the local SuperLink


class LocalSuperLink:
    """A simulation-mode SuperLink zk0 starts, owns and stops (with everything under it)."""

    def __init__(self, paths: Paths, threads: int = 1, ray_address: str = ""):
        self.threads = threads
        self.ray_address = ray_address
        self.home = paths.state_dir / "flwr-sim"
        self.log_file = self.home / "superlink.log"
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LocalSuperLink:
        import tomli_w

        self.home.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.home / "config.toml",
            tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: {"address": ":local:"}}}),
        )
        argv = [
            "flower-superlink",
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--control-api-address",
            f"127.0.0.1:{free_port()}",
            "--disable-runtime-dependency-installation",
            "--log-file",
            str(self.log_file),
        ]
        try:
            self.process = subprocess.Popen(
                argv, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            raise env_not_ready(
                f"cannot start flower-superlink: {exc}", hint="reinstall zk0 (flwr[simulation] is a dependency)"
            ) from exc
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        extra = {"RAY_ADDRESS": self.ray_address} if self.ray_address else {}  # ray.init() reads it (Flower has no key)
        return child_env(
            self.home,
            FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(self.port),
            # the server app and the clients share this machine: no thread oversubscription
            OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(self.threads)),
            **extra,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _wait_healthy(self, timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise env_not_ready(f"flower-superlink exited with code {code}", hint=f"see {self.log_file}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise unreachable(f"the local SuperLink did not answer within {timeout_s:g} s", hint=f"see {self.log_file}")

    def flwr(self, args: list[str], timeout_s: float = 120.0) -> dict:
        return flower.flwr_json(args, env=self.env(), timeout_s=timeout_s, hint=f"see {self.log_file}")

    def submit(self, config: RunConfig, request: SimRequest) -> str:
        import tomli_w

        overrides = self.home / "run-config.toml"
        atomic_write_text(overrides, tomli_w.dumps(config.to_flwr()))
        federation = (
            f"num-supernodes={request.clients} client-resources-num-cpus={int(request.client_cpus)} "
            f"client-resources-num-gpus={float(request.client_gpus)}"
        )
        document = self.flwr(
            ["run", str(APP_DIR), CONNECTION, "--run-config", str(overrides), "--federation-config", federation]
        )
        return str(document["run-id"])

    def save_run_log(self, flwr_run_id: str, path: Path) -> None:
        """The run's ServerApp/ClientApp log as Flower kept it (`flwr log`), next to the record."""
        try:
            done = subprocess.run(
                ["flwr", "log", flwr_run_id, CONNECTION, "--show"],
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            return
        if done.stdout.strip() and path.parent.is_dir():
            atomic_write_text(path, done.stdout)

    def run_status(self, flwr_run_id: str) -> str:
        """Flower's status of the run; "" while the SuperLink cannot say."""
        from zk0cli.services.flower_control import ControlClient, ControlConnection, ControlRefusedError

        try:
            run = ControlClient(ControlConnection("127.0.0.1", self.port, None), timeout_s=10).run(int(flwr_run_id))
        except (OSError, ControlRefusedError):
            return ""
        return run.status if run else ""

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the SuperLink and every process it started (Ray included), SIGKILL what remains."""
        import psutil

        if self.process is None:
            return
        try:
            tree = [psutil.Process(self.process.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        terminate_processes(tree, grace_s=grace_s)
        self.process.poll()
        self.process = None
