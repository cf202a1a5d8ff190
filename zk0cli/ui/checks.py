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
