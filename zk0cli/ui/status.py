"""`zk0 status` panels: local services, federation, runs, current round, node host.

Everything here is a pure function of a :class:`zk0cli.services.status.Snapshot` and the terminal
width, so the one-shot output, the ``--watch`` dashboard and the tests render the same way.
Panels stack below ``WIDE_AT`` columns and sit side by side above it. A source that could not
be read is shown in red with its reason; stale data is never shown as live numbers.
"""

from __future__ import annotations

import datetime as dt
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable

from rich.console import Group, JustifyMethod, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from zk0cli.core.units import duration, size
from zk0cli.services.status import (
    OK,
    ClientRound,
    FederationView,
    NodeHostView,
    RunView,
    ServiceView,
    Snapshot,
    SourceState,
)
from zk0cli.services.status.model import short_status

SERVER_EVAL_OFF = "server eval off (zk0 config set run.eval-datasets URI turns it on)"
WIDE_AT = 150  # columns from which panels sit side by side
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
STATE_STYLES = {
    "healthy": "green",
    "connected": "green",
    "online": "green",
    "running": "green",
    "completed": "green",
    "starting": "yellow",
    "restarting": "yellow",
    "reconnecting": "yellow",
    "pending": "yellow",
    "offline": "yellow",
    "stopped": "dim",
    "registered": "blue",
    "failed": "bold red",
    "unreachable": "bold red",
    "stale": "bold red",
}


# --------------------------------------------------------------------------- formatting


def sparkline(values: list[float], width: int = 16) -> str:
    """The last ``width`` values as unicode blocks, scaled between their min and max."""
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    if high - low < 1e-12:
        return SPARK_BLOCKS[len(SPARK_BLOCKS) // 2 - 1] * len(values)
    steps = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[round((v - low) / (high - low) * steps)] for v in values)


def number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def styled(state: str, text: str | None = None) -> Text:
    """``state`` coloured by what it means (its first word decides: 'reconnecting (attempt 2)')."""
    key = state.split(":")[-1].split(" ")[0]
    return Text(text if text is not None else state, style=STATE_STYLES.get(key, ""))


def source_line(source: SourceState) -> Text:
    """'superlink: unreachable: connection refused' in red, or nothing for a healthy source."""
    if source.state == OK:
        return Text("")
    return Text(f"{source.name}: {source.state}: {source.reason}", style=STATE_STYLES.get(source.state, "bold red"))


# --------------------------------------------------------------------------- panels


def header(snapshot: Snapshot) -> Text:
    clock = snapshot.taken_at.replace("T", " ")
    role = snapshot.role or "role not set (`zk0 init`)"
    text = Text.assemble(("zk0 status", "bold"), f"  {snapshot.host} · {role} · {clock}")
    # the SuperLink's trouble is shown in the federation panel, where its numbers would be
    bad = [
        s for s in snapshot.sources.values() if s.state != OK and not (s.name == "superlink" and snapshot.federation)
    ]
    for source in bad:
        text.append("\n")
        text.append_text(source_line(source))
    return text


def services_panel(snapshot: Snapshot, *, width: int = 120) -> Panel:
    """One row per service (its name whole, however long), then one per process under it.
    Below 100 columns the last exit code is left to the notes, which say why a process ended."""
    exit_column = width >= 100
    table = Table(expand=True, box=None, pad_edge=False, show_edge=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("service / process", "left"),
        ("pid", "right"),
        ("state", "left"),
        ("up", "right"),
        ("restarts", "right"),
        *((("exit", "right"),) if exit_column else ()),
        ("CPU", "right"),
        ("RSS", "right"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    if snapshot.gpu:
        table.add_column("GPU", justify="right", no_wrap=True)
        table.add_column("GPU mem", justify="right", no_wrap=True)
    notes = []
    for service in snapshot.services:
        _service_rows(table, service, snapshot.gpu, exit_column)
        if service.source.state != OK:
            notes.append(source_line(SourceState(service.service, service.source.state, service.source.reason)))
        elif service.reason and service.state in ("failed", "restarting", "stopped"):
            notes.append(Text(f"{service.service}: {service.reason}", style=STATE_STYLES.get(service.state, "")))
    if not snapshot.services:
        return Panel(
            Text("nothing running here (start one: `zk0 server serve` or `zk0 node join`)", style="dim"),
            title="local services",
            title_align="left",
        )
    return Panel(Group(table, *notes), title="local services", title_align="left")


def _service_rows(table: Table, service: ServiceView, gpu: bool, exit_column: bool) -> None:
    blank = [""] * (len(table.columns) - 3)
    state = service.source.state if service.source.state != OK else service.state
    table.add_row(Text(service.service, style="bold"), "", styled(state), *blank)
    live = service.source.state == OK
    for proc in service.processes:
        state = proc.state if live else service.source.state
        label = f"restarting {proc.restarts + 1}" if state == "restarting" else state
        cells: list[str | Text] = [
            f"  {proc.name}",
            str(proc.pid) if proc.pid and live else "-",
            styled(state, label),
            duration(proc.uptime_s),
            str(proc.restarts),
            *(("-" if proc.last_exit_code is None else str(proc.last_exit_code),) if exit_column else ()),
            "-" if proc.cpu_percent is None else f"{proc.cpu_percent:.0f}%",
            size(proc.rss_bytes),
        ]
        if gpu:
            cells += ["-" if proc.gpu_percent is None else f"{proc.gpu_percent:.0f}%", size(proc.gpu_memory_bytes)]
        table.add_row(*cells, style="" if live else "dim")


def federation_panel(federation: FederationView) -> Panel:
    title = "federation"
    if federation.source.state != OK:
        return Panel(source_line(federation.source), title=title, title_align="left", border_style="red")
    wanted = f" / min {federation.min_nodes} for auto-run" if federation.min_nodes is not None else ""
    enough = federation.min_nodes is None or federation.online >= federation.min_nodes
    title = f"federation · {federation.online} online{wanted}"
    if not federation.nodes:
        return Panel(
            Text("no node has joined yet (`zk0 node join --server HOST:9092 ...`)", style="dim"),
            title=title,
            title_align="left",
        )
    table = Table(expand=True, box=None, pad_edge=False, show_edge=False)
    node_columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("node id", "left"),
        ("name", "left"),
        ("status", "left"),
        ("last seen", "right"),
    )
    for name, justify in node_columns:
        table.add_column(name, justify=justify, no_wrap=name != "name")
    for node in federation.nodes:
        seen = "-" if node.last_seen_s is None else f"{duration(node.last_seen_s)} ago"
        table.add_row(str(node.node_id), node.name or "-", styled(node.status), seen)
    return Panel(table, title=title, title_align="left", border_style="" if enough else "yellow")


def runs_panel(runs: list[RunView], *, width: int) -> Panel:
    """One row per run; below 110 columns the status goes under the run id (Flower's ids are 19 digits)."""
    narrow = width < 110
    table = Table(expand=True, box=None, pad_edge=False, show_edge=False)
    table.add_column("run" if not narrow else "run / status", no_wrap=True, overflow="ellipsis", min_width=8)
    if not narrow:
        table.add_column("status", no_wrap=True)
    for name, least in (("round", 5), ("elapsed", 5), ("ETA", 3), ("loss", 5), ("best", 8)):
        table.add_column(name, justify="left" if name == "round" else "right", no_wrap=True, min_width=least)
    table.add_column("trend", no_wrap=True, min_width=8 if narrow else 16)
    notes = []
    for run in runs:
        status = styled(run.status, short_status(run.status))
        cells: list[RenderableType] = [Text.assemble(run.run_id, "\n", status) if narrow else Text(run.run_id)]
        if not narrow:
            cells.append(status)
        best = f"{number(run.best_loss)} r{run.best_round}" if run.best_round is not None else "-"
        cells += [
            _progress(run, width),
            duration(run.elapsed_s),
            duration(run.eta_s),
            number(run.last_loss),
            best,
            Text(sparkline(run.loss_history, 8 if narrow else 16), style="cyan"),
        ]
        table.add_row(*cells)
        notes += [Text(f"{run.run_id}: {problem}", style="red") for problem in run.problems]
        if run.running and run.server_eval is False:
            notes.append(Text(f"{run.run_id}: {SERVER_EVAL_OFF}", style="dim"))
    return Panel(Group(table, *notes), title="runs", title_align="left")


def _progress(run: RunView, width: int) -> RenderableType:
    if run.rounds_total is None:
        return Text(f"{run.round}/?" if run.record else "-")
    bar = ProgressBar(
        total=run.rounds_total,
        completed=min(run.round, run.rounds_total),
        width=6 if width < 100 else 12,
        complete_style="green" if not run.running else "cyan",
    )
    grid = Table.grid(padding=(0, 1))
    grid.add_row(bar, Text(f"{run.round}/{run.rounds_total}"))
    return grid


def round_panel(run: RunView, *, width: int) -> Panel:
    """The clients of the latest completed round of ``run``, with rejected and failed updates."""
    traffic = any(c.bytes_up is not None or c.bytes_down is not None for c in run.clients)
    table = Table(expand=True, box=None, pad_edge=False, show_edge=False)
    table.add_column("node", no_wrap=True, overflow="ellipsis", min_width=6)
    if width >= 100:
        table.add_column("dataset", overflow="ellipsis")
    for name in ("loss", "fedprox", "steps", "s") + (("up", "down") if traffic else ()):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("outcome")
    for client in run.clients:
        table.add_row(*_client_cells(client, width, traffic))
    title = f"round {run.clients_round} of run {run.run_id}"
    if run.running and run.rounds_total:
        title += f" (round {run.round + 1} in progress)"
    return Panel(table, title=title, title_align="left")


def _client_cells(client: ClientRound, width: int, traffic: bool) -> list[RenderableType]:
    outcome = (
        styled("completed", "accepted")
        if client.outcome == "accepted"
        else Text(f"{client.outcome}: {client.reason}", style="yellow" if client.outcome == "flagged" else "red")
    )
    cells: list[RenderableType] = [client.node]
    if width >= 100:
        cells.append(client.dataset or "-")
    cells += [
        number(client.loss),
        number(client.fedprox_loss),
        "-" if client.steps is None else str(client.steps),
        number(client.seconds, 3),
    ]
    if traffic:
        cells += [size(client.bytes_up), size(client.bytes_down)]
    return [*cells, outcome]


def node_host_panel(host: NodeHostView) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("server", host.server or "-")
    grid.add_row("connection", styled(host.connection or "unknown"))
    grid.add_row("dataset", host.dataset or "-")
    grid.add_row("validation", styled(_verdict_state(host.dataset_verdict), host.dataset_verdict or "-"))
    last = "-" if host.last_round is None else f"round {host.last_round}, loss {number(host.last_round_loss)}"
    grid.add_row("last round", last)
    if host.training:
        grid.add_row("training", host.training)
    notes = [Text(problem, style="red") for problem in host.problems]
    return Panel(Group(grid, *notes), title=f"node · {host.service.removeprefix('node-')}", title_align="left")


def _verdict_state(verdict: str) -> str:
    word = verdict.split(" ")[0].lower().strip(":,")
    return {
        "ok": "healthy",
        "passed": "healthy",
        "warn": "starting",
        "warning": "starting",
        "fail": "failed",
        "failed": "failed",
    }.get(word, "")


# --------------------------------------------------------------------------- the whole screen


def render_status(snapshot: Snapshot, *, width: int) -> RenderableType:
    """Every panel that applies: stacked below WIDE_AT columns, in two columns above."""
    local: list[RenderableType] = [services_panel(snapshot, width=width if width < WIDE_AT else width // 2)]
    local += [node_host_panel(host) for host in snapshot.node_hosts]
    federation: list[RenderableType] = []
    if snapshot.federation is not None:
        federation.append(federation_panel(snapshot.federation))
    if snapshot.runs:
        federation.append(runs_panel(snapshot.runs, width=width if width < WIDE_AT else width // 2))
        current = next((run for run in snapshot.runs if run.clients), None)
        if current is not None:
            federation.append(round_panel(current, width=width if width < WIDE_AT else width // 2))
    if width >= WIDE_AT and federation:
        columns = Table.grid(expand=True, padding=(0, 1))
        columns.add_column(ratio=1)
        columns.add_column(ratio=1)
        columns.add_row(Group(*local), Group(*federation))
        return Group(header(snapshot), columns)
    return Group(header(snapshot), *local, *federation)


def footer(interval_s: float) -> Text:
    now = dt.datetime.now().strftime("%H:%M:%S")
    return Text(f"refreshing every {interval_s:g} s · {now} · q or Ctrl-C to quit", style="dim")


# --------------------------------------------------------------------------- --watch


class QuitKeys:
    """Waits for 'q' on stdin, read in cbreak mode when it is a terminal; restores the terminal on exit.

    cbreak keeps ISIG, so Ctrl-C still raises KeyboardInterrupt. When stdin is not a terminal
    nothing is read and only Ctrl-C (or a signal) ends the wait.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._saved: list | None = None

    def __enter__(self) -> QuitKeys:
        try:
            if sys.stdin.isatty():
                self._fd = sys.stdin.fileno()
                self._saved = termios.tcgetattr(self._fd)
                tty.setcbreak(self._fd, termios.TCSANOW)
        except (OSError, ValueError, termios.error):
            self._fd = None
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None and self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def wait(self, timeout_s: float) -> bool:
        """True once 'q' was pressed; False after ``timeout_s`` without it."""
        if self._fd is None:
            time.sleep(timeout_s)
            return False
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                return False
            keys = os.read(self._fd, 64)
            if not keys or b"q" in keys.lower():
                return True  # 'q', or end of input: nobody is left to press a key
        return False


def watch(console, take_snapshot: Callable[[], Snapshot], *, interval_s: float = 1.0) -> None:
    """Live dashboard: snapshots are taken on a worker thread; this loop only draws the latest.

    Runs in the terminal's alternate screen (no scrolling garbage, the screen comes back as it
    was), redraws in place only when there is something new, and returns on q, Ctrl-C, SIGTERM
    or SIGHUP with the terminal restored.
    """
    from rich.live import Live

    latest: list[Snapshot | str] = []  # the newest snapshot, or why taking one failed
    changed = threading.Event()
    stop = threading.Event()

    def refresh() -> None:
        while not stop.is_set():
            try:
                latest[:] = [take_snapshot()]
            except Exception as exc:  # noqa: BLE001 - shown on screen instead of freezing the last numbers
                latest[:] = [f"status failed: {type(exc).__name__}: {exc}"]
            changed.set()
            stop.wait(interval_s)

    def end(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, end) for sig in (signal.SIGTERM, signal.SIGHUP)}
    worker = threading.Thread(target=refresh, name="zk0-status-refresh", daemon=True)
    try:
        with QuitKeys() as keys, Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
            live.update(Group(Text("zk0 status: reading...", style="dim"), footer(interval_s)), refresh=True)
            worker.start()
            while True:
                if changed.is_set() and latest:
                    changed.clear()
                    shown = latest[0]
                    body = (
                        Text(shown, style="bold red")
                        if isinstance(shown, str)
                        else render_status(shown, width=console.width)
                    )
                    live.update(Group(body, footer(interval_s)), refresh=True)
                if keys.wait(0.1):
                    return
    except KeyboardInterrupt:
        return
    finally:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
