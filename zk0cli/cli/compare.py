"""`zk0 compare RUN_A RUN_B [...]`: runs side by side, means with 95% intervals, relative gaps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from zk0cli.cli.common import JsonOption, out


def compare(
    runs: Annotated[
        list[str],
        typer.Argument(
            help=(
                "Runs to compare (Flower ids, record names, prefixes or dirs); RUN1,RUN2,... is one arm of "
                "several seeds."
            ),
            show_default=False,
        ),
    ],
    seeds: Annotated[
        int, typer.Option("--seeds", help="Seeds per arm: missing ones are run from the arm's first record.")
    ] = 1,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where the plot and compare.json go (default: <data dir>/compare/<time>).", file_okay=False
        ),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Final and best server eval loss and action error side by side, loss-vs-steps on one plot.

    With several seeds per arm: the mean with a 95% confidence interval (t-distribution) and the
    gap of each arm to the centralized one (or the first), e.g. "federated is 12% (CI ...) above".
    Every number is read from the run records.
    """
    from zk0cli.services.compare import compare as compare_runs

    arms = [[ref for ref in arg.split(",") if ref] for arg in runs]
    result = compare_runs(arms, seeds=seeds, out_dir=out_dir, progress=out().info)
    for warning in result["warnings"]:
        out().warning(warning)
    out().result(result, lambda console: _render(console, result))


def _render(console, result: dict[str, Any]) -> None:
    from rich.table import Table

    from zk0cli.services.compare import METRICS

    table = Table(title="server evaluation on the held-out datasets", title_justify="left")
    table.add_column("arm")
    table.add_column("mode")
    table.add_column("runs (seeds)", justify="right")
    table.add_column("steps", justify="right")
    for title in METRICS.values():
        table.add_column(title.replace("server eval ", ""), justify="right")
    for arm in result["arms"]:
        steps = sorted({run["steps"] for run in arm["runs"]})
        table.add_row(
            arm["label"],
            arm["mode"],
            f"{len(arm['runs'])} ({', '.join(str(run['seed']) for run in arm['runs'])})",
            "/".join(str(s) for s in steps),
            *(_estimate(arm["estimates"][metric]) for metric in METRICS),
        )
    console.print(table)
    for gap in result["gaps"]:
        console.print(gap["text"], markup=False)
    console.print(f"plot: {result['plot']}", markup=False)


def _estimate(estimate: dict[str, Any]) -> str:
    if estimate["low"] is None:
        return f"{estimate['mean']:.4g}"
    return f"{estimate['mean']:.4g} [{estimate['low']:.4g}, {estimate['high']:.4g}]"
