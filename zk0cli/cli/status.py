"""`zk0 status`: services on this host, the federation's nodes, runs and the current round."""

from __future__ import annotations

from typing import Annotated

import typer

from zk0cli.cli.common import JsonOption, out, session
from zk0cli.core.errors import Zk0Error, bad_input


def status(
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Update in place about once a second; q or Ctrl-C quits.")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, max=60.0, help="Seconds between refreshes with --watch.")
    ] = 1.0,
    json_: JsonOption = False,
) -> None:
    """The federation at a glance: what runs here, which nodes are online, how runs progress.

    A source that cannot be read (a SuperLink that does not answer, a corrupted state file, a supervisor that stopped writing its heartbeat) is shown in red with the reason.
    """  # noqa: E501 - Typer keeps a docstring's line breaks in --help: one line per paragraph
    from zk0cli.services.status import StatusCollector, collect
    from zk0cli.ui.status import render_status
    from zk0cli.ui.status import watch as watch_dashboard

    output = out()
    if watch and output.json_mode:
        raise bad_input("--watch and --json do not go together", hint="use `zk0 status --json` for one snapshot")
    if watch and not output.out.is_terminal:
        raise bad_input("--watch needs a terminal", hint="use `zk0 status` or `zk0 status --json` in scripts")
    paths, role = session().paths, _role()
    if not watch:
        snapshot = collect(paths, role=role)
        output.result(snapshot.to_dict(), lambda console: console.print(render_status(snapshot, width=console.width)))
        return
    watch_dashboard(output.out, StatusCollector(paths, role=role).snapshot, interval_s=interval)


def _role() -> str:
    """The configured role; a config that cannot be read is reported, and status goes on."""
    try:
        return session().load_config().config.role
    except Zk0Error as error:
        out().warning(f"{error.message} (showing status without a role)")
        return ""
