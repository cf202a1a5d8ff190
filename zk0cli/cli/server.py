"""`zk0 server`: serve the federation and decide which nodes may join."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from zk0cli.cli.common import (
    DetachOption,
    InstallServiceOption,
    JsonOption,
    RoundsOption,
    SetOption,
    out,
    print_systemd_unit,
    session,
    supervise,
)
from zk0cli.core.errors import bad_input
from zk0cli.core.timefmt import utc_clock

if TYPE_CHECKING:
    from zk0cli.services.server import ServeOptions

app = typer.Typer(help="Run the federation server (SuperLink behind a fleet-only TLS front).", no_args_is_help=True)
nodes_app = typer.Typer(help="Register the nodes allowed to join (used when node auth is on).", no_args_is_help=True)
app.add_typer(nodes_app, name="nodes")

INSECURE_WARNING = (
    "[bold red]INSECURE MODE[/bold red]: no TLS and no node authentication. Anyone on the network can read or "
    "alter training traffic and join as a node. Use it only for a local demo on a trusted network."
)


@app.command("serve")
def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Public address nodes connect to (config: server.host).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Public port (config: server.port).")] = None,
    control_port: Annotated[
        int, typer.Option("--control-port", help="The SuperLink's own port on 127.0.0.1 (default: port+1).")
    ] = 0,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS: demo only, and only with node auth off.")
    ] = False,
    database: Annotated[
        str | None, typer.Option("--database", help="SuperLink SQLite file (config: server.database).")
    ] = None,
    no_node_auth: Annotated[
        bool,
        typer.Option(
            "--no-require-node-auth",
            help="Let any node join, not only registered keys (the config's require-node-auth).",
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Confirm --no-require-node-auth with TLS: anyone may then join.")
    ] = False,
    detach: DetachOption = False,
    install_service: InstallServiceOption = False,
    auto_run: Annotated[
        bool,
        typer.Option(
            "--auto-run", help="Start a training session whenever --min-nodes nodes are online and none runs."
        ),
    ] = False,
    min_nodes: Annotated[int, typer.Option("--min-nodes", help="--auto-run: online nodes a session needs.", min=1)] = 2,
    rounds: RoundsOption = 3,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Serve the federation: Fleet API on the public address, Control API only on this host.

    Foreground by default: Ctrl-C stops the SuperLink, its proxy and every process they started.
    With --auto-run the server also starts a session of --rounds rounds (run config: --set)
    whenever --min-nodes nodes are online and none is running, and the next one when it ends
    (logged in `zk0 logs server`).
    """
    from zk0cli.services import server as server_service

    if install_service:
        print_systemd_unit("server", "zk0 federation server")
        return
    s = session()
    flags = {
        "server.host": host,
        "server.port": port,
        "server.database": database,
        "server.require-node-auth": False if no_node_auth else None,
    }
    config = s.load_config(flags).config.server
    options = server_service.ServeOptions(
        host=config.host,
        port=config.port,
        control_port=control_port,
        insecure=insecure,
        database=config.database,
        require_node_auth=config.require_node_auth,
        auto_run=auto_run,
        min_nodes=min_nodes,
        rounds=rounds,
        run_settings=list(set_ or []),
    )
    if not insecure and not config.require_node_auth:
        _confirm_open_federation(options, confirmed=yes or not no_node_auth)
    spec = server_service.build_spec(s.paths, options)
    if insecure:
        out().warning(INSECURE_WARNING)
    server_service.prepare_cli_connection(s.paths, spec)
    supervise(
        spec,
        detach=detach,
        render_started=_render_started,
        serving=f"serving the federation on {escape(spec.info['public_address'])} (Ctrl-C stops it)",
        stopped="server stopped; nothing left running",
    )


def _confirm_open_federation(options: ServeOptions, *, confirmed: bool) -> None:
    """TLS without node auth encrypts traffic but lets any client that reaches the port join,
    receive the global weights and send updates: the flag alone must not do that by accident
    (a config file that says so is deliberate enough)."""
    risk = (
        f"node authentication is off: anyone who reaches {options.host}:{options.port} can join as a node, "
        "receive every round's weights and send updates"
    )
    if not confirmed:
        raise bad_input(risk, hint="add --yes to serve like this anyway, or drop --no-require-node-auth")
    out().warning(risk)


def _render_started(console, state: dict) -> None:
    info = state["info"]
    console.print(f"[green]✓[/green] server running in the background (supervisor pid {state['supervisor']['pid']})")
    console.print(
        f"  nodes join     {escape(info['public_address'])}  ({'TLS' if info['tls'] else 'NO TLS'}, "
        f"node auth {'on' if info['node_auth'] else 'off'})"
    )
    console.print(f"  control (local) {escape(info['control_address'])}")
    console.print(f"  database       {escape(info['database'])}")
    console.print("  logs           zk0 logs server -f    stop: zk0 stop server")


@nodes_app.command("add")
def nodes_add(
    public_key_file: Annotated[Path, typer.Argument(help="The node's node_key.pub (from `zk0 init --role node`).")],
    name: Annotated[str, typer.Option("--name", help="A name to recognise the node by.")],
    json_: JsonOption = False,
) -> None:
    """Register a node's public key: from now on it may join."""
    from zk0cli.services import server as server_service

    result = server_service.add_node(session().paths, public_key_file, name)
    out().result(result, lambda c: c.print(f"[green]✓[/green] registered node {escape(name)} (id {result['node_id']})"))


@nodes_app.command("list")
def nodes_list(json_: JsonOption = False) -> None:
    """List registered nodes and whether they are online."""
    from rich import box
    from rich.table import Table

    from zk0cli.services import server as server_service

    nodes = server_service.list_nodes(session().paths)

    def render(console) -> None:
        if not nodes:
            console.print("no nodes registered yet: zk0 server nodes add NODE_KEY.pub --name NAME")
            return
        table = Table(box=box.SIMPLE_HEAD, show_edge=False)
        for column in ("name", "node id", "status", "since (UTC)"):
            table.add_column(column, no_wrap=column != "name")
        for node in nodes:
            since = node["online_at"] if node["status"] == "online" else node["offline_at"] or node["registered_at"]
            status = node["status"] + (" (quarantined)" if node.get("quarantined") else "")
            table.add_row(escape(node["name"]) or "-", node["node_id"], status, utc_clock(since)[:16])
        console.print(table)

    out().result({"nodes": nodes}, render)


@nodes_app.command("release")
def nodes_release(
    node: Annotated[str, typer.Argument(metavar="NODE", help="Its name or node id, from `zk0 server nodes list`.")],
    json_: JsonOption = False,
) -> None:
    """Take a quarantined node back: it is sampled again from the next round on."""
    from zk0cli.services import server as server_service

    result = server_service.release_node(session().paths, node)
    out().result(result, lambda c: c.print(f"[green]✓[/green] node {result['node_id']} released", markup=True))


@nodes_app.command("remove")
def nodes_remove(
    node: Annotated[str, typer.Argument(metavar="NODE", help="Its name or node id, from `zk0 server nodes list`.")],
    json_: JsonOption = False,
) -> None:
    """Unregister a node: it can no longer join."""
    from zk0cli.services import server as server_service

    result = server_service.remove_node(session().paths, node)
    label = f" ({result['name']})" if result["name"] else ""
    out().result(result, lambda c: c.print(f"[green]✓[/green] unregistered node {result['node_id']}{escape(label)}"))
