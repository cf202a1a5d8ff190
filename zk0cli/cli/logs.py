"""`zk0 logs`: what the supervised processes printed, and the log of a training run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from zk0cli.cli.common import JsonOption, out, session
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
    _show("server", follow, tail, since, json_)


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
    _show(service, follow, tail, since, json_)


@app.command("run")
def run(
    run_id: Annotated[str, typer.Argument(help="Run id (from `zk0 run` or `flwr ls`).")],
    follow: FollowOption = False,
) -> None:
    """A training run's log (what the ServerApp printed), from the local server."""
    import subprocess

    from zk0cli.services import flower
    from zk0cli.services import server as server_service

    if not run_id.isdigit():
        raise bad_input(f"'{run_id}' is not a run id", hint="run ids are numbers")
    s = session()
    server_service.require_running(s.paths)
    command = ["flwr", "log", run_id, flower.CLI_CONNECTION] + (["--stream"] if follow else ["--show"])
    try:
        done = subprocess.run(command, env=flower.flwr_env(s.paths), check=False)
    except KeyboardInterrupt:
        return
    if done.returncode != 0:
        raise typer.Exit(done.returncode)


def _show(service: str, follow: bool, tail: int | None, since: str | None, json_mode: bool) -> None:
    from zk0cli.services import supervisor

    s = session()
    if follow and json_mode:
        raise bad_input("--follow and --json do not go together", hint="use --json with --tail or --since")
    if not supervisor.log_files(s.paths, service):
        commands = [_logs_command(known) for known in supervisor.logged_services(s.paths)]
        raise bad_input(
            f"no log for {service} here",
            hint=f"logs on this machine: {', '.join(commands)}" if commands else "no service has run here yet",
        )
    moment = supervisor.parse_since(since) if since else None
    lines = supervisor.read_log(s.paths, service, tail=tail, since=moment)

    def render(console: Console) -> None:
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)

    out().result({"service": service, "lines": lines}, render)
    if follow:
        try:
            supervisor.follow_log(
                s.paths, service, lambda line: out().out.print(line, markup=False, highlight=False, soft_wrap=True)
            )
        except KeyboardInterrupt:
            pass


def _logs_command(service: str) -> str:
    return f"zk0 logs node {service.removeprefix('node-')}" if service.startswith("node-") else f"zk0 logs {service}"
