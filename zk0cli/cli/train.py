"""`zk0 train`: the centralized baseline, matched to a federated run or given a step budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zk0cli.cli.common import JsonOption, SetOption, out
from zk0cli.core.errors import bad_input
from zk0cli.core.units import action_error


def train(
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset", help="Training dataset URI (repeat for several; their training episodes are pooled)."
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", help="Total optimizer steps, spread over num-server-rounds evaluation rounds."),
    ] = None,
    match_run: Annotated[
        str | None,
        typer.Option(
            "--match-run",
            metavar="RUN",
            help="Federated run to match (Flower id, record name, prefix or dir): its config, data, steps, evals.",
        ),
    ] = None,
    local_only: Annotated[
        bool,
        typer.Option(
            "--local-only", help="With --match-run: one model per node dataset, each trained on its own data alone."
        ),
    ] = False,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of everything random (default: the run config's).")
    ] = None,
    set_: SetOption = None,
    from_record: Annotated[
        Path | None,
        typer.Option(
            "--from-record",
            help="Re-run a centralized run record exactly (with --seed: another seed).",
            file_okay=False,
        ),
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Train the same SmolVLA on the pooled data of a federation: the centralized baseline.

    Uses the federated client's own training loop, optimizer preset and lr control, evaluates on
    the same held-out datasets at the same rounds and writes the same run record, checkpoints and
    plots. `zk0 compare FEDERATED_RUN THIS_RUN` then tells what federation costs.
    """
    from zk0cli.fl.run_config import parse_overrides
    from zk0cli.services import train as centralized_training

    if local_only:
        if match_run is None or steps is not None or from_record is not None:
            raise bad_input(
                "--local-only trains each node of a federated run alone: it needs --match-run RUN",
                hint="zk0 train --match-run RUN --local-only (RUN: a federated run, see `zk0 runs`)",
            )
        _train_local_only(match_run, dataset, seed, parse_overrides(set_ or []))
        return
    if from_record is not None:
        if dataset or steps is not None or match_run or set_:
            raise bad_input(
                "--from-record re-runs a record as it was; only --seed may change it",
                hint=f"zk0 train --from-record {from_record} [--seed N]",
            )
        plan = centralized_training.plan_from_record(from_record, seed=seed)
    else:
        plan = centralized_training.plan_centralized(
            datasets=dataset,
            steps=steps,
            match_run=match_run,
            seed=seed,
            overrides=parse_overrides(set_ or []),
            progress=out().info,
        )
    record = centralized_training.run_centralized(plan, progress=out().info)
    data = centralized_training.run_summary(record)
    out().result(
        data,
        lambda console: console.print(
            f"[green]✓[/green] centralized run {data['run_id']}: {data['optimizer_steps']} steps, "
            "final server eval loss "
            f"{data['final_loss']:.4g} (action error {action_error(data['final_action_error'])})\n"
            f"  record: {data['record']}\n  next: zk0 report {data['run_id']}"
            + (f"   zk0 compare {data['matched_run']} {data['run_id']}" if data["matched_run"] else "")
        ),
    )


def _train_local_only(match_run: str, datasets: list[str] | None, seed: int | None, overrides: dict) -> None:
    from zk0cli.services import train as centralized_training

    plans = centralized_training.plan_local_only(
        match_run, datasets=datasets, seed=seed, overrides=overrides, progress=out().info
    )
    summaries = []
    for index, plan in enumerate(plans, start=1):
        out().info(f"node dataset {index}/{len(plans)}: {centralized_training.pooled_name(plan.training)} alone")
        summaries.append(
            centralized_training.run_summary(centralized_training.run_centralized(plan, progress=out().info))
        )
    matched = summaries[0]["matched_run"] if summaries else match_run
    out().result(
        {"runs": summaries, "matched_run": matched},
        lambda console: console.print(
            "\n".join(
                f"[green]✓[/green] local-only {s['datasets'][0]}: {s['run_id']}, final server eval loss "
                f"{s['final_loss']:.4g}"
                for s in summaries
            )
            + f"\n  next: zk0 compare {matched} {' '.join(s['run_id'] for s in summaries)}",
            markup=True,
        ),
    )
