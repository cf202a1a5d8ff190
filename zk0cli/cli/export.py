"""`zk0 export`: the federation's policy, ready for this node's arm (LeRobot's policy layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zk0cli.cli.common import JsonOption, out, session


def export(
    run: Annotated[
        str,
        typer.Argument(
            help="Flower run id (or prefix) this node took part in, the name of a run record on this machine, "
            "or a checkpoint / run record directory."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the policy to.", file_okay=False)],
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="Dataset whose stats set the action units (default: the one trained on)."),
    ] = None,
    server_round: Annotated[
        int | None, typer.Option("--round", min=1, help="Round to export (default: the last one held).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty output directory.")] = False,
    json_: JsonOption = False,
) -> None:
    """Write a LeRobot policy directory: the run's global weights, normalised by this node's data.

    Run it on the node: its dataset's statistics never leave it. The directory loads with
    `SmolVLAPolicy.from_pretrained(DIR)` and drives the arm with `lerobot-rollout --policy.path=DIR`.
    """
    from rich.markup import escape

    from zk0cli.services.export import ExportRequest, export_policy

    request = ExportRequest(run=run, out_dir=out_dir, dataset=dataset, server_round=server_round, force=force)
    with out().messages.status(f"exporting {escape(run)} ..."):
        data = export_policy(session().paths, request)
    if data["older_than_run"]:
        out().warning(f"not the run's last round: {escape(data['older_than_run'])}")
    out().result(
        data,
        lambda console: console.print(
            f"[green]✓[/green] exported {data['from']}, round {data['server_round'] or '?'} "
            f"-> {escape(data['out_dir'])}\n"
            f"  normalised by {escape(data['normalised_by']['dataset'])} (this node's stats)\n"
            f"  next: lerobot-rollout --policy.path={escape(data['out_dir'])} ... (see its README.md)",
            highlight=False,
        ),
    )
