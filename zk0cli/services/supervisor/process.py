"""What the supervisor knows about one supervised process: the live one, its warm spare, its health and events."""

from __future__ import annotations

import collections
import re
import subprocess

from zk0cli.core.timefmt import utc_now_iso
from zk0cli.services.supervisor.health import HttpCheck
from zk0cli.services.supervisor.spec import HealthState, ProcessSpec, ProcessState, State, WatchEvent, state_time

LAST_LINES = 12


class SupervisedProcess:
    """Runtime bookkeeping for one ProcessSpec; the Supervisor acts on it."""

    def __init__(self, spec: ProcessSpec, env: dict[str, str]):
        self.spec = spec
        self.env = env
        self.popen: subprocess.Popen | None = None
        self.spare: subprocess.Popen | None = None
        self.state: State = "starting"
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
        self.health: HealthState = {
            "url": spec.health_url,
            "ok": False,
            "detail": "not checked yet",
            "checked_at": None,
        }
        self.next_health_mono = 0.0
        self.unhealthy_since: float | None = None
        self.kill_reason = ""  # set when the supervisor itself killed it (start timeout, unhealthy)
        self.answered_since_start = False  # its health check passed once since the last start
        self.fatal_reason = ""
        self.descendants: list[int] = []
        self.events: dict[str, WatchEvent] = {}
        self.seen_since_start: set[str] = set()
        self.was_ready = False  # became healthy once under this supervisor: later refusals may be transient
        self.last_lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self._watch = {name: re.compile(rx) for name, rx in spec.watch.items()}
        self._unlogged = re.compile("|".join(f"(?:{rx})" for rx in spec.unlogged)) if spec.unlogged else None
        self._fatal = [(re.compile(rx), reason) for rx, reason in spec.fatal.items()]
        self.http = HttpCheck(spec.health_url, spec.health_ca, spec.health_ok_status) if spec.health_url else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    # -- output
    def unlogged(self, line: str) -> bool:
        """A routine line the log leaves out (polling that would bury everything else)."""
        return self._unlogged is not None and self._unlogged.search(line) is not None

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
                previous = self.events.get(name)
                count = (previous.get("count", 0) if previous and name not in fresh else 0) + 1
                self.events[name] = {
                    "at": utc_now_iso(),
                    "line": line[:500],
                    "groups": match.groupdict(),
                    "count": count,
                }
        for rx, reason in self._fatal:
            if rx.search(line) and not self.was_ready:
                self.fatal_reason = reason
        return fresh

    def ready(self) -> bool:
        return not self.spec.ready_event or self.spec.ready_event in self.seen_since_start

    # -- health
    def check_health(self) -> bool:
        ok, detail = self.http.check() if self.http else (True, "running")
        self.health = {"url": self.spec.health_url, "ok": ok, "detail": detail, "checked_at": utc_now_iso()}
        return ok

    def close(self) -> None:
        if self.http is not None:
            self.http.close()

    def to_state(self) -> ProcessState:
        pid = self.popen.pid if self.popen is not None and self.running() else None
        return {
            "state": self.state,
            "reason": self.reason,
            "pid": pid,
            "pgid": pid,  # each process leads its own session and group
            "create_time": self.create_time if pid else None,
            "started_at": state_time(self.started_wall),
            "restarts": max(self.restarts, 0),
            "quick_failures": self.quick_failures,
            "last_exit_code": self.last_exit_code,
            "last_exit_at": state_time(self.last_exit_wall),
            "next_restart_at": state_time(self.next_restart_wall),
            "ports": self.spec.ports,
            "health": self.health,
            "descendants": self.descendants if pid else [],
            "events": self.events,
        }
