"""The processes zk0 starts: their one environment, and how their trees are found and stopped.

Each supervised process leads its own session and process group, but process groups alone are not
enough: Flower's SuperLink starts its SuperExec in a new session. So stopping also walks the tree
with psutil, and the supervisor makes itself a child subreaper (Linux), so descendants of a process
that died (kill -9) are re-parented to it and ended too: nothing is orphaned.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psutil

PR_SET_CHILD_SUBREAPER = 36
ORPHAN_KILL_GRACE_S = 3.0


def child_env(flwr_home: Path | str | None = None, **extra: str) -> dict[str, str]:
    """The environment of every process zk0 starts (supervised services, the simulation SuperLink,
    flwr CLI calls): the venv's bin/ first on PATH, zk0's own FLWR_HOME, no Flower telemetry or
    update check, unbuffered Python output (its lines reach the logs as they happen), no colour codes."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1", NO_COLOR="1")
    if flwr_home:
        env["FLWR_HOME"] = str(flwr_home)
    env.update(extra)
    return env


def create_time(pid: int) -> float | None:
    """psutil's start time of ``pid``: with the pid, it names one process even after the pid is reused."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def become_subreaper() -> None:
    """Orphaned descendants get re-parented to us instead of init, so we can end them."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def signal_group(popen: subprocess.Popen, signum: int) -> None:
    """Signal the process group ``popen`` leads, unless it has exited."""
    if popen.poll() is not None:
        return
    try:
        os.killpg(popen.pid, signum)
    except ProcessLookupError:
        pass


def reap_children() -> None:
    """Collect the exit status of every child that has exited, without waiting."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def descendants(pid: int) -> list[int]:
    """Pids of the whole tree under ``pid`` now; none when it is gone."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def handles(pids: list[int]) -> dict[int, psutil.Process]:
    """psutil handles of those ``pids`` that still run: they keep naming the same processes later."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            found[pid] = psutil.Process(pid)
        except psutil.Error:
            pass
    return found


def end_tree(tree: dict[int, psutil.Process]) -> None:
    """End ``tree`` and every descendant of this process, and reap them."""
    import psutil

    try:
        for child in psutil.Process().children(recursive=True):
            tree.setdefault(child.pid, child)
    except psutil.Error:
        pass
    terminate_processes(list(tree.values()), grace_s=3.0)
    reap_children()


class OrphanReaper:
    """Processes that outlived the supervised process they came from: SIGTERM, SIGKILL after a grace
    period, and reaped once they exit (as a subreaper, we are their parent now)."""

    def __init__(self) -> None:
        self.terminated: dict[int, float] = {}  # pid -> when SIGTERM was sent

    def end(self, pids: list[int], *, tracked: set[int]) -> None:
        """SIGTERM the processes among ``pids`` that still run and are not supervised ones."""
        import psutil

        for pid in pids:
            try:
                child = psutil.Process(pid)
                if child.pid not in tracked and child.status() != psutil.STATUS_ZOMBIE:
                    child.terminate()
                    self.terminated.setdefault(pid, time.monotonic())
            except psutil.Error:
                pass

    def sweep(self, *, tracked: set[int]) -> None:
        """Our children that are not supervised ones: reap the exited, SIGTERM the new, SIGKILL the late."""
        import psutil

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
                    self.terminated.pop(child.pid, None)
                    continue
                sent = self.terminated.get(child.pid)
                if sent is None:
                    child.terminate()
                    self.terminated[child.pid] = now
                elif now - sent > ORPHAN_KILL_GRACE_S:
                    child.kill()
            except (psutil.Error, ChildProcessError):
                self.terminated.pop(child.pid, None)


def terminate_processes(procs: list[psutil.Process], *, grace_s: float) -> None:
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


def live_recorded_processes(state: dict[str, Any]) -> list[psutil.Process]:
    """psutil handles of the processes a state file lists that still run (same pid AND start time)."""
    import psutil

    found = []
    for process in state.get("processes", {}).values():
        pid, created = process.get("pid"), process.get("create_time")
        candidates: list[tuple[int, float | None]] = [(pid, created)] if pid else []
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
