"""Renders a list of checks as ✓ / ! / ✗ rows, each warning and failure with its fix.

One renderer for `zk0 doctor` and `zk0 dataset validate`: a table whose finding column wraps
inside itself, so long findings stay readable in an 80-column terminal.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zk0cli.core.checks import CheckResult, Status, summarize

MARKS = {
    Status.OK: "[green]✓[/green]",
    Status.WARN: "[yellow]![/yellow]",
    Status.FAIL: "[red]✗[/red]",
    Status.SKIP: "[dim]-[/dim]",
}


def render_checks(console: Console, results: list[CheckResult], *, title: str = "", summary: str = "") -> None:
    """``summary`` replaces the default counts line under the table."""
    table = Table(title=escape(title) if title else None, title_justify="left", box=box.SIMPLE_HEAD, expand=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True, style="bold")
    table.add_column("finding (and fix)", overflow="fold")
    for r in results:
        finding = escape(r.detail)
        if r.fix and r.status in (Status.WARN, Status.FAIL):
            finding += f"\n[dim]fix:[/dim] {escape(r.fix)}"
        table.add_row(MARKS[r.status], escape(r.name), finding)
    console.print(table)
    console.print(summary or _counts_line(results))


def _counts_line(results: list[CheckResult]) -> str:
    counts = summarize(results)
    line = f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} error(s)"
    return line + (f", {counts['skip']} skipped" if counts["skip"] else "")
