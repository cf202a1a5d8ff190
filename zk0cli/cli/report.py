"""`zk0 report RUN`: one run as a self-contained HTML page and a Markdown summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zk0cli.cli.common import RUN_HELP, JsonOption, out


def report(
    run: Annotated[str, typer.Argument(metavar="RUN", help=RUN_HELP, show_default=False)],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to write the report (default: RUN/report).", file_okay=False)
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Write report.html (plots and evaluation videos embedded) and report.md for one run.

    Shows the config, participants, a per-round table, loss and lr/mu curves, rejected updates,
    bytes transferred, time per round and the final checkpoint, all read from the run record.
    """
    from zk0cli.services.report import write_report

    written = write_report(run, out_dir)
    out().result(
        written,
        lambda console: console.print(
            f"[green]✓[/green] report of {written['run']}: {written['html']}\n"
            f"  summary: {written['markdown']} ({len(written['plots'])} plots, {len(written['videos'])} videos)"
        ),
    )
