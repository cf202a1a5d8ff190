"""`zk0 sim`: a federated run on Flower's Simulation Engine, on this machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from zk0cli.cli.common import JsonOption, ListKeysOption, RoundsOption, SetOption, out, print_run_config_keys, session
from zk0cli.core.errors import bad_input
from zk0cli.core.units import duration
from zk0cli.ui.rounds import round_line


def sim(
    clients: Annotated[int, typer.Option("--clients", "-n", help="Simulated nodes (clients).")] = 2,
    rounds: RoundsOption = 3,
    run_config: SetOption = None,
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            help="Dataset URI per client (cycled; one URI is partitioned across clients). Default: generated samples.",
        ),
    ] = None,
    client_cpus: Annotated[int, typer.Option("--client-cpus", help="CPUs each simulated client gets.")] = 1,
    client_gpus: Annotated[
        float, typer.Option("--client-gpus", help="GPU fraction each client gets (e.g. 0.5).")
    ] = 0.0,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after this many seconds (0: no limit).")] = 0.0,
    ray_address: Annotated[
        str,
        typer.Option(
            "--ray-address", metavar="HOST:PORT", help="Run the clients on this Ray cluster (`ray start --head`)."
        ),
    ] = "",
    from_record: Annotated[
        Path | None,
        typer.Option(
            "--from-record",
            help="Re-run a run record: its clients, rounds, datasets and run config (-c changes keys, e.g. -c seed=7).",
            file_okay=False,
        ),
    ] = None,
    list_keys: ListKeysOption = False,
    json_: JsonOption = False,
) -> None:
    """Run the zk0 Flower app on Flower's Simulation Engine: N clients, R rounds, one run record.

    Without --dataset it generates a small SO-100-style dataset per client (a different task each)
    and uses the tiny offline backbone, so it works out of the box with no network. Every key of
    the run config (lr schedule, FedProx mu, local steps, ...) can be set with --run-config;
    --list-keys lists them.
    """
    from zk0cli.fl.run_config import parse_overrides
    from zk0cli.services import simulation

    if list_keys:
        print_run_config_keys()
        return

    if client_cpus < 1:
        raise bad_input(f"--client-cpus must be at least 1, got {client_cpus}", hint="e.g. --client-cpus 1")
    request = simulation.SimRequest(
        clients=clients,
        rounds=rounds,
        run_config=parse_overrides(run_config or []),
        datasets=list(dataset or []),
        client_cpus=client_cpus,
        client_gpus=client_gpus,
        timeout_s=timeout,
        ray_address=ray_address,
    )
    if from_record is not None:
        from zk0cli.services.report import sim_request_from_record

        if dataset:
            raise bad_input(
                "--from-record re-runs the record's own datasets", hint="drop --dataset, or start a new run"
            )
        recorded = sim_request_from_record(from_record, overrides=request.run_config)
        request = dataclasses.replace(
            request, clients=recorded.clients, rounds=recorded.rounds, run_config=recorded.run_config
        )
    result = simulation.run(request, session().paths, on_round=_show_round, on_message=out().info)
    out().result(result.to_dict(), lambda console: _render(console, result))


def _show_round(progress) -> None:
    out().info(round_line(progress.summary, progress.rounds))


def _render(console, result) -> None:
    from rich.table import Table

    table = Table(
        title=f"zk0 sim: {result.config.num_server_rounds} rounds, run {result.run_dir.name}", title_justify="left"
    )
    for column in ("round", "clients", "train loss", "eval loss", "action err", "lr", "mu", "rejected"):
        table.add_column(column, justify="right")
    for line in result.rounds:
        table.add_row(
            str(line["round"]),
            str(line["num_clients"] or "-"),
            _num(line["loss_avg"]),
            _num(line["server_policy_loss"]),
            _num(line["server_action_error"]),
            _num(line["lr"], ".3g"),
            _num(line["mu"], ".3g"),
            str(line["rejected"] + line["failed"] or "-"),
        )
    console.print(table)
    console.print(f"[green]✓[/green] {result.state} in {duration(result.seconds)}; run record: {result.run_dir}")
    console.print(f"  next: zk0 report {result.run_dir.name}")


def _num(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
