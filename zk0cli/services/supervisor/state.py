"""Reading a service's state file from outside its supervisor (``zk0 status``, ``zk0 stop``), and stopping it."""

from __future__ import annotations

import signal
from typing import Any

from zk0cli.core.errors import bad_input
from zk0cli.core.files import read_json
from zk0cli.core.paths import Paths
from zk0cli.services.supervisor.proctree import live_recorded_processes, terminate_processes
from zk0cli.services.supervisor.spec import ServiceFiles


def read_state(paths: Paths, service: str) -> dict[str, Any] | None:
    """The service's state file (a ``spec.ServiceState``, as some supervisor, maybe an older one, wrote it)
    with ``supervisor_alive`` added; None when it never ran (or is unreadable)."""
    state: dict[str, Any] | None = read_json(ServiceFiles.of(paths, service).state, default=None)
    if state is None:
        return None
    state["supervisor_alive"] = supervisor_alive(state)
    if not state["supervisor_alive"] and state.get("state") not in ("stopped", "failed"):
        state["state"] = "stopped"
        state["reason"] = "its supervisor is no longer running"
    return state


def service_names(paths: Paths) -> list[str]:
    base = paths.state_dir / "services"
    if not base.is_dir():
        return []
    return sorted(p.name.removesuffix(".json") for p in base.glob("*.json") if not p.name.endswith(".spec.json"))


def supervisor_alive(state: dict[str, Any]) -> bool:
    """Whether the supervisor that wrote ``state`` still runs (same pid and start time, not a zombie)."""
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


def stop_service(paths: Paths, service: str, *, timeout_s: float = 40.0) -> dict[str, Any]:
    """Stop a service's supervisor (and with it every process it started). Idempotent."""
    import psutil

    state = read_state(paths, service)
    if state is None:
        raise bad_input(f"{service} is not known here", hint="see `zk0 status` for what runs")
    result: dict[str, Any] = {"service": service, "was": state.get("state"), "supervisor_pid": None, "killed": []}
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
    leftovers = live_recorded_processes(read_state(paths, service) or state)
    if leftovers:
        result["killed"] = [p.pid for p in leftovers]
        terminate_processes(leftovers, grace_s=5.0)
    return result
