"""One supervisor for every process zk0 starts: Flower's SuperLink and SuperNode, and zk0's fleet proxy.

A *service* (``server``, ``node-<name>``) is a set of processes run by one supervisor. The
supervisor starts each process in its own session (so a Ctrl-C in the terminal reaches only the
supervisor, which then stops everything in order), with the venv's ``bin/`` first on PATH,
``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1`` and the service's own ``FLWR_HOME``.
It reads their output through pipes and writes it, time-stamped and without colour codes, to one
rotating log per service, next to its own events (started, exited, restarting in ...).

Restarts: ANY exit is restarted, exit 0 included (a SuperNode exits 0 when an in-memory SuperLink
restarts under it). A run shorter than ``quick_exit_s`` is a quick failure; quick failures wait
``backoff_initial_s * 2**(n-1)`` (capped) before the next start and, after ``give_up_after`` of
them in a row, the service is marked failed with the last log lines, and stopped. A line matching
one of a process's ``fatal`` patterns turns its next exit into an immediate failure (e.g. a node
whose key the server does not know: retrying cannot help).

Fast restarts: starting a Flower process costs ~2.5 s of imports on a small CPU. For processes with
a ``preload`` entry point, the supervisor keeps a warm spare: a process that has already imported
the entry point and waits for one line ``go`` on stdin. A restart hands over to the spare (~0.2 s
to healthy) and a new spare is made once the service is healthy again.

Health: a process is ``healthy`` once ``GET health_url`` (httpx; TLS verified against
``health_ca``) answers one of ``health_ok_status``. One that is not healthy within
``start_timeout_s`` is killed and counted as a quick failure, with the reason.

Stopping (SIGINT/SIGTERM/SIGHUP to the supervisor, or ``stop_service``): SIGTERM to each process
group, then to every descendant found with psutil (Flower's SuperLink starts its SuperExec in a new
session, so process groups alone are not enough), SIGKILL after the grace period. The supervisor
also makes itself a child subreaper (Linux), so descendants of a process that died (kill -9) are
re-parented to it and killed too: nothing is orphaned.

Files, per service (see ``ServiceFiles``): ``<state_dir>/services/<service>.json`` (state, below),
``.lock`` (pid of the supervisor holding it; an flock, so a dead holder never blocks a new start),
``.spec.json`` (what a detached supervisor runs), ``<log_dir>/<service>.log`` (+ ``.1`` ...), and
``<log_dir>/<service>.supervisor.out`` (a detached supervisor's own stdout/stderr).

State file schema (``schema`` = 1), written atomically on every change and every few seconds::

    {
      "schema": 1,
      "service": "node-alice",            # file stem; "server" or "node-<name>"
      "kind": "node",                     # "server" | "node"
      "state": "healthy",                 # starting | healthy | restarting | stopped | failed
      "reason": "",                       # one line for failed/restarting/stopped, else ""
      "last_log_lines": [],               # for failed: what the failing process printed last
      "supervisor": {"pid": 123, "started_at": "2026-...Z", "create_time": 1.7e9, "detached": true},
      "updated_at": "2026-...Z",          # heartbeat: a live supervisor rewrites it every 5 s
      "log_file": "/.../logs/node-alice.log",
      "info": {...},                      # service facts for `zk0 status` (addresses, dataset, ...)
      "processes": {
        "supernode": {
          "state": "healthy",             # same values as the service state
          "pid": 4567, "pgid": 4567,      # null when not running
          "create_time": 1.7e9,           # psutil create_time of pid (guards against pid reuse)
          "started_at": "2026-...Z",
          "restarts": 0,                  # starts after the first one
          "quick_failures": 0,            # consecutive quick failures (reset by a long run)
          "last_exit_code": null,         # negative: killed by that signal
          "last_exit_at": null,
          "next_restart_at": null,        # when state is restarting
          "ports": {"runtime": 9094},
          "health": {"url": "http://...", "ok": true, "detail": "200", "checked_at": "..."},
          "descendants": [4570, 4602],    # last psutil snapshot of the process tree
          "events": {                     # last line matching each `watch` pattern; count: matches since start
            "connected": {"at": "...", "line": "...", "groups": {"node_id": "..."}, "count": 1},
            "reconnecting": {"at": "...", "line": "...", "groups": {"next_try_s": "1.33"}, "count": 2}
          }
        }
      },
      "probes": {                         # remote dependencies (a node's server), reported only
        "server": {"url": "https://...:9092/health", "ok": false, "detail": "connection refused",
                   "consecutive_failures": 3, "since": "...", "checked_at": "...", "next_check_in_s": 4.2}
      }
    }

A process with a ``ready_event`` (a node: ``connected``, seen when Flower logs its SuperNode ID)
stays ``starting`` with reason "running; waiting for: connected" until that line appears, so
"healthy" for a node means "connected to the server".
"""

from __future__ import annotations

import collections
import ctypes
import datetime as dt
import fcntl
import importlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zk0cli.core.errors import ExitCode, Zk0Error, bad_input, env_not_ready, unreachable
from zk0cli.core.files import atomic_write_json
from zk0cli.core.paths import Paths
from zk0cli.services.supervisor.proctree import child_env

STATE_SCHEMA = 1
STATES = ("starting", "healthy", "restarting", "stopped", "failed")
SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PR_SET_CHILD_SUBREAPER = 36
LOOP_TICK_S = 0.05
HEARTBEAT_S = 5.0
TREE_SNAPSHOT_S = 2.0
HEALTH_PERIOD_STARTING_S = 0.1
HEALTH_PERIOD_HEALTHY_S = 2.0
ORPHAN_KILL_GRACE_S = 3.0
LAST_LINES = 12

EventSink = Callable[[str, str], None]  # (level: "info"|"warning"|"error", message)


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
    state: Path
    lock: Path
    spec: Path
    log: Path
    supervisor_out: Path

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


# --------------------------------------------------------------------------- lock


class ServiceLock:
    """An flock on ``<service>.lock`` that also records the holder's pid.

    The kernel drops the flock when its holder dies, so a lock left by a dead process is never a
    blocker: it is detected (a pid in the file, no lock held) and cleared.
    """

    def __init__(self, path: Path, service: str):
        self.path = path
        self.service = service
        self._fd: int | None = None
        self.stale_pid: int | None = None  # pid found in a lock its holder no longer held

    def acquire(self) -> ServiceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise already_running(self.service, pid) from None
        previous = _read_pid(fd)
        self.stale_pid = previous if previous and previous != os.getpid() else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_holder(paths: Paths, service: str) -> int | None:
    """Pid of the live supervisor holding the service's lock, or None."""
    path = ServiceFiles.of(paths, service).lock
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def already_running(service: str, pid: int | None) -> Zk0Error:
    who = f" (pid {pid})" if pid and pid > 0 else ""
    return bad_input(
        f"{service} is already running{who}", hint=f"see `zk0 status`, or stop it first: {stop_command(service)}"
    )


def stop_command(service: str) -> str:
    return "zk0 stop server" if service == "server" else f"zk0 stop node {service.removeprefix('node-')}"


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


# --------------------------------------------------------------------------- logs


class RotatingLog:
    """One time-stamped line per write; rotates to ``.1``, ``.2`` ... past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")
        self._size = self._fh.tell()

    def write(self, source: str, text: str) -> None:
        line = f"{utc_now()} [{source}] {text}\n"
        self._fh.write(line)
        self._fh.flush()
        self._size += len(line.encode("utf-8", errors="replace"))
        if self._size > self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._fh.close()
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._size = 0

    def close(self) -> None:
        self._fh.close()


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- health checks


class _HttpCheck:
    """GET one URL; TLS verified against a pinned CA; a fresh connection each time."""

    def __init__(self, url: str, ca: str, ok_status: list[int]):
        self.url = url
        self.ca = ca
        self.ok_status = ok_status
        self._client = None

    def check(self) -> tuple[bool, str]:
        import httpx

        if self._client is None:
            verify: object = True
            if self.url.startswith("https://"):
                import ssl

                verify = ssl.create_default_context(cafile=self.ca or None)
            self._client = httpx.Client(verify=verify, timeout=1.0, limits=httpx.Limits(max_keepalive_connections=0))
        try:
            status = self._client.get(self.url).status_code
        except httpx.HTTPError as exc:
            return False, _describe_http_error(exc)
        return status in self.ok_status, f"HTTP {status}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class _Probe:
    """A remote dependency (the server, for a node): reported in state and logs, never acted on."""

    def __init__(self, spec: ProbeSpec):
        self.spec = spec
        self.http = _HttpCheck(spec.url, spec.ca, spec.ok_status)
        self.ok: bool | None = None
        self.detail = "not checked yet"
        self.failures = 0
        self.since: float | None = None
        self.checked_at: str | None = None
        self.next_mono = 0.0

    def to_state(self) -> dict:
        return {
            "url": self.spec.url,
            "ok": self.ok,
            "detail": self.detail,
            "consecutive_failures": self.failures,
            "since": _iso(self.since),
            "checked_at": self.checked_at,
            "next_check_in_s": round(max(0.0, self.next_mono - time.monotonic()), 1),
        }


# --------------------------------------------------------------------------- one supervised process


class _Process:
    """Runtime bookkeeping for one ProcessSpec: the live process, its spare, its health."""

    def __init__(self, spec: ProcessSpec, env: dict[str, str]):
        self.spec = spec
        self.env = env
        self.popen: subprocess.Popen | None = None
        self.spare: subprocess.Popen | None = None
        self.state = "starting"
        self.reason = ""
        self.started_wall: float | None = None
        self.started_mono = 0.0
        self.create_time: float | None = None
        self.restarts = -1  # the first start is not a restart
        self.quick_failures = 0
        self.last_exit_code: int | None = None
        self.last_exit_wall: float | None = None
        self.next_restart_mono: float | None = None
        self.next_restart_wall: float | None = None
        self.health = {"url": spec.health_url, "ok": False, "detail": "not checked yet", "checked_at": None}
        self.next_health_mono = 0.0
        self.unhealthy_since: float | None = None
        self.kill_reason = ""  # set when the supervisor itself killed it (start timeout, unhealthy)
        self.answered_since_start = False  # its health check passed once since the last start
        self.fatal_reason = ""
        self.descendants: list[int] = []
        self.events: dict[str, dict] = {}
        self.seen_since_start: set[str] = set()
        self.was_ready = False  # became healthy once under this supervisor: later refusals may be transient
        self.last_lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self._watch = {name: re.compile(rx) for name, rx in spec.watch.items()}
        self._fatal = [(re.compile(rx), reason) for rx, reason in spec.fatal.items()]
        self.http = _HttpCheck(spec.health_url, spec.health_ca, spec.health_ok_status) if spec.health_url else None

    # -- output
    def on_line(self, line: str) -> list[str]:
        """Record a line of output; return the watch events it is the first sighting of since the start."""
        self.last_lines.append(line)
        fresh = []
        for name, rx in self._watch.items():
            match = rx.search(line)
            if match:
                if name not in self.seen_since_start:
                    fresh.append(name)
                    self.seen_since_start.add(name)
                count = self.events.get(name, {}).get("count", 0) + 1 if name not in fresh else 1
                self.events[name] = {"at": utc_now(), "line": line[:500], "groups": match.groupdict(), "count": count}
        for rx, reason in self._fatal:
            if rx.search(line) and not self.was_ready:
                self.fatal_reason = reason
        return fresh

    def ready(self) -> bool:
        return not self.spec.ready_event or self.spec.ready_event in self.seen_since_start

    # -- health
    def check_health(self) -> bool:
        ok, detail = self.http.check() if self.http else (True, "running")
        self.health = {"url": self.spec.health_url, "ok": ok, "detail": detail, "checked_at": utc_now()}
        return ok

    def close(self) -> None:
        if self.http is not None:
            self.http.close()

    def to_state(self) -> dict:
        running = self.popen is not None and self.popen.poll() is None
        return {
            "state": self.state,
            "reason": self.reason,
            "pid": self.popen.pid if running else None,
            "pgid": self.popen.pid if running else None,  # each process leads its own session and group
            "create_time": self.create_time if running else None,
            "started_at": _iso(self.started_wall),
            "restarts": max(self.restarts, 0),
            "quick_failures": self.quick_failures,
            "last_exit_code": self.last_exit_code,
            "last_exit_at": _iso(self.last_exit_wall),
            "next_restart_at": _iso(self.next_restart_wall),
            "ports": self.spec.ports,
            "health": self.health,
            "descendants": self.descendants if running else [],
            "events": self.events,
        }


def _describe_http_error(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "TLS certificate not trusted by the pinned CA"
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return text.splitlines()[0][:200]


# --------------------------------------------------------------------------- the supervisor


class Supervisor:
    """Runs one ServiceSpec until stopped or failed. Use ``run_foreground``/``start_detached``."""

    def __init__(self, paths: Paths, spec: ServiceSpec, *, detached: bool, on_event: EventSink | None = None):
        self.paths = paths
        self.spec = spec
        self.files = ServiceFiles.of(paths, spec.name)
        self.detached = detached
        self.on_event = on_event or (lambda level, message: None)
        self.processes = [_Process(p, child_env(p.flwr_home, **p.env)) for p in spec.processes]
        previous = read_state(paths, spec.name) or {}
        for proc in self.processes:  # what the last run saw (e.g. a node id) feeds restart hooks
            proc.events = dict(previous.get("processes", {}).get(proc.spec.name, {}).get("events", {}))
        self.probes = [_Probe(p) for p in spec.probes]
        self.selector = selectors.DefaultSelector()
        self.buffers: dict[int, bytearray] = {}
        self.owners: dict[int, _Process] = {}
        self.log: RotatingLog | None = None
        self.stop_requested = False
        self.stop_signal = ""
        self.failed_reason = ""
        self.failed_lines: list[str] = []
        self.started_wall = time.time()
        self.orphans: dict[int, float] = {}  # pid -> when SIGTERM was sent
        self._next_heartbeat = 0.0
        self._next_snapshot = 0.0
        self._state_dirty = True
        self._reported: dict[str, str] = {}

    # -- public
    def run(self) -> int:
        """Supervise until a stop signal (returns 0) or a failure (returns 1, see failed_reason)."""
        lock = ServiceLock(self.files.lock, self.spec.name).acquire()
        previous_handlers = {}
        try:
            self.log = RotatingLog(self.files.log, self.spec.log_max_bytes, self.spec.log_backups)
            if lock.stale_pid:
                self._event("warning", f"cleared a stale lock left by pid {lock.stale_pid} (no longer running)")
                self._kill_leftovers()
            _become_subreaper()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous_handlers[signum] = signal.signal(signum, self._request_stop)
            self._event(
                "info",
                f"supervisor pid {os.getpid()} starting {self.spec.name} ({', '.join(p.spec.name for p in self.processes)})",
            )
            for proc in self.processes:
                self._start(proc)
            self._loop()
        finally:
            self._stop_all()
            self._write_state(final=True)
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            for check in [*self.processes, *(p.http for p in self.probes)]:
                check.close()
            if self.log is not None:
                self.log.close()
            lock.release()
        return 1 if self.failed_reason else 0

    # -- main loop
    def _loop(self) -> None:
        while not self.stop_requested and not self.failed_reason:
            self._pump(LOOP_TICK_S)
            now = time.monotonic()
            for proc in self.processes:
                self._tend(proc, now)
            for probe in self.probes:
                if now >= probe.next_mono:
                    self._probe(probe, now)
            if now >= self._next_snapshot:
                self._snapshot_trees()
                self._sweep_orphans()
                self._next_snapshot = now + TREE_SNAPSHOT_S
            self._write_state()

    def _tend(self, proc: _Process, now: float) -> None:
        if proc.popen is not None and proc.popen.poll() is not None:
            self._on_exit(proc, proc.popen.returncode)
        if proc.state == "restarting" and proc.next_restart_mono is not None and now >= proc.next_restart_mono:
            self._start(proc)
        if proc.popen is None or proc.popen.poll() is not None:
            return
        if now >= proc.next_health_mono:
            self._health(proc, now)
        timed_out = now - proc.started_mono > self.spec.restart.start_timeout_s
        if proc.state == "starting" and not proc.answered_since_start and timed_out and not proc.kill_reason:
            proc.kill_reason = f"not healthy after {self.spec.restart.start_timeout_s:g} s ({proc.health['detail']})"
            self._event("warning", f"{proc.spec.name}: {proc.kill_reason}; restarting it")
            self._signal_group(proc.popen, signal.SIGKILL)
        if proc.spare is not None and proc.spare.poll() is not None:
            self._discard(proc.spare)
            proc.spare = None
        if proc.spare is None and proc.spec.preload and proc.state == "healthy" and self._all_healthy():
            proc.spare = self._spawn(proc, spare=True)

    def _health(self, proc: _Process, now: float) -> None:
        was_ok = proc.health["ok"]
        ok = proc.check_health()
        if ok:
            proc.unhealthy_since = None
            proc.answered_since_start = True
            if proc.state == "starting" and not proc.ready():
                proc.reason = f"running; waiting for: {proc.spec.ready_event}"
            elif proc.state == "starting":
                proc.state, proc.reason = "healthy", ""
                proc.was_ready = True
                ports = f", {_ports(proc.spec.ports)}" if proc.spec.ports else ""
                self._event(
                    "info", f"{proc.spec.name} healthy (pid {proc.popen.pid}{ports})", detail=proc.health["detail"]
                )
                self._state_dirty = True
        elif proc.state == "healthy":
            proc.unhealthy_since = proc.unhealthy_since or now
            if was_ok:
                self._event("warning", f"{proc.spec.name} health check failing: {proc.health['detail']}")
            if now - proc.unhealthy_since > self.spec.restart.unhealthy_restart_s and not proc.kill_reason:
                proc.kill_reason = (
                    f"health check failing for {self.spec.restart.unhealthy_restart_s:g} s ({proc.health['detail']})"
                )
                self._event("warning", f"{proc.spec.name}: {proc.kill_reason}; restarting it")
                self._signal_group(proc.popen, signal.SIGTERM)
        if was_ok != ok:
            self._state_dirty = True
        period = HEALTH_PERIOD_HEALTHY_S if proc.state == "healthy" else HEALTH_PERIOD_STARTING_S
        proc.next_health_mono = now + period

    def _probe(self, probe: _Probe, now: float) -> None:
        ok, detail = probe.http.check()
        probe.checked_at, probe.next_mono = utc_now(), now + probe.spec.period_s
        name, period = probe.spec.name, probe.spec.period_s
        if ok and probe.ok is False:
            self._event("info", f"{name} reachable again after {time.time() - probe.since:.0f} s ({detail})")
        elif not ok and probe.ok is not False:
            self._event("warning", f"{name} unreachable at {probe.spec.url}: {detail}; checking every {period:g} s")
        elif not ok:
            self._event(
                "info",
                f"{name} still unreachable: {detail} (check {probe.failures + 1}, next in {period:g} s)",
                quiet=True,
            )
        if ok != probe.ok:
            probe.since = time.time()
        self._state_dirty = True  # every check: failure counts and next-check times are part of the state
        probe.failures = 0 if ok else probe.failures + 1
        probe.ok, probe.detail = ok, detail

    def _all_healthy(self) -> bool:
        return all(p.state == "healthy" for p in self.processes)

    # -- starting and exits
    def _start(self, proc: _Process) -> None:
        go = b"go\n"
        if proc.spec.restart_hook and proc.events:
            go = b"go " + json.dumps({"hook": proc.spec.restart_hook, "events": proc.events}).encode() + b"\n"
        if proc.spare is not None and proc.spare.poll() is None:
            popen, proc.spare = proc.spare, None
            try:
                popen.stdin.write(go)
                popen.stdin.close()
            except OSError:  # the spare died just now: start cold
                self._discard(popen)
                popen = self._spawn(proc, spare=False)
                self._go(popen, go)
        else:
            popen = self._spawn(proc, spare=False)
            self._go(popen, go)
        proc.popen = popen
        proc.restarts += 1
        proc.state, proc.reason = "starting", ""
        proc.started_wall, proc.started_mono = time.time(), time.monotonic()
        proc.create_time = _create_time(popen.pid)
        proc.next_restart_mono = proc.next_restart_wall = None
        proc.next_health_mono = 0.0
        proc.health = {**proc.health, "ok": False, "detail": "starting"}
        proc.kill_reason = proc.fatal_reason = ""
        proc.answered_since_start = False
        proc.seen_since_start = set()
        attempt = f" (restart {proc.restarts})" if proc.restarts else ""
        self._event("info", f"started {proc.spec.name} (pid {popen.pid}){attempt}", detail=" ".join(proc.spec.argv))
        self._state_dirty = True

    @staticmethod
    def _go(popen: subprocess.Popen, line: bytes) -> None:
        if popen.stdin is not None:
            popen.stdin.write(line)
            popen.stdin.close()

    def _spawn(self, proc: _Process, *, spare: bool) -> subprocess.Popen:
        spec = proc.spec
        if spec.preload:  # argv[0] is only the program name the entry point sees
            argv = [sys.executable, "-m", "zk0cli.services.supervisor", "preload", spec.preload, "--", *spec.argv]
        else:
            executable = shutil.which(spec.argv[0], path=proc.env["PATH"])
            if executable is None:
                raise env_not_ready(
                    f"{spec.argv[0]} not found on PATH", hint="reinstall zk0 into its venv (pip install -e .)"
                )
            argv = [executable, *spec.argv[1:]]
        if spec.flwr_home:
            Path(spec.flwr_home).mkdir(parents=True, exist_ok=True)
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if spec.preload else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=proc.env,
            cwd=spec.flwr_home or None,
            start_new_session=True,
        )
        os.set_blocking(popen.stdout.fileno(), False)
        self.selector.register(popen.stdout, selectors.EVENT_READ)
        self.buffers[popen.stdout.fileno()] = bytearray()
        self.owners[popen.stdout.fileno()] = proc
        if spare:
            self._event("info", f"{spec.name}: warm spare pid {popen.pid} ready for the next restart", quiet=True)
        return popen

    def _on_exit(self, proc: _Process, code: int) -> None:
        self._pump(0)  # log what it printed last
        ran_s = time.monotonic() - proc.started_mono
        proc.last_exit_code, proc.last_exit_wall = code, time.time()
        self._collect_orphans(proc)
        proc.popen = None
        quick = ran_s < self.spec.restart.quick_exit_s or bool(proc.kill_reason)
        proc.quick_failures = proc.quick_failures + 1 if quick else 0
        why = proc.kill_reason or (f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}")
        if self.stop_requested:
            return
        if proc.fatal_reason or proc.quick_failures >= self.spec.restart.give_up_after:
            reason = proc.fatal_reason or (
                f"{proc.spec.name} {why}, {proc.quick_failures} times in a row within "
                f"{self.spec.restart.quick_exit_s:g} s of starting"
            )
            proc.state, proc.reason = "failed", reason
            self.failed_reason = reason
            self.failed_lines = list(proc.last_lines)
            self._event("error", f"giving up: {reason}")
            self._state_dirty = True
            return
        delay = 0.0
        if proc.quick_failures:
            delay = min(
                self.spec.restart.backoff_max_s, self.spec.restart.backoff_initial_s * 2 ** (proc.quick_failures - 1)
            )
        proc.state = "restarting"
        proc.reason = f"{why} after {ran_s:.1f} s; restart attempt {proc.restarts + 1} in {delay:.1f} s"
        proc.next_restart_mono = time.monotonic() + delay
        proc.next_restart_wall = time.time() + delay
        self._event("warning", f"{proc.spec.name} {proc.reason}")
        self._state_dirty = True

    # -- output pump
    def _pump(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            stream = key.fileobj
            fd = stream.fileno()
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            buffer = self.buffers[fd]
            if not chunk:
                if buffer:
                    self._line(self.owners[fd], bytes(buffer))
                self._unregister(stream)
                continue
            buffer.extend(chunk)
            *lines, rest = buffer.split(b"\n")
            for line in lines:
                self._line(self.owners[fd], line)
            if len(rest) > 65536:  # a line without end: log it in pieces
                self._line(self.owners[fd], bytes(rest))
                rest = b""
            self.buffers[fd] = bytearray(rest)

    def _line(self, proc: _Process, raw: bytes) -> None:
        text = ANSI_ESCAPE.sub("", raw.decode("utf-8", errors="replace")).rstrip("\r")
        if not text.strip():
            return
        fresh = proc.on_line(text)
        if self.log is not None:
            self.log.write(proc.spec.name, text)
        for name in fresh:
            groups = proc.events[name]["groups"]
            detail = f" ({', '.join(f'{k}={v}' for k, v in groups.items())})" if groups else ""
            self._event("info", f"{proc.spec.name}: {name}{detail}")
            self._state_dirty = True

    def _unregister(self, stream) -> None:
        fd = stream.fileno()
        self.selector.unregister(stream)
        stream.close()
        self.buffers.pop(fd, None)
        self.owners.pop(fd, None)

    # -- trees, orphans, stopping
    def _snapshot_trees(self) -> None:
        import psutil

        for proc in self.processes:
            if proc.popen is None or proc.popen.poll() is not None:
                continue
            try:
                proc.descendants = [c.pid for c in psutil.Process(proc.popen.pid).children(recursive=True)]
            except psutil.Error:
                proc.descendants = []

    def _tracked_pids(self) -> set[int]:
        pids = set()
        for proc in self.processes:
            for popen in (proc.popen, proc.spare):
                if popen is not None:
                    pids.add(popen.pid)
        return pids

    def _collect_orphans(self, proc: _Process) -> None:
        """After a process died, its surviving descendants are orphans: terminate them now."""
        import psutil

        for pid in proc.descendants:
            try:
                child = psutil.Process(pid)
                if child.pid not in self._tracked_pids() and child.status() != psutil.STATUS_ZOMBIE:
                    child.terminate()
                    self.orphans.setdefault(pid, time.monotonic())
            except psutil.Error:
                pass
        proc.descendants = []
        self._sweep_orphans()

    def _sweep_orphans(self) -> None:
        """Children re-parented to us (we are a subreaper) that no spec owns: end and reap them."""
        import psutil

        tracked = self._tracked_pids()
        now = time.monotonic()
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for child in children:
            if child.pid in tracked:
                continue
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
                    self.orphans.pop(child.pid, None)
                    continue
                sent = self.orphans.get(child.pid)
                if sent is None:
                    child.terminate()
                    self.orphans[child.pid] = now
                elif now - sent > ORPHAN_KILL_GRACE_S:
                    child.kill()
            except (psutil.Error, ChildProcessError):
                self.orphans.pop(child.pid, None)

    def _stop_all(self) -> None:
        import psutil

        if self.stop_signal:
            self._event("info", f"received {self.stop_signal}: stopping {self.spec.name}")
        self._snapshot_trees()
        tree: dict[int, psutil.Process] = {}
        for proc in self.processes:
            for pid in proc.descendants:
                try:
                    tree[pid] = psutil.Process(pid)
                except psutil.Error:
                    pass
        leaders = []
        for proc in reversed(self.processes):
            if proc.spare is not None:
                self._discard(proc.spare)
                proc.spare = None
            if proc.popen is not None and proc.popen.poll() is None:
                self._signal_group(proc.popen, signal.SIGTERM)
                leaders.append(proc)
        deadline = time.monotonic() + self.spec.restart.stop_grace_s
        while any(p.popen.poll() is None for p in leaders) and time.monotonic() < deadline:
            self._pump(LOOP_TICK_S)
        for proc in leaders:
            if proc.popen.poll() is None:
                self._event(
                    "warning", f"{proc.spec.name} did not stop within {self.spec.restart.stop_grace_s:g} s: killing it"
                )
                self._signal_group(proc.popen, signal.SIGKILL)
                proc.popen.wait()
        for proc in self.processes:
            if proc.popen is not None:
                proc.last_exit_code, proc.last_exit_wall = proc.popen.returncode, time.time()
                proc.popen = None
            if proc.state != "failed":
                proc.state, proc.reason = "stopped", ""
        try:
            for child in psutil.Process().children(recursive=True):
                tree.setdefault(child.pid, child)
        except psutil.Error:
            pass
        terminate_processes(list(tree.values()), grace_s=3.0)
        self._reap_children()
        self._pump(0)
        for key in list(self.selector.get_map().values()):
            self._unregister(key.fileobj)
        self._event(
            "info",
            f"{self.spec.name} stopped" + (f" after a failure: {self.failed_reason}" if self.failed_reason else ""),
        )

    def _kill_leftovers(self) -> None:
        """Processes a supervisor that died (kill -9) left behind, as its last state file lists them."""
        previous = read_state(self.paths, self.spec.name)
        if not previous:
            return
        leftovers = _live_recorded_processes(previous)
        if leftovers:
            self._event(
                "warning",
                f"stopping {len(leftovers)} process(es) left by the previous supervisor: {[p.pid for p in leftovers]}",
            )
            terminate_processes(leftovers, grace_s=5.0)

    def _discard(self, popen: subprocess.Popen) -> None:
        try:
            if popen.stdin is not None and not popen.stdin.closed:
                popen.stdin.close()  # a spare waiting for "go" exits on end of input
        except OSError:
            pass
        self._signal_group(popen, signal.SIGTERM)
        try:
            popen.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self._signal_group(popen, signal.SIGKILL)
            popen.wait()

    @staticmethod
    def _signal_group(popen: subprocess.Popen, signum: int) -> None:
        if popen.poll() is not None:
            return
        try:
            os.killpg(popen.pid, signum)
        except ProcessLookupError:
            pass

    def _reap_children(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _request_stop(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        # Only set flags here: printing from a signal handler could re-enter the console.
        self.stop_requested = True
        self.stop_signal = self.stop_signal or signal.Signals(signum).name

    # -- state and events
    def _state(self) -> str:
        if self.failed_reason:
            return "failed"
        states = {p.state for p in self.processes}
        for candidate in ("failed", "restarting", "starting", "stopped"):
            if candidate in states:
                return candidate
        return "healthy"

    def _write_state(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if not (final or self._state_dirty or now >= self._next_heartbeat):
            return
        state = self._state()
        reasons = [f"{p.spec.name}: {p.reason}" for p in self.processes if p.reason]
        atomic_write_json(
            self.files.state,
            {
                "schema": STATE_SCHEMA,
                "service": self.spec.name,
                "kind": self.spec.kind,
                "state": state,
                "reason": self.failed_reason or "; ".join(reasons),
                "last_log_lines": self.failed_lines,
                "supervisor": {
                    "pid": os.getpid(),
                    "started_at": _iso(self.started_wall),
                    "create_time": _create_time(os.getpid()),
                    "detached": self.detached,
                },
                "updated_at": utc_now(),
                "log_file": str(self.files.log),
                "info": self.spec.info,
                "processes": {p.spec.name: p.to_state() for p in self.processes},
                "probes": {p.spec.name: p.to_state() for p in self.probes},
            },
        )
        self._state_dirty = False
        self._next_heartbeat = now + HEARTBEAT_S
        if state != self._reported.get("state"):
            self._reported["state"] = state
            if state == "healthy":
                self._event("info", f"{self.spec.name} is healthy")

    def _event(self, level: str, message: str, *, quiet: bool = False, detail: str = "") -> None:
        """Log a supervisor event (with ``detail`` in the log only) and, unless quiet, report it."""
        if self.log is not None:
            self.log.write("zk0", f"{message}: {detail}" if detail else message)
        if not quiet:
            self.on_event(level, message)


def _ports(ports: dict[str, int]) -> str:
    return ", ".join(f"{name} port {port}" for name, port in ports.items())


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _become_subreaper() -> None:
    """Orphaned descendants get re-parented to us instead of init, so we can end them."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def terminate_processes(procs: list, *, grace_s: float) -> None:
    """SIGTERM each psutil process, SIGKILL those still alive after ``grace_s``."""
    import psutil

    alive = []
    for proc in procs:
        try:
            proc.terminate()
            alive.append(proc)
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=grace_s)


def _live_recorded_processes(state: dict) -> list:
    """psutil handles of the processes a state file lists that still run (same pid AND start time)."""
    import psutil

    found = []
    for process in state.get("processes", {}).values():
        pid, created = process.get("pid"), process.get("create_time")
        candidates = [(pid, created)] if pid else []
        candidates += [(d, None) for d in process.get("descendants", [])]
        for candidate, created_at in candidates:
            try:
                handle = psutil.Process(candidate)
                if handle.status() == psutil.STATUS_ZOMBIE:
                    continue
                if created_at is not None and abs(handle.create_time() - created_at) > 1:
                    continue  # pid reused by an unrelated process
                if created_at is None and created is not None and handle.create_time() < created - 1:
                    continue  # older than the leader: not one of its descendants
                found.append(handle)
            except psutil.Error:
                pass
    return found


# --------------------------------------------------------------------------- state readers (zk0 status, stop)


def read_state(paths: Paths, service: str) -> dict | None:
    """The service's state file with ``supervisor_alive`` added; None when it never ran."""
    path = ServiceFiles.of(paths, service).state
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    state["supervisor_alive"] = _supervisor_alive(state)
    if not state["supervisor_alive"] and state.get("state") not in ("stopped", "failed"):
        state["state"] = "stopped"
        state["reason"] = "its supervisor is no longer running"
    return state


def service_names(paths: Paths) -> list[str]:
    base = paths.state_dir / "services"
    if not base.is_dir():
        return []
    return sorted(p.name.removesuffix(".json") for p in base.glob("*.json") if not p.name.endswith(".spec.json"))


def list_states(paths: Paths) -> list[dict]:
    return [s for s in (read_state(paths, name) for name in service_names(paths)) if s is not None]


def _supervisor_alive(state: dict) -> bool:
    import psutil

    supervisor = state.get("supervisor") or {}
    pid, created = supervisor.get("pid"), supervisor.get("create_time")
    if not pid:
        return False
    try:
        handle = psutil.Process(pid)
        same = created is None or abs(handle.create_time() - created) < 1
        return same and handle.status() != psutil.STATUS_ZOMBIE  # a zombie waits for its parent to reap it
    except psutil.Error:
        return False


def stop_service(paths: Paths, service: str, *, timeout_s: float = 40.0) -> dict:
    """Stop a service's supervisor (and with it every process it started). Idempotent."""
    import psutil

    state = read_state(paths, service)
    if state is None:
        raise bad_input(f"{service} is not known here", hint="see `zk0 status` for what runs")
    result = {"service": service, "was": state.get("state"), "supervisor_pid": None, "killed": []}
    if state["supervisor_alive"]:
        pid = state["supervisor"]["pid"]
        result["supervisor_pid"] = pid
        handle = psutil.Process(pid)
        handle.send_signal(signal.SIGTERM)
        try:
            handle.wait(timeout=timeout_s)
        except psutil.TimeoutExpired:
            handle.kill()
            result["forced"] = True
    leftovers = _live_recorded_processes(read_state(paths, service) or state)
    if leftovers:
        result["killed"] = [p.pid for p in leftovers]
        terminate_processes(leftovers, grace_s=5.0)
    return result


# --------------------------------------------------------------------------- reading logs (zk0 logs)


def log_files(paths: Paths, service: str) -> list[Path]:
    """The service's log files, oldest first (``.3``, ``.2``, ``.1``, then the live one)."""
    live = ServiceFiles.of(paths, service).log
    rotated = sorted(live.parent.glob(live.name + ".*"), key=lambda p: -_rotation_index(p))
    return [p for p in rotated if _rotation_index(p) > 0] + ([live] if live.exists() else [])


def _rotation_index(path: Path) -> int:
    suffix = path.name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def read_log(paths: Paths, service: str, *, tail: int | None = None, since: dt.datetime | None = None) -> list[str]:
    """Lines of the service's log: the last ``tail`` ones, or those stamped at or after ``since``."""
    files = log_files(paths, service)
    if since is None:
        return _tail(files, tail if tail is not None else 50)
    cutoff = since.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    lines: list[str] = []
    keep = False
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                stamp = line[:24]
                if stamp[:4].isdigit() and stamp.endswith("Z"):
                    keep = stamp >= cutoff  # ISO-8601 UTC stamps sort as text
                if keep:
                    lines.append(line.rstrip("\n"))
    return lines[-tail:] if tail else lines


def _tail(files: list[Path], count: int) -> list[str]:
    """The last ``count`` lines over the files, reading each from its end in blocks."""
    collected: list[str] = []
    for path in reversed(files):
        need = count - len(collected)
        if need <= 0:
            break
        collected = _tail_one(path, need) + collected
    return collected[-count:] if count else []


def _tail_one(path: Path, count: int, block: int = 65536) -> list[str]:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        data = b""
        while end > 0 and data.count(b"\n") <= count:
            start = max(0, end - block)
            fh.seek(start)
            data = fh.read(end - start) + data
            end = start
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]


def follow_log(
    paths: Paths,
    service: str,
    emit: Callable[[str], None],
    *,
    poll_s: float = 0.2,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Print new lines as they are written, across rotations, until ``stop()`` or Ctrl-C."""
    path = ServiceFiles.of(paths, service).log
    fh, inode = _open_at_end(path)
    pending = ""
    while not stop():
        chunk = fh.read() if fh else ""
        if chunk:
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                emit(line)
            continue
        try:
            current = path.stat().st_ino
        except FileNotFoundError:
            current = None
        if current != inode:  # rotated (or created): read the new file from its start
            if fh:
                fh.close()
            fh, inode = (open(path, encoding="utf-8", errors="replace"), current) if current else (None, None)
        time.sleep(poll_s)
    if fh:
        fh.close()


def _open_at_end(path: Path):
    try:
        fh = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None, None
    fh.seek(0, os.SEEK_END)
    return fh, os.fstat(fh.fileno()).st_ino


def parse_since(text: str) -> dt.datetime:
    """``30s``, ``10m``, ``2h``, ``1d`` ago, or an ISO-8601 time (local time when it has no zone)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if match:
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise bad_input(
            f"--since '{text}' is not a duration or a time", hint="e.g. --since 10m, 2h, 1d or 2026-01-31T12:00"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


# --------------------------------------------------------------------------- entry points for commands


def run_foreground(paths: Paths, spec: ServiceSpec, on_event: EventSink) -> None:
    """Supervise in this process until Ctrl-C (returns) or failure (raises Zk0Error with the reason)."""
    _prepare(paths, spec)
    supervisor = Supervisor(paths, spec, detached=False, on_event=on_event)
    if supervisor.run() != 0:
        raise failure_error(spec.name, supervisor.failed_reason, supervisor.failed_lines, supervisor.files.log)


def start_detached(
    paths: Paths, spec: ServiceSpec, *, wait_s: float = 120.0, on_progress: Callable[[dict], None] | None = None
) -> dict:
    """Start a supervisor in a new session (it survives the terminal); return once the service is healthy."""
    files = ServiceFiles.of(paths, spec.name)
    holder = lock_holder(paths, spec.name)
    if holder:
        raise already_running(spec.name, holder)
    _prepare(paths, spec)
    atomic_write_json(files.spec, spec.to_dict())
    files.supervisor_out.parent.mkdir(parents=True, exist_ok=True)
    with open(files.supervisor_out, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "zk0cli.services.supervisor", "run", str(files.spec), paths.to_json()],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=paths.state_dir,  # never pin the caller's directory
        )
    deadline = time.monotonic() + wait_s
    last = None
    while time.monotonic() < deadline:
        code = popen.poll()
        state = read_state(paths, spec.name)
        fresh = state is not None and state.get("supervisor", {}).get("pid") == popen.pid
        if fresh and state != last and on_progress is not None:
            on_progress(state)
        last = state
        if fresh and state["state"] == "healthy":
            return state
        if code is not None:
            if fresh and state["state"] == "failed":
                raise failure_error(spec.name, state["reason"], state.get("last_log_lines", []), files.log)
            if code == ExitCode.BAD_INPUT:
                raise already_running(spec.name, lock_holder(paths, spec.name))
            tail = _tail_lines(files.supervisor_out, 5)
            raise Zk0Error(
                f"the {spec.name} supervisor exited with code {code}: {tail[-1] if tail else 'no output'}",
                hint=f"see {files.supervisor_out} and `zk0 logs {_logs_target(spec.name)}`",
            )
        time.sleep(0.2)
    raise unreachable(
        f"{spec.name} did not become healthy within {wait_s:g} s (it keeps trying in the background)",
        hint=f"watch it with `zk0 logs {_logs_target(spec.name)} -f`, or `{stop_command(spec.name)}`",
    )


def systemd_unit(service: str, argv: list[str], description: str) -> str:
    """A systemd user unit running ``zk0 ARGV`` in the foreground; its supervisor does the restarts.

    KillMode=mixed: systemd sends SIGTERM to the supervisor only (which stops its tree in order),
    and SIGKILL to whatever is left after TimeoutStopSec.
    """
    import shlex

    command = " ".join(shlex.quote(part) for part in [sys.executable, "-m", "zk0cli", *argv])
    home = os.environ.get("ZK0_HOME")
    environment = f"Environment=ZK0_HOME={shlex.quote(home)}\n" if home else ""
    return (
        f"# ~/.config/systemd/user/zk0-{service}.service, then: systemctl --user daemon-reload && "
        f"systemctl --user enable --now zk0-{service}\n"
        f"[Unit]\nDescription={description}\nAfter=network-online.target\n\n"
        f"[Service]\nType=simple\n{environment}WorkingDirectory={os.getcwd()}\nExecStart={command}\n"
        f"Restart=on-failure\nRestartSec=10\n"
        f"KillMode=mixed\nTimeoutStopSec=30\n\n[Install]\nWantedBy=default.target\n"
    )


def service_argv(argv: list[str], *, drop: tuple[str, ...] = ("--install-service", "--detach", "--json")) -> list[str]:
    """The current command line without the flags that make no sense inside a unit."""
    return [arg for arg in argv if arg not in drop]


def failure_error(service: str, reason: str, lines: list[str], log: Path) -> Zk0Error:
    last = f" Last output: {lines[-1]}" if lines else ""
    return Zk0Error(
        f"{service} failed: {reason}.{last}", hint=f"full log: `zk0 logs {_logs_target(service)} --tail 50` ({log})"
    )


def _logs_target(service: str) -> str:
    return "server" if service == "server" else f"node {service.removeprefix('node-')}"


def _prepare(paths: Paths, spec: ServiceSpec) -> None:
    check_service_name(spec.name, what="service name")
    for directory in (paths.state_dir / "services", paths.log_dir):
        directory.mkdir(parents=True, exist_ok=True)


def _tail_lines(path: Path, count: int) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-count:]
    except OSError:
        return []


# --------------------------------------------------------------------------- process entry points


def _preload_main(entry: str, argv: list[str]) -> int:
    """Warm spare: import the entry point now, run it when the supervisor writes ``go [JSON]``.

    The optional JSON carries a restart hook and the process's last watch events; the hook runs
    first (in this process, where Flower is already imported) and may only log what it did.
    """
    target = _import(entry)
    command, _, payload = sys.stdin.readline().strip().partition(" ")
    if command != "go":
        return 0
    if payload:
        order = json.loads(payload)
        try:
            _import(order["hook"])(list(argv), order.get("events", {}))
        except Exception as exc:  # noqa: BLE001 - a failed hook must not keep the process from starting
            print(f"zk0: restart hook {order['hook']} failed: {type(exc).__name__}: {exc}", flush=True)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.argv = list(argv)
    result = target()
    return result if isinstance(result, int) else 0


def _import(entry: str):
    module, _, function = entry.partition(":")
    return getattr(importlib.import_module(module), function)


def _run_spec_main(spec_path: str, paths_json: str) -> int:
    """A detached supervisor: ``python -m zk0cli.services.supervisor run SPEC.json PATHS_JSON``.

    The caller's Paths travel with the command, so the supervisor writes its state where the
    caller will look for it, whatever the environment says.
    """
    spec = ServiceSpec.from_dict(json.loads(Path(spec_path).read_text(encoding="utf-8")))
    paths = Paths.from_json(paths_json)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return Supervisor(paths, spec, detached=True).run()
    except Zk0Error as error:
        print(f"Error: {error.message}", file=sys.stderr)
        return int(error.code)


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "preload" and "--" in argv:
        split = argv.index("--")
        return _preload_main(argv[1], argv[split + 1 :])
    if len(argv) == 3 and argv[0] == "run":
        return _run_spec_main(argv[1], argv[2])
    print(
        "usage: python -m zk0cli.services.supervisor run SPEC.json PATHS_JSON | preload MODULE:FUNC -- ARGV...",
        file=sys.stderr,
    )
    return int(ExitCode.BAD_INPUT)
