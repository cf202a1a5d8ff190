"""Renders a list of checks as ✓ / ! / ✗ lines, each failure with its fix."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from zk0cli.core.checks import CheckResult, Status, summarize

MARKS = {
    Status.OK: "[green]✓[/green]",
    Status.WARN: "[yellow]![/yellow]",
    Status.FAIL: "[red]✗[/red]",
    Status.SKIP: "[dim]-[/dim]",
}


def render_checks(console: Console, results: list[CheckResult], *, title: str = "") -> None:
    if title:
        console.print(f"[bold]{escape(title)}[/bold]")
    width = max((len(r.name) for r in results), default=0)
    for r in results:
        console.print(f"{MARKS[r.status]} {escape(r.name.ljust(width))}  {escape(r.detail)}")
        if r.fix and r.status in (Status.WARN, Status.FAIL):
            console.print(f"  {' ' * width} [dim]fix:[/dim] {escape(r.fix)}")
    counts = summarize(results)
    console.print(
        f"\n{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} error(s)"
        + (f", {counts['skip']} skipped" if counts["skip"] else "")
    )


def render_checks_table(console: Console, results: list[CheckResult], *, title: str = "", summary: str = "") -> None:
    """The same checks as one table (mark, check, finding with its fix), for long reports such as
    `zk0 dataset validate`; ``summary`` replaces the default counts line under it."""
    from rich import box
    from rich.table import Table

    table = Table(title=escape(title) if title else None, title_justify="left", box=box.SIMPLE_HEAD,
                  show_lines=False, expand=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True, style="bold")
    table.add_column("finding (and fix)", overflow="fold")
    for r in results:
        finding = escape(r.detail)
        if r.fix and r.status in (Status.WARN, Status.FAIL):
            finding += f"\n[dim]fix: {escape(r.fix)}[/dim]"
        table.add_row(MARKS[r.status], escape(r.name), finding)
    console.print(table)
    if not summary:
        counts = summarize(results)
        summary = f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} error(s)"
    console.print(summary)
