"""One supervisor per service: an flock on ``<service>.lock`` that records its holder's pid."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from zk0cli.core.errors import Zk0Error, bad_input
from zk0cli.core.paths import Paths
from zk0cli.services.supervisor.spec import ServiceFiles


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
