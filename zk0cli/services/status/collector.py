"""One snapshot from every source, each on its own thread with a timeout: a slow or hung source
never holds up the others, nor the ``--watch`` render loop."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from zk0cli.core.paths import Paths
from zk0cli.core.timefmt import utc_now_iso
from zk0cli.services import supervisor
from zk0cli.services.flower_control import ControlConnection, control_failure
from zk0cli.services.status import gpu
from zk0cli.services.status.local import STALE_AFTER_S, CpuMeter, node_host, read_services
from zk0cli.services.status.model import (
    OK,
    UNREACHABLE,
    FederationView,
    NodeHostView,
    ServiceView,
    Snapshot,
    SourceState,
)
from zk0cli.services.status.runs import RECENT_RUNS, RunRecordReader, eta, merge_runs
from zk0cli.services.status.superlink import SuperLinkData, read_superlink

SOURCE_TIMEOUT_S = 2.0  # each source must answer within this, or it is shown as unreachable


class StatusCollector:
    """Takes snapshots; keeps what makes the next one cheaper (CPU samples, parsed records).

    Each source runs on its own thread and gets ``timeout_s``; one that has not answered is shown
    as unreachable and is not asked again until its earlier call has returned.
    """

    def __init__(
        self,
        paths: Paths,
        *,
        role: str = "",
        timeout_s: float = SOURCE_TIMEOUT_S,
        stale_after_s: float = STALE_AFTER_S,
        recent_runs: int = RECENT_RUNS,
    ) -> None:
        self.paths = paths
        self.role = role
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.recent_runs = recent_runs
        self._busy: dict[str, _Fetch] = {}
        self._cpu = CpuMeter()
        self._records = RunRecordReader()
        self._gpu_tool = gpu.gpu_tool()

    def snapshot(self) -> Snapshot:
        now = time.time()
        connection, connection_problem = self._connection()
        jobs: dict[str, Callable[[], Any]] = {
            "services": self._services,
            "runs": lambda: [
                self._records.read(root, now=now)
                for root in self._records.recent(self.paths.runs_dir, limit=self.recent_runs)
            ],
        }
        if connection is not None:
            jobs["superlink"] = lambda: read_superlink(connection, timeout_s=self.timeout_s)
        if self._gpu_tool:
            jobs["gpu"] = lambda: gpu.read_gpu(self._gpu_tool, timeout_s=self.timeout_s)
        results, sources = self._gather(jobs)
        if connection_problem:
            sources["superlink"] = SourceState("superlink", UNREACHABLE, connection_problem)
        return self._assemble(now, results, sources)

    def _services(self) -> tuple[list[ServiceView], list[NodeHostView]]:
        services = read_services(self.paths, self._cpu, stale_after_s=self.stale_after_s)
        return services, [node_host(s) for s in services if s.kind == "node"]

    def _connection(self) -> tuple[ControlConnection | None, str]:
        try:
            connection = ControlConnection.load(self.paths)
        except (OSError, ValueError) as exc:
            return None, f"cannot read the flwr CLI connection: {exc}"
        if connection is None and (
            self.role == "server" or supervisor.ServiceFiles.of(self.paths, "server").state.exists()
        ):
            return None, "no local SuperLink connection configured (start the server: `zk0 server serve`)"
        return connection, ""

    def _gather(self, jobs: dict[str, Callable[[], Any]]) -> tuple[dict[str, Any], dict[str, SourceState]]:
        deadline = time.monotonic() + self.timeout_s
        fetches: dict[str, _Fetch] = {}
        sources: dict[str, SourceState] = {}
        for name, job in jobs.items():
            busy = self._busy.get(name)
            if busy is not None and not busy.done.is_set():
                waited = time.monotonic() - busy.started
                sources[name] = SourceState(name, UNREACHABLE, f"no answer for {waited:.0f} s (still waiting)")
                continue
            fetches[name] = self._busy[name] = _Fetch(name, job)
        results: dict[str, Any] = {}
        for name, fetch in fetches.items():
            if not fetch.done.wait(max(0.0, deadline - time.monotonic())):
                sources[name] = SourceState(name, UNREACHABLE, f"no answer within {self.timeout_s:g} s")
            elif fetch.error is not None:
                error = fetch.error
                reason = control_failure(error) if name == "superlink" else f"{type(error).__name__}: {error}"
                sources[name] = SourceState(name, UNREACHABLE, reason, seconds=fetch.seconds)
            else:
                results[name] = fetch.result
                sources[name] = SourceState(name, OK, seconds=fetch.seconds)
        return results, sources

    def _assemble(self, now: float, results: dict[str, Any], sources: dict[str, SourceState]) -> Snapshot:
        services, node_hosts = results.get("services", ([], []))
        usage = results.get("gpu")
        if usage is not None:
            gpu.apply_gpu(services, usage)
        link: SuperLinkData | None = results.get("superlink")
        runs = merge_runs(results.get("runs", []), link, now)
        for view in runs:
            view.eta_s = eta(view)
        runs.sort(key=lambda v: (not v.running, -(v.started_at or 0.0)))
        federation = None
        if "superlink" in sources:
            server = next((s for s in services if s.kind == "server"), None)
            federation = FederationView(
                sources["superlink"],
                nodes=link.nodes if link else [],
                online=sum(n.status == "online" for n in link.nodes) if link else 0,
                min_nodes=_min_nodes(server),
            )
        return Snapshot(
            taken_at=utc_now_iso(timespec="seconds"),
            host=os.uname().nodename,
            role=self.role,
            gpu=usage is not None,
            sources=sources,
            services=services,
            federation=federation,
            runs=runs,
            node_hosts=node_hosts,
        )


class _Fetch:
    """One source read on its own daemon thread: a hung one is left behind, never waited for at exit."""

    def __init__(self, name: str, job: Callable[[], Any]) -> None:
        self.started = time.monotonic()
        self.seconds = 0.0
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(job,), name=f"zk0-status-{name}", daemon=True).start()

    def _run(self, job: Callable[[], Any]) -> None:
        try:
            self.result = job()
        except Exception as exc:  # noqa: BLE001 - any failure of one source is shown, never raised
            self.error = exc
        finally:
            self.seconds = round(time.monotonic() - self.started, 3)
            self.done.set()


def _min_nodes(server: ServiceView | None) -> int | None:
    """The online-node threshold of the server's auto-run, when it has one."""
    value = server.info.get("min_nodes") if server is not None else None
    return value if isinstance(value, int) else None


def collect(paths: Paths, *, role: str = "", timeout_s: float = SOURCE_TIMEOUT_S) -> Snapshot:
    """One snapshot, for `zk0 status` and `zk0 status --json`."""
    return StatusCollector(paths, role=role, timeout_s=timeout_s).snapshot()
