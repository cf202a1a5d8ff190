"""`zk0 compare RUN_A RUN_B [...]`: runs side by side, means with 95% intervals, relative gaps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from zk0cli.cli.common import JsonOption, out
from zk0cli.core.units import ACTION_ERROR_MEANING


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
    """Arms get letters, so the numbers fit 80 columns beside them; the JSON keeps the sentences."""
    from rich import box
    from rich.table import Table

    from zk0cli.services.compare import METRICS

    letters = {arm["label"]: chr(ord("A") + index) for index, arm in enumerate(result["arms"])}
    for arm in result["arms"]:
        steps = "/".join(str(s) for s in sorted({run["steps"] for run in arm["runs"]}))
        seeds = len(arm["runs"])
        console.print(
            # the label last: a long record name wraps without pushing the counts off the line
            f"{letters[arm['label']]}  {arm['mode']:<11}  {seeds} seed{'s' * (seeds != 1)}, {steps:>4} steps  "
            f"{arm['label']}",
            markup=False,
        )
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        title="server evaluation on the held-out datasets",
        title_justify="left",
    )
    table.add_column("arm")
    for title in METRICS.values():
        table.add_column(_short(title), justify="right", no_wrap=True)
    for arm in result["arms"]:
        table.add_row(letters[arm["label"]], *(_estimate(arm["estimates"][metric]) for metric in METRICS))
    console.print(table)
    console.print(CAPTION, markup=False)
    for gap in result["gaps"]:
        interval = f"CI {gap['low']:+.1f}%..{gap['high']:+.1f}%, {gap['method']}" if gap["low"] is not None else "no CI"
        console.print(
            f"{letters[gap['arm']]} vs {letters[gap['reference']]}, {_short(METRICS[gap['metric']])}: "
            f"{gap['percent']:+.1f}% ({interval})",
            markup=False,
        )
    console.print(f"plot: {result['plot']}", markup=False, soft_wrap=True)


CAPTION = f"mean ± half the 95% interval over seeds (t-distribution); error:\n{ACTION_ERROR_MEANING}"


def _short(title: str) -> str:
    return title.replace("server eval ", "").replace("action ", "")


def _estimate(estimate: dict[str, Any]) -> str:
    if estimate["low"] is None:
        return f"{estimate['mean']:.4g}"
    return f"{estimate['mean']:.4g} ±{(estimate['high'] - estimate['low']) / 2:.2g}"
