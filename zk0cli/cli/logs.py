"""`zk0 logs`: what the supervised processes printed, and the log of a training run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from zk0cli.cli.common import RUN_HELP, JsonOption, out, session
from zk0cli.core.errors import bad_input

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(help="Show the logs of the server, a node, or a run.", no_args_is_help=True)

FollowOption = Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C ends).")]
TailOption = Annotated[int | None, typer.Option("--tail", "-n", help="Only the last N lines (default 50).", min=0)]
SinceOption = Annotated[
    str | None, typer.Option("--since", help="Lines from this long ago (30s, 10m, 2h, 1d) or an ISO time.")
]


@app.command("server")
def server(
    follow: FollowOption = False, tail: TailOption = None, since: SinceOption = None, json_: JsonOption = False
) -> None:
    """The server's log: SuperLink, fleet proxy and supervisor events."""
    _show_service("server", follow, tail, since, json_)


@app.command("node")
def node(
    name: Annotated[
        str, typer.Argument(help="Node name as given to `zk0 node join --name`, or its service name (node-NAME).")
    ],
    follow: FollowOption = False,
    tail: TailOption = None,
    since: SinceOption = None,
    json_: JsonOption = False,
) -> None:
    """A node's log: its SuperNode, its ClientApp host (every round's training) and supervisor events."""
    from zk0cli.services import supervisor

    service = f"node-{name}"
    if name.startswith("node-") and not supervisor.log_files(session().paths, service):
        service = name  # the service name `zk0 status` shows
    _show_service(service, follow, tail, since, json_)


@app.command("run")
def run(
    run: Annotated[str, typer.Argument(metavar="RUN", help=RUN_HELP)],
    follow: FollowOption = False,
    tail: TailOption = None,
    since: SinceOption = None,
    json_: JsonOption = False,
) -> None:
    """A run's log: what its ServerApp logged, kept in the run's record (server.log)."""
    from zk0cli.fl.records import RUN_LOG
    from zk0cli.services import runs as runs_service

    record = runs_service.find_run_record(session().paths, run)
    log = record / RUN_LOG
    if not log.exists():
        raise bad_input(
            f"run {record.name} has no {RUN_LOG} in {record}",
            hint="it is written from the run's first line on; `zk0 runs` shows whether the run started",
        )
    _show(f"run {record.name}", [log], log, follow, tail, since, json_)


def _show_service(service: str, follow: bool, tail: int | None, since: str | None, json_mode: bool) -> None:
    from zk0cli.services import supervisor

    s = session()
    files = supervisor.log_files(s.paths, service)
    if not files:
        commands = [_logs_command(known) for known in supervisor.logged_services(s.paths)]
        raise bad_input(
            f"no log for {service} here",
            hint=f"logs on this machine: {', '.join(commands)}" if commands else "no service has run here yet",
        )
    _show(service, files, supervisor.ServiceFiles.of(s.paths, service).log, follow, tail, since, json_mode)


def _show(
    label: str, files: list[Path], live: Path, follow: bool, tail: int | None, since: str | None, json_mode: bool
) -> None:
    """Every `zk0 logs` command: the same options, the same line format, the same JSON."""
    from zk0cli.services import supervisor

    if follow and json_mode:
        raise bad_input("--follow and --json do not go together", hint="use --json with --tail or --since")
    moment = supervisor.parse_since(since) if since else None
    lines = supervisor.read_lines(files, tail=tail, since=moment)

    def render(console: Console) -> None:
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)

    out().result({"log": label, "lines": lines}, render)
    if follow:
        try:
            supervisor.follow_log(
                live, lambda line: out().out.print(line, markup=False, highlight=False, soft_wrap=True)
            )
        except KeyboardInterrupt:
            pass


def _logs_command(service: str) -> str:
    return f"zk0 logs node {service.removeprefix('node-')}" if service.startswith("node-") else f"zk0 logs {service}"
