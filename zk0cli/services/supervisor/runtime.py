"""The supervisor's event loop: start, watch, restart and stop the processes of one service."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from zk0cli.core.errors import env_not_ready
from zk0cli.core.files import atomic_write_json
from zk0cli.core.paths import Paths
from zk0cli.core.timefmt import iso_from_epoch, utc_now_iso
from zk0cli.services.supervisor.health import Probe
from zk0cli.services.supervisor.lock import ServiceLock
from zk0cli.services.supervisor.logfile import RotatingLog
from zk0cli.services.supervisor.output import OutputPump
from zk0cli.services.supervisor.process import SupervisedProcess
from zk0cli.services.supervisor.proctree import (
    OrphanReaper,
    become_subreaper,
    child_env,
    create_time,
    descendants,
    end_tree,
    handles,
    live_recorded_processes,
    signal_group,
    terminate_processes,
)
from zk0cli.services.supervisor.spec import STATE_SCHEMA, ServiceFiles, ServiceSpec, ServiceState, State
from zk0cli.services.supervisor.state import read_state

LOOP_TICK_S = 0.05
HEARTBEAT_S = 5.0
TREE_SNAPSHOT_S = 2.0
HEALTH_PERIOD_STARTING_S = 0.1
HEALTH_PERIOD_HEALTHY_S = 2.0

EventSink = Callable[[str, str], None]  # (level: "info"|"warning"|"error", message)


class Supervisor:
    """Runs one ServiceSpec until stopped or failed. Use ``run_foreground``/``start_detached``."""

    def __init__(self, paths: Paths, spec: ServiceSpec, *, detached: bool, on_event: EventSink | None = None):
        self.paths = paths
        self.spec = spec
        self.files = ServiceFiles.of(paths, spec.name)
        self.detached = detached
        self.on_event = on_event or (lambda *_: None)
        self.processes = [SupervisedProcess(p, child_env(p.flwr_home, **p.env)) for p in spec.processes]
        recorded = (read_state(paths, spec.name) or {}).get("processes", {})
        for proc in self.processes:  # what the last run saw (e.g. a node id) feeds restart hooks
            proc.events = dict(recorded.get(proc.spec.name, {}).get("events", {}))
        self.probes = [Probe(p) for p in spec.probes]
        self.output = OutputPump(self._line)
        self.log: RotatingLog | None = None
        self.stop_requested = False
        self.stop_signal = ""
        self.failed_reason = ""
        self.failed_lines: list[str] = []
        self.started_wall = time.time()
        self.orphans = OrphanReaper()
        self._next_heartbeat = 0.0
        self._next_snapshot = 0.0
        self._state_dirty = True
        self._reported_state: State | None = None

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
            become_subreaper()
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous_handlers[signum] = signal.signal(signum, self._request_stop)
            names = ", ".join(p.spec.name for p in self.processes)
            self._event("info", f"supervisor pid {os.getpid()} starting {self.spec.name} ({names})")
            for proc in self.processes:
                self._start(proc)
            self._loop()
        finally:
            self._stop_all()
            self._write_state(final=True)
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            for proc in self.processes:
                proc.close()
            for probe in self.probes:
                probe.http.close()
            if self.log is not None:
                self.log.close()
            lock.release()
        return 1 if self.failed_reason else 0

    # -- main loop
    def _loop(self) -> None:
        while not self.stop_requested and not self.failed_reason:
            self.output.pump(LOOP_TICK_S)
            now = time.monotonic()
            for proc in self.processes:
                self._tend(proc, now)
            for probe in self.probes:
                if now >= probe.next_mono:
                    self._probe(probe, now)
            if now >= self._next_snapshot:
                self._snapshot_trees()
                self.orphans.sweep(tracked=self._tracked_pids())
                self._next_snapshot = now + TREE_SNAPSHOT_S
            self._write_state()

    def _tend(self, proc: SupervisedProcess, now: float) -> None:
        if proc.popen is not None and proc.popen.poll() is not None:
            self._on_exit(proc, proc.popen.returncode)
        if proc.state == "restarting" and proc.next_restart_mono is not None and now >= proc.next_restart_mono:
            self._start(proc)
        if proc.popen is None or not proc.running():
            return
        if now >= proc.next_health_mono:
            self._health(proc, now)
        self._kill_if_start_timed_out(proc, proc.popen, now)
        self._keep_a_spare(proc)

    def _kill_if_start_timed_out(self, proc: SupervisedProcess, popen: subprocess.Popen, now: float) -> None:
        timeout_s = self.spec.restart.start_timeout_s
        timed_out = now - proc.started_mono > timeout_s
        if proc.state == "starting" and not proc.answered_since_start and timed_out and not proc.kill_reason:
            proc.kill_reason = f"not healthy after {timeout_s:g} s ({proc.health['detail']})"
            self._event("warning", f"{proc.spec.name}: {proc.kill_reason}; restarting it")
            signal_group(popen, signal.SIGKILL)

    def _keep_a_spare(self, proc: SupervisedProcess) -> None:
        """A spare that died is replaced, but only once the whole service is healthy (spares cost a CPU burst)."""
        if proc.spare is not None and proc.spare.poll() is not None:
            self._discard(proc.spare)
            proc.spare = None
        if proc.spare is None and proc.spec.preload and proc.state == "healthy" and self._all_healthy():
            proc.spare = self._spawn(proc, spare=True)

    def _health(self, proc: SupervisedProcess, now: float) -> None:
        was_ok = proc.health["ok"]
        ok = proc.check_health()
        if ok:
            self._health_answered(proc)
        elif proc.state == "healthy":
            self._health_failing(proc, now, was_ok=was_ok)
        if was_ok != ok:
            self._state_dirty = True
        period = HEALTH_PERIOD_HEALTHY_S if proc.state == "healthy" else HEALTH_PERIOD_STARTING_S
        proc.next_health_mono = now + period

    def _health_answered(self, proc: SupervisedProcess) -> None:
        proc.unhealthy_since = None
        proc.answered_since_start = True
        if proc.state != "starting":
            return
        if not proc.ready():
            proc.reason = f"running; waiting for: {proc.spec.ready_event}"
            return
        proc.state, proc.reason = "healthy", ""
        proc.was_ready = True
        ports = ", ".join(f"{name} port {port}" for name, port in proc.spec.ports.items())
        pid = proc.popen.pid if proc.popen is not None else None
        self._event(
            "info", f"{proc.spec.name} healthy (pid {pid}{', ' + ports if ports else ''})", detail=proc.health["detail"]
        )
        self._state_dirty = True

    def _health_failing(self, proc: SupervisedProcess, now: float, *, was_ok: bool) -> None:
        """A healthy process that fails its checks for ``unhealthy_restart_s`` is restarted."""
        proc.unhealthy_since = proc.unhealthy_since or now
        if was_ok:
            self._event("warning", f"{proc.spec.name} health check failing: {proc.health['detail']}")
        limit_s = self.spec.restart.unhealthy_restart_s
        if now - proc.unhealthy_since > limit_s and not proc.kill_reason and proc.popen is not None:
            proc.kill_reason = f"health check failing for {limit_s:g} s ({proc.health['detail']})"
            self._event("warning", f"{proc.spec.name}: {proc.kill_reason}; restarting it")
            signal_group(proc.popen, signal.SIGTERM)

    def _probe(self, probe: Probe, now: float) -> None:
        ok, detail = probe.http.check()
        probe.checked_at, probe.next_mono = utc_now_iso(), now + probe.spec.period_s
        name, period = probe.spec.name, probe.spec.period_s
        if ok and probe.ok is False:
            down_s = time.time() - (probe.since or time.time())
            self._event("info", f"{name} reachable again after {down_s:.0f} s ({detail})")
        elif not ok and probe.ok is not False:
            self._event("warning", f"{name} unreachable at {probe.spec.url}: {detail}; checking every {period:g} s")
        elif not ok:
            message = f"{name} still unreachable: {detail} (check {probe.failures + 1}, next in {period:g} s)"
            self._event("info", message, quiet=True)
        if ok != probe.ok:
            probe.since = time.time()
        self._state_dirty = True  # every check: failure counts and next-check times are part of the state
        probe.failures = 0 if ok else probe.failures + 1
        probe.ok, probe.detail = ok, detail

    def _all_healthy(self) -> bool:
        return all(p.state == "healthy" for p in self.processes)

    # -- starting and exits
    def _start(self, proc: SupervisedProcess) -> None:
        go = b"go\n"
        if proc.spec.restart_hook and proc.events:
            go = b"go " + json.dumps({"hook": proc.spec.restart_hook, "events": proc.events}).encode() + b"\n"
        popen = self._hand_over_to_spare(proc, go) or self._spawn_and_go(proc, go)
        proc.popen = popen
        proc.restarts += 1
        proc.state, proc.reason = "starting", ""
        proc.started_wall, proc.started_mono = time.time(), time.monotonic()
        proc.create_time = create_time(popen.pid)
        proc.next_restart_mono = proc.next_restart_wall = None
        proc.next_health_mono = 0.0
        proc.health = {**proc.health, "ok": False, "detail": "starting"}
        proc.kill_reason = proc.fatal_reason = ""
        proc.answered_since_start = False
        proc.seen_since_start = set()
        attempt = f" (restart {proc.restarts})" if proc.restarts else ""
        self._event("info", f"started {proc.spec.name} (pid {popen.pid}){attempt}", detail=" ".join(proc.spec.argv))
        self._state_dirty = True

    def _hand_over_to_spare(self, proc: SupervisedProcess, go: bytes) -> subprocess.Popen | None:
        """The warm spare, told to go; None when there is none (or it died just now)."""
        spare = proc.spare
        if spare is None or spare.poll() is not None:
            return None
        proc.spare = None
        try:
            self._go(spare, go)
        except OSError:
            self._discard(spare)
            return None
        return spare

    def _spawn_and_go(self, proc: SupervisedProcess, go: bytes) -> subprocess.Popen:
        popen = self._spawn(proc, spare=False)
        self._go(popen, go)
        return popen

    @staticmethod
    def _go(popen: subprocess.Popen, line: bytes) -> None:
        if popen.stdin is not None:
            popen.stdin.write(line)
            popen.stdin.close()

    def _spawn(self, proc: SupervisedProcess, *, spare: bool) -> subprocess.Popen:
        spec = proc.spec
        argv = self._argv(proc)
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
        assert popen.stdout is not None  # stdout=PIPE
        self.output.add(popen.stdout, proc)
        if spare:
            self._event("info", f"{spec.name}: warm spare pid {popen.pid} ready for the next restart", quiet=True)
        return popen

    @staticmethod
    def _argv(proc: SupervisedProcess) -> list[str]:
        spec = proc.spec
        if spec.preload:  # argv[0] is only the program name the entry point sees
            return [sys.executable, "-m", "zk0cli.services.supervisor", "preload", spec.preload, "--", *spec.argv]
        executable = shutil.which(spec.argv[0], path=proc.env["PATH"])
        if executable is None:
            raise env_not_ready(
                f"{spec.argv[0]} not found on PATH", hint="reinstall zk0 into its venv (pip install -e .)"
            )
        return [executable, *spec.argv[1:]]

    def _on_exit(self, proc: SupervisedProcess, code: int) -> None:
        self.output.pump(0)  # log what it printed last
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
            self._give_up(proc, why)
        else:
            self._schedule_restart(proc, why, ran_s)

    def _give_up(self, proc: SupervisedProcess, why: str) -> None:
        reason = proc.fatal_reason or (
            f"{proc.spec.name} {why}, {proc.quick_failures} times in a row within "
            f"{self.spec.restart.quick_exit_s:g} s of starting"
        )
        proc.state, proc.reason = "failed", reason
        self.failed_reason = reason
        self.failed_lines = list(proc.last_lines)
        self._event("error", f"giving up: {reason}")
        self._state_dirty = True

    def _schedule_restart(self, proc: SupervisedProcess, why: str, ran_s: float) -> None:
        """ANY exit is restarted, exit 0 included (a SuperNode exits 0 when an in-memory SuperLink restarts
        under it); after quick failures, with a backoff that doubles each time."""
        policy = self.spec.restart
        delay = 0.0
        if proc.quick_failures:
            delay = min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** (proc.quick_failures - 1))
        proc.state = "restarting"
        proc.reason = f"{why} after {ran_s:.1f} s; restart attempt {proc.restarts + 1} in {delay:.1f} s"
        proc.next_restart_mono = time.monotonic() + delay
        proc.next_restart_wall = time.time() + delay
        self._event("warning", f"{proc.spec.name} {proc.reason}")
        self._state_dirty = True

    # -- output
    def _line(self, proc: SupervisedProcess, text: str) -> None:
        if not text.strip():
            return
        fresh = proc.on_line(text)
        if self.log is not None and not proc.unlogged(text):
            self.log.write(proc.spec.name, text)
        for name in fresh:
            groups = proc.events[name]["groups"]
            detail = f" ({', '.join(f'{k}={v}' for k, v in groups.items())})" if groups else ""
            self._event("info", f"{proc.spec.name}: {name}{detail}")
            self._state_dirty = True

    # -- trees and orphans
    def _snapshot_trees(self) -> None:
        for proc in self.processes:
            if proc.popen is not None and proc.running():
                proc.descendants = descendants(proc.popen.pid)

    def _tracked_pids(self) -> set[int]:
        return {popen.pid for proc in self.processes for popen in (proc.popen, proc.spare) if popen is not None}

    def _collect_orphans(self, proc: SupervisedProcess) -> None:
        """After a process died, its surviving descendants are orphans: terminate them now."""
        self.orphans.end(proc.descendants, tracked=self._tracked_pids())
        proc.descendants = []
        self.orphans.sweep(tracked=self._tracked_pids())

    # -- stopping
    def _stop_all(self) -> None:
        """SIGTERM each process group (last started first), SIGKILL after the grace period, then end every
        descendant still alive: Flower's SuperLink starts its SuperExec in a session of its own."""
        if self.stop_signal:
            self._event("info", f"received {self.stop_signal}: stopping {self.spec.name}")
        self._snapshot_trees()
        tree = handles([pid for proc in self.processes for pid in proc.descendants])  # before their parents exit
        self._stop_leaders()
        for proc in self.processes:
            if proc.popen is not None:
                proc.last_exit_code, proc.last_exit_wall = proc.popen.returncode, time.time()
                proc.popen = None
            if proc.state != "failed":
                proc.state, proc.reason = "stopped", ""
        end_tree(tree)
        self.output.pump(0)
        self.output.close()
        failure = f" after a failure: {self.failed_reason}" if self.failed_reason else ""
        self._event("info", f"{self.spec.name} stopped{failure}")

    def _stop_leaders(self) -> None:
        leaders: list[tuple[SupervisedProcess, subprocess.Popen]] = []
        for proc in reversed(self.processes):
            if proc.spare is not None:
                self._discard(proc.spare)
                proc.spare = None
            if proc.popen is not None and proc.running():
                signal_group(proc.popen, signal.SIGTERM)
                leaders.append((proc, proc.popen))
        grace_s = self.spec.restart.stop_grace_s
        deadline = time.monotonic() + grace_s
        while any(popen.poll() is None for _, popen in leaders) and time.monotonic() < deadline:
            self.output.pump(LOOP_TICK_S)
        for proc, popen in leaders:
            if popen.poll() is None:
                self._event("warning", f"{proc.spec.name} did not stop within {grace_s:g} s: killing it")
                signal_group(popen, signal.SIGKILL)
                popen.wait()

    def _kill_leftovers(self) -> None:
        """Processes a supervisor that died (kill -9) left behind, as its last state file lists them."""
        previous = read_state(self.paths, self.spec.name)
        if not previous:
            return
        leftovers = live_recorded_processes(previous)
        if leftovers:
            pids = [p.pid for p in leftovers]
            self._event("warning", f"stopping {len(leftovers)} process(es) left by the previous supervisor: {pids}")
            terminate_processes(leftovers, grace_s=5.0)

    def _discard(self, popen: subprocess.Popen) -> None:
        try:
            if popen.stdin is not None and not popen.stdin.closed:
                popen.stdin.close()  # a spare waiting for "go" exits on end of input
        except OSError:
            pass
        signal_group(popen, signal.SIGTERM)
        try:
            popen.wait(timeout=3)
        except subprocess.TimeoutExpired:
            signal_group(popen, signal.SIGKILL)
            popen.wait()

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002 - signal handler signature
        # Only set flags here: printing from a signal handler could re-enter the console.
        self.stop_requested = True
        self.stop_signal = self.stop_signal or signal.Signals(signum).name

    # -- state and events
    def _state(self) -> State:
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
        document = self._state_document()
        atomic_write_json(self.files.state, document)
        self._state_dirty = False
        self._next_heartbeat = now + HEARTBEAT_S
        if document["state"] != self._reported_state:
            self._reported_state = document["state"]
            if document["state"] == "healthy":
                self._event("info", f"{self.spec.name} is healthy")

    def _state_document(self) -> ServiceState:
        reasons = [f"{p.spec.name}: {p.reason}" for p in self.processes if p.reason]
        return {
            "schema": STATE_SCHEMA,
            "service": self.spec.name,
            "kind": self.spec.kind,
            "state": self._state(),
            "reason": self.failed_reason or "; ".join(reasons),
            "last_log_lines": self.failed_lines,
            "supervisor": {
                "pid": os.getpid(),
                "started_at": iso_from_epoch(self.started_wall),
                "create_time": create_time(os.getpid()),
                "detached": self.detached,
            },
            "updated_at": utc_now_iso(),
            "log_file": str(self.files.log),
            "info": self.spec.info,
            "processes": {p.spec.name: p.to_state() for p in self.processes},
            "probes": {p.spec.name: p.to_state() for p in self.probes},
        }

    def _event(self, level: str, message: str, *, quiet: bool = False, detail: str = "") -> None:
        """Log a supervisor event (with ``detail`` in the log only) and, unless quiet, report it."""
        if self.log is not None:
            self.log.write("zk0", f"{message}: {detail}" if detail else message)
        if not quiet:
            self.on_event(level, message)
