"""`zk0 demo`: a TLS federation (server + two nodes) on this machine, trained for a few rounds."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from zk0cli.cli.common import JsonOption, RoundsOption, SetOption, out, session
from zk0cli.cli.run import print_round
from zk0cli.core.units import duration


def demo(
    rounds: RoundsOption = 3,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the demo's directory (keys, logs, datasets, SuperLink database).")
    ] = False,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Run a whole federation here: server and two nodes with real TLS and node auth, then train.

    Generates two datasets with different tasks (one per node) and the tiny offline backbone,
    starts the server and the nodes exactly as `zk0 server serve` and `zk0 node join` do, runs
    the rounds with live progress, and stops everything it started (also on Ctrl-C). The run
    record (plots, checkpoint, evaluation video) stays in your runs dir: `zk0 report RUN`.
    """
    from zk0cli.fl.run_config import parse_overrides
    from zk0cli.services import demo as demo_service

    options = demo_service.DemoOptions(rounds=rounds, keep=keep, settings=parse_overrides(set_ or []))
    try:
        result = demo_service.run(
            options, session().paths.runs_dir, on_message=lambda m: out().info(escape(m)), on_round=print_round
        )
    except KeyboardInterrupt:
        out().warning("demo interrupted: every process it started was stopped")
        raise typer.Exit(130) from None
    out().result(result.to_dict(), lambda console: _render(console, result))


def _render(console, result) -> None:
    from rich.table import Table

    table = Table(
        title=f"zk0 demo: {len(result.rounds) - 1 if result.rounds else 0} round(s), run {result.run_dir.name}",
        title_justify="left",
    )
    for column in ("round", "clients", "train loss", "server eval loss", "action error", "lr", "mu"):
        table.add_column(column, justify="right")
    for line in result.rounds:
        table.add_row(
            str(line["round"]),
            str(line.get("num_clients") or "-"),
            _num(line.get("loss_avg")),
            _num(line.get("server_policy_loss")),
            _num(line.get("server_action_error")),
            _num(line.get("lr"), ".3g"),
            _num(line.get("mu"), ".3g"),
        )
    console.print(table)
    stages = ", ".join(f"{name} {duration(seconds)}" for name, seconds in result.stage_seconds.items())
    finished = f"{result.state} in {duration(result.seconds)} ({stages})"
    console.print(f"[green]✓[/green] {finished}; every demo process stopped")
    console.print(f"  run record   {escape(str(result.run_dir))}")
    for label, paths in (("plots", result.plots), ("checkpoints", result.checkpoints), ("videos", result.videos)):
        for path in paths:
            console.print(f"  {label:<12} {escape(str(path))}")
            label = ""
    kept = f"kept: {escape(str(result.root))}" if result.kept else "removed (--keep keeps it)"
    console.print(f"  demo dir     {kept}")
    console.print(f"  next: zk0 report {escape(result.run_dir.name)}")


def _num(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
