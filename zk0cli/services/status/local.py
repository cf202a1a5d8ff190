"""This machine's side of the snapshot: supervised services (state files, live CPU/RSS of each
process tree) and, for nodes, what the node's log says about its training."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from zk0cli.core.files import JsonFileError, read_json
from zk0cli.core.paths import Paths
from zk0cli.core.timefmt import epoch_from_iso
from zk0cli.services import supervisor
from zk0cli.services.status.model import OK, STALE, UNREACHABLE, NodeHostView, ProcessView, ServiceView, SourceState

STALE_AFTER_S = 15.0  # three missed supervisor heartbeats (written every 5 s)


class CpuMeter:
    """CPU % of process trees between two refreshes (the first look averages over the lifetime)."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, float], tuple[float, float]] = {}  # (pid, create_time) -> (cpu s, monotonic)

    def measure(self, pid: int, created: float | None) -> tuple[float | None, float | None, int | None]:
        """(cpu %, window s, rss bytes) of ``pid`` and its descendants; Nones if it is gone."""
        import psutil

        try:
            leader = psutil.Process(pid)
            if created is not None and abs(leader.create_time() - created) > 1:
                return None, None, None  # the pid now belongs to another process
            tree = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return None, None, None
        cpu_s, rss = 0.0, 0
        for proc in tree:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    cpu_s += times.user + times.system + times.children_user + times.children_system
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue  # a descendant that just ended
        now = time.monotonic()
        key = (pid, leader.create_time())
        previous = self._last.get(key)
        self._last[key] = (cpu_s, now)
        if previous is not None and now > previous[1]:
            window = now - previous[1]
            return max(0.0, (cpu_s - previous[0]) / window * 100), window, rss
        window = max(time.time() - key[1], 1e-3)
        return cpu_s / window * 100, window, rss


def process_tree_pids(pid: int) -> list[int]:
    import psutil

    try:
        leader = psutil.Process(pid)
        return [pid, *(child.pid for child in leader.children(recursive=True))]
    except psutil.Error:
        return []


def read_services(paths: Paths, cpu: CpuMeter, *, stale_after_s: float = STALE_AFTER_S) -> list[ServiceView]:
    """Every service's state file, checked for staleness, with live CPU/RSS of its processes."""
    now = time.time()
    views = []
    for name in supervisor.service_names(paths):
        state = supervisor.read_state(paths, name)
        if state is None:  # the supervisor's reader refuses it: say why
            try:
                read_json(supervisor.ServiceFiles.of(paths, name).state)
            except JsonFileError as error:
                if not error.reason.endswith("is missing"):  # missing: removed since it was listed
                    reason = f"state file: {error.reason}"
                    views.append(ServiceView(name, source=SourceState("services", UNREACHABLE, reason)))
            continue
        views.append(_service_view(name, state, now, cpu, stale_after_s))
    return sorted(views, key=lambda v: (v.kind != "server", v.service))


def _service_view(name: str, state: dict, now: float, cpu: CpuMeter, stale_after_s: float) -> ServiceView:
    updated = epoch_from_iso(state.get("updated_at"))
    age = None if updated is None else max(0.0, now - updated)
    view = ServiceView(
        name,
        kind=str(state.get("kind", "")),
        state=str(state.get("state", "unknown")),
        reason=str(state.get("reason", "")),
        heartbeat_age_s=age,
        info=dict(state.get("info") or {}),
        probes=dict(state.get("probes") or {}),
        log_file=str(state.get("log_file", "")),
    )
    claims_to_run = view.state not in ("stopped", "failed")
    if claims_to_run and (age is None or age > stale_after_s):
        view.source = SourceState(
            "services", STALE, f"no supervisor heartbeat for {_age_text(age)}: its supervisor is gone or hung"
        )
    live = claims_to_run and view.source.state == OK
    for proc_name, proc in (state.get("processes") or {}).items():
        view.processes.append(_process_view(proc_name, proc, now, cpu if live else None))
    return view


def _process_view(name: str, proc: dict, now: float, cpu: CpuMeter | None) -> ProcessView:
    started = epoch_from_iso(proc.get("started_at"))
    pid = proc.get("pid") if isinstance(proc.get("pid"), int) else None
    view = ProcessView(
        name,
        state=str(proc.get("state", "unknown")),
        restarts=int(proc.get("restarts") or 0),
        last_exit_code=proc.get("last_exit_code"),
        health=str((proc.get("health") or {}).get("detail", "")),
        ports=dict(proc.get("ports") or {}),
    )
    # the pid is shown only once seen alive: a stopped or stale state file may name a dead one
    if pid is not None and cpu is not None:
        view.cpu_percent, view.cpu_window_s, view.rss_bytes = cpu.measure(pid, proc.get("create_time"))
        if view.rss_bytes is not None:
            view.pid, view.uptime_s = pid, None if started is None else max(0.0, now - started)
    return view


def _age_text(age: float | None) -> str:
    return "an unknown time" if age is None else f"{age:.0f} s"


# A node's training progress line, written by the ClientApp (zk0cli.fl.node.ProgressLog) to the
# SuperNode's output, which the supervisor copies into the node's log.
TRAINING_LINE = re.compile(
    r"round (?P<round>\d+) (?P<dataset>.*?) \[[#.]*\] (?P<step>\d+)/(?P<total>\d+) loss (?P<loss>\S+)"
)
LOG_TAIL_BYTES = 64 * 1024


def node_host(view: ServiceView) -> NodeHostView:
    """What a node operator wants to know about one joined node: its service state and log."""
    info = view.info
    host = NodeHostView(
        view.service,
        server=str(info.get("server", "")),
        dataset=str(info.get("dataset", "")),
        dataset_verdict=str(info.get("dataset_validation", "")),
        connection=_connection(view),
    )
    if view.source.state != OK:
        host.problems.append(view.source.reason)
    if view.log_file:
        finished, current = last_training(Path(view.log_file))
        if finished is not None:
            host.last_round, host.last_round_loss = finished
        if current is not None:
            host.training = current
    return host


def _connection(view: ServiceView) -> str:
    if view.source.state == STALE:
        return "unknown (supervisor gone)"
    if view.state == "restarting":
        attempt = max((p.restarts for p in view.processes), default=0) + 1
        return f"reconnecting (restart {attempt})"
    server = view.probes.get("server") or {}
    if view.state in ("healthy", "starting") and server.get("ok") is False:
        return f"reconnecting (attempt {server.get('consecutive_failures', '?')}): {server.get('detail', '')}".rstrip(
            ": "
        )
    if view.state == "starting":
        return "connecting"
    return "connected" if view.state == "healthy" else view.state


def last_training(log: Path) -> tuple[tuple[int, float | None] | None, str | None]:
    """((round, loss) of the last finished local training, 'round r: step s/t' if one is under way)."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None, None
    finished, current = None, None
    for match in TRAINING_LINE.finditer(tail):
        step, total = int(match["step"]), int(match["total"])
        if step >= total:
            finished, current = (int(match["round"]), _float_text(match["loss"])), None
        else:
            current = f"round {match['round']}: step {step}/{total}, loss {match['loss']}"
    return finished, current


def _float_text(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
