"""`zk0 stop`: stop the server, a node, or everything zk0 runs on this machine."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from zk0cli.cli.common import JsonOption, out, session
from zk0cli.core.errors import bad_input


def stop(
    target: Annotated[str | None, typer.Argument(help="server, or node.", show_default=False)] = None,
    name: Annotated[str | None, typer.Argument(help="The node's name (for `node`).", show_default=False)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Stop every zk0 service on this machine.")] = False,
    json_: JsonOption = False,
) -> None:
    """Stop a supervised service and every process it started (SuperExec, ServerApp, ClientApp host)."""
    from zk0cli.services import supervisor

    paths = session().paths
    services = _targets(paths, target, name, all_)
    results = []
    for service in services:
        state = supervisor.read_state(paths, service)
        if state is None or (not state["supervisor_alive"] and not supervisor.lock_holder(paths, service)):
            results.append({"service": service, "was": state["state"] if state else "unknown", "stopped": False})
            continue
        with out().err.status(f"stopping {escape(service)} and every process it started"):
            outcome = supervisor.stop_service(paths, service)
        results.append({**outcome, "stopped": True})

    def render(console) -> None:
        if not results:
            console.print("nothing to stop: no zk0 service runs here")
        for result in results:
            if result["stopped"]:
                console.print(f"[green]✓[/green] stopped {escape(str(result['service']))}")
            else:
                console.print(f"{escape(str(result['service']))} was not running")

    out().result({"services": results}, render)


def _targets(paths, target: str | None, name: str | None, all_: bool) -> list[str]:
    from zk0cli.services import supervisor

    known = supervisor.service_names(paths)
    if all_:
        if target:
            raise bad_input("--all stops everything: give no target with it", hint="zk0 stop --all, or zk0 stop server")
        return [s for s in known if (supervisor.read_state(paths, s) or {}).get("supervisor_alive")]
    if target == "server" and name is None:
        return ["server"] if "server" in known else _not_known("server", known)
    if target == "node" and name:
        service = f"node-{name}"
        return [service] if service in known else _not_known(service, known)
    raise bad_input("say what to stop", hint="zk0 stop server | zk0 stop node NAME | zk0 stop --all")


def _not_known(service: str, known: list[str]) -> list[str]:
    nodes = [s.removeprefix("node-") for s in known if s.startswith("node-")]
    hint = f"nodes known here: {', '.join(nodes)}" if nodes else "see `zk0 status` for what runs here"
    raise bad_input(f"{service} has never run on this machine", hint=hint)
