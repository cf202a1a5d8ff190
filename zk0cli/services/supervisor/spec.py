"""What a supervisor runs (ServiceSpec and its parts), where its files live, and the state file it writes."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

from zk0cli.core.errors import bad_input
from zk0cli.core.paths import Paths
from zk0cli.core.timefmt import iso_from_epoch

SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
STATE_SCHEMA = 1


@dataclass
class RestartPolicy:
    backoff_initial_s: float = 0.5  # delay after the first quick failure; doubles with each one
    backoff_max_s: float = 30.0  # cap on that delay
    quick_exit_s: float = 15.0  # a run shorter than this is a quick failure
    give_up_after: int = 5  # consecutive quick failures before the service is marked failed
    start_timeout_s: float = 90.0  # time a process has to become healthy
    unhealthy_restart_s: float = 60.0  # a healthy process failing its health check this long is restarted
    stop_grace_s: float = 10.0  # SIGTERM -> SIGKILL when stopping


@dataclass
class ProcessSpec:
    name: str  # "superlink", "fleet-proxy", "supernode"
    argv: list[str]  # argv[0] is looked up on the service PATH (venv bin/ first)
    health_url: str = ""  # empty: healthy as soon as it runs
    health_ca: str = ""  # PEM CA that verifies an https health_url
    health_ok_status: list[int] = field(default_factory=lambda: [200])
    ports: dict[str, int] = field(default_factory=dict)  # shown in the state file
    flwr_home: str = ""  # FLWR_HOME of this process; empty: none set
    preload: str = ""  # "module:function" entry point of argv[0]: enables the warm spare
    env: dict[str, str] = field(default_factory=dict)
    watch: dict[str, str] = field(default_factory=dict)  # event name -> regex; last match kept in state
    fatal: dict[str, str] = field(default_factory=dict)  # regex -> reason: no restart (until first ready)
    ready_event: str = ""  # a ``watch`` event that must follow each start before the process counts as healthy
    restart_hook: str = ""  # "module:function(argv, events)" run in the preloaded process before a start
    # that follows an earlier run (events known, also from a previous supervisor's state file)
    unlogged: list[str] = field(default_factory=list)  # regexes of routine lines kept out of the log


@dataclass
class ProbeSpec:
    """A remote endpoint the service depends on, checked periodically and reported (never restarted)."""

    name: str  # "server"
    url: str  # GET this
    ca: str = ""  # PEM CA for https
    ok_status: list[int] = field(default_factory=lambda: [200])
    period_s: float = 5.0


@dataclass
class ServiceSpec:
    name: str  # "server" or "node-<name>"
    kind: str  # "server" | "node"
    processes: list[ProcessSpec]
    info: dict = field(default_factory=dict)  # copied into the state file for `zk0 status`
    probes: list[ProbeSpec] = field(default_factory=list)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ServiceSpec:
        data = dict(data)
        data["processes"] = [ProcessSpec(**p) for p in data["processes"]]
        data["restart"] = RestartPolicy(**data.get("restart", {}))
        data["probes"] = [ProbeSpec(**p) for p in data.get("probes", [])]
        return cls(**data)


@dataclass(frozen=True)
class ServiceFiles:
    """The files of one service."""

    state: Path  # <state_dir>/services/<service>.json: a ServiceState
    lock: Path  # .lock: pid of the supervisor holding it (an flock: a dead holder never blocks a new start)
    spec: Path  # .spec.json: the ServiceSpec a detached supervisor runs
    log: Path  # <log_dir>/<service>.log (+ .1 ...): every process's output and the supervisor's events
    supervisor_out: Path  # <log_dir>/<service>.supervisor.out: a detached supervisor's own stdout/stderr

    @classmethod
    def of(cls, paths: Paths, service: str) -> ServiceFiles:
        base = paths.state_dir / "services"
        return cls(
            state=base / f"{service}.json",
            lock=base / f"{service}.lock",
            spec=base / f"{service}.spec.json",
            log=paths.log_dir / f"{service}.log",
            supervisor_out=paths.log_dir / f"{service}.supervisor.out",
        )


def flwr_home(paths: Paths, service: str) -> Path:
    """The FLWR_HOME of a service's Flower process (apps, local state)."""
    return paths.state_dir / "flwr-home" / service


def check_service_name(name: str, *, what: str = "name") -> str:
    if not SERVICE_NAME.fullmatch(name):
        raise bad_input(
            f"{what} '{name}' is not allowed", hint="use lowercase letters, digits, '.', '_' or '-' (at most 63)"
        )
    return name


# --------------------------------------------------------------------------- the state file

# Times in the state file are ISO-8601 UTC ("2026-...Z"); create times are psutil's epoch seconds.
State = Literal["starting", "healthy", "restarting", "stopped", "failed"]


class HealthState(TypedDict):
    url: str
    ok: bool
    detail: str  # "HTTP 200", "connection refused", "starting", ...
    checked_at: str | None


class WatchEvent(TypedDict):
    """The last line that matched one of a process's ``watch`` patterns."""

    at: str
    line: str  # at most 500 characters
    groups: dict[str, str | None]  # the pattern's named groups, e.g. {"node_id": "..."}
    count: int  # matches since the process started


class ProcessState(TypedDict):
    state: State
    reason: str
    pid: int | None  # null when not running
    pgid: int | None  # each process leads its own session and group
    create_time: float | None  # of pid: guards against pid reuse
    started_at: str | None
    restarts: int  # starts after the first one
    quick_failures: int  # consecutive quick failures (reset by a long run)
    last_exit_code: int | None  # negative: killed by that signal
    last_exit_at: str | None
    next_restart_at: str | None  # when state is restarting
    ports: dict[str, int]  # e.g. {"runtime": 9094}
    health: HealthState
    descendants: list[int]  # last psutil snapshot of the process tree
    events: dict[str, WatchEvent]  # e.g. "connected" (groups: node_id), "reconnecting" (groups: next_try_s)


class ProbeState(TypedDict):
    """A remote dependency (a node's server), reported only."""

    url: str
    ok: bool | None  # null: not checked yet
    detail: str
    consecutive_failures: int
    since: str | None  # when ok last changed
    checked_at: str | None
    next_check_in_s: float


class SupervisorState(TypedDict):
    pid: int
    started_at: str
    create_time: float | None
    detached: bool


class ServiceState(TypedDict):
    """``<service>.json``, written atomically on every change and every few seconds.

    A process with a ``ready_event`` (a node: ``connected``, seen when Flower logs its SuperNode ID)
    stays ``starting`` with reason "running; waiting for: connected" until that line appears, so
    "healthy" for a node means "connected to the server".
    """

    schema: int  # STATE_SCHEMA
    service: str  # file stem: "server" or "node-<name>"
    kind: str  # "server" | "node"
    state: State
    reason: str  # one line for failed/restarting/stopped, else ""
    last_log_lines: list[str]  # for failed: what the failing process printed last
    supervisor: SupervisorState
    updated_at: str  # heartbeat: a live supervisor rewrites it every few seconds
    log_file: str
    info: dict  # service facts for `zk0 status` (addresses, dataset, ...)
    processes: dict[str, ProcessState]
    probes: dict[str, ProbeState]


def state_time(epoch: float | None) -> str | None:
    """An epoch time as the state file holds it (None stays null)."""
    return None if epoch is None else iso_from_epoch(epoch)
