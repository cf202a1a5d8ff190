"""Hub downloads on the terminal: one transient line per download (files done of the total, bytes
fetched), on the console spinners use, so it nests under one that is already turning. Nothing on a
pipe, and nothing with --json."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from zk0cli.core.units import size
from zk0cli.datasets.hub_progress import Report
from zk0cli.ui import output


@contextmanager
def show(what: str) -> Iterator[Report]:
    """A :data:`zk0cli.datasets.hub_progress.Watcher`: the download of ``what`` while the block runs."""
    current = output.current()
    if current.json_mode or not current.err.is_terminal:
        yield _nothing
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("fetching {task.description}"),
        BarColumn(),
        TextColumn("{task.fields[counted]}, {task.fields[fetched]}"),
        TimeElapsedColumn(),
        console=current.err,
        transient=True,
    )
    task = progress.add_task(what, total=None, counted="listing files", fetched=size(0))

    def report(files_done: int, files_total: int, fetched: int) -> None:
        counted = f"{files_done}/{files_total} files" if files_total else "listing files"
        # refreshed at once: under a spinner this line is drawn by the spinner's own refresh,
        # which a short download ends before; the reports come at most every 0.1 s per bar
        progress.update(
            task, completed=files_done, total=files_total or None, counted=counted, fetched=size(fetched), refresh=True
        )

    with progress:
        yield report


def _nothing(files_done: int, files_total: int, fetched: int) -> None:
    """Not shown: a pipe, or --json."""
