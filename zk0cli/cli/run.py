"""`zk0 run`, `zk0 runs`: start, follow, list and stop training runs on this server."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from zk0cli.cli.common import RUN_HELP, JsonOption, ListKeysOption, SetOption, out, print_run_config_keys, session
from zk0cli.core.timefmt import utc_clock
from zk0cli.core.units import duration
from zk0cli.ui.rounds import round_line

app = typer.Typer(
    help="Start a training run on this server (`zk0 run stop RUN` stops one).", invoke_without_command=True
)


@app.callback()
def run(
    ctx: typer.Context,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Rounds of federated training.", min=1)] = None,
    stream: Annotated[
        bool, typer.Option("--stream", help="Follow the run round by round; exit code = its outcome.")
    ] = False,
    set_: SetOption = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="RUN",
            help=(
                "Continue a stopped run from its last checkpoint (Flower id, record name, a unique prefix or "
                "its directory); --rounds may raise its total."
            ),
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check the run (config, server, nodes, policy, held-out data); submit nothing."),
    ] = False,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="Exit 3 instead of waiting when fewer than min-available-nodes are online."),
    ] = False,
    list_keys: ListKeysOption = False,
    json_: JsonOption = False,
) -> None:
    """Submit the zk0 app to the local SuperLink (Control API on loopback) and print the run id."""
    if ctx.invoked_subcommand is not None:
        return
    if list_keys:
        print_run_config_keys()
        return
    from zk0cli.core.errors import bad_input
    from zk0cli.fl.run_config import parse_overrides
    from zk0cli.services import runs as runs_service

    s = session()
    if resume is not None and set_:
        raise bad_input(
            "--set cannot change a resumed run: it continues with its recorded run config",
            hint="drop --set (only --rounds may raise the total), or start a new run",
        )
    if dry_run:
        if resume is not None:
            raise bad_input("--dry-run checks a new run", hint="drop --resume (a resumed run keeps its checked config)")
        preflight_only(s, rounds=rounds, settings=parse_overrides(set_ or []), no_wait=no_wait)
        return
    if resume is not None:
        submitted = runs_service.resume_run(s.paths, resume, rounds=rounds)
    else:
        with out().err.status("checking the run before submitting it"):
            submitted = runs_service.submit_run(
                s.paths,
                rounds=rounds,
                settings=parse_overrides(set_ or []),
                defaults=s.load_config().config.run,
                no_wait=no_wait,
            )
    for note in submitted.notes:
        out().info(escape(note))
    data = {
        "run_id": submitted.run_id,
        "run_dir": str(submitted.run_dir),
        "rounds": submitted.rounds,
        "resumed": resume is not None,
    }
    verb = "resumed" if resume is not None else "submitted"
    out().success(
        f"run {submitted.run_id} {verb}: {submitted.rounds} round(s); record in {escape(str(submitted.run_dir))}"
    )
    if not stream:
        out().info(f"follow it: zk0 logs run {submitted.run_id} -f, or zk0 status --watch")
        out().result({**data, "state": "submitted"})
        return
    try:
        with out().messages.status(f"run {submitted.run_id}: starting (the nodes load the policy)") as spinner:

            def on_round(summary: dict, rounds: int) -> None:
                print_round(summary, rounds)
                if summary["round"] < rounds:
                    spinner.update(f"run {submitted.run_id}: round {summary['round'] + 1}/{rounds} in progress")

            status = runs_service.follow_run(s.paths, submitted, on_round)
    except KeyboardInterrupt:
        out().warning(
            f"stopped following; run {submitted.run_id} goes on. Stop it with: zk0 run stop {submitted.run_id}"
        )
        raise typer.Exit(130) from None
    out().result(
        {**data, "state": status.get("state")},
        lambda c: c.print(
            f"[green]✓[/green] run {submitted.run_id} completed; record in {escape(str(submitted.run_dir))}\n"
            f"  next: zk0 report {submitted.run_id}"
        ),
    )


def preflight_only(s, *, rounds: int | None, settings: dict, no_wait: bool) -> None:
    """``--dry-run``: the checks a run makes before it is submitted, as a table; exit as the run would."""
    from zk0cli.services import preflight
    from zk0cli.services import runs as runs_service
    from zk0cli.ui.checks import render_checks

    config = runs_service.run_config_for(s.paths, rounds=rounds, settings=settings, defaults=s.load_config().config.run)
    with out().err.status("checking the run"):
        checks = preflight.run_preflight(s.paths, config, no_wait=no_wait)
    out().result(
        {"checks": [c.to_dict() for c in checks], "run_config": config.to_flwr()},
        lambda c: render_checks(c, checks, title="zk0 run --dry-run: nothing submitted"),
    )
    if (failure := preflight.first_failure(checks)) is not None:
        raise typer.Exit(int(failure.code))  # the table said why


@app.command("stop")
def stop(run: Annotated[str, typer.Argument(metavar="RUN", help=RUN_HELP)], json_: JsonOption = False) -> None:
    """Stop a run (the nodes abandon its current round)."""
    from zk0cli.services import runs as runs_service

    result = runs_service.stop_run(session().paths, run)
    out().result(result, lambda c: c.print(f"[green]✓[/green] run {result['run_id']} stopped"))


def runs(json_: JsonOption = False) -> None:
    """List this machine's runs, newest first: record name and Flower id (either names the run
    in every command), status, start and elapsed time; centralized runs too."""
    from rich import box
    from rich.table import Table

    from zk0cli.services import runs as runs_service
    from zk0cli.services.status.model import short_status

    listed, missing = runs_service.list_runs(session().paths)

    def render(console) -> None:
        if missing:
            out().warning(escape(missing))
        if not listed:
            console.print("no runs yet: zk0 run --rounds N --stream")
            return
        # one space between columns: the two ids a person copies (26 + 20 characters) stay whole in 80
        table = Table(box=box.SIMPLE_HEAD, padding=0, pad_edge=False, show_edge=False)
        table.add_column("run", no_wrap=True)
        table.add_column("flower id", no_wrap=True)
        for column in ("rounds", "started UTC", "took"):
            table.add_column(column, no_wrap=True, justify="right" if column == "took" else "left")
        for item in listed:
            table.add_row(
                item["name"] or "-",
                str(item["flwr_run_id"] or ("centralized" if item["mode"] == "centralized" else "-")),
                f"{item['rounds']}/{item['rounds_total'] or '?'} {short_status(item['status'])}",
                utc_clock(item["started_at"])[5:16],  # MM-DD HH:MM: seconds are noise in a listing
                duration(item["elapsed_s"]),
            )
        console.print(table)

    out().result({"runs": listed, "left_out": missing}, render)


def print_round(summary: dict, rounds: int) -> None:
    out().info(round_line(summary, rounds))
