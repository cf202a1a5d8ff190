"""`zk0 node`: join a federation with a local dataset (the data never leaves this machine)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from zk0cli.cli.common import (
    DetachOption,
    InstallServiceOption,
    JsonOption,
    out,
    print_systemd_unit,
    session,
    supervise,
)
from zk0cli.core.errors import bad_input

app = typer.Typer(help="Join a federation as a node.", no_args_is_help=True)

INSECURE_WARNING = (
    "[bold red]INSECURE MODE[/bold red]: no TLS, no node key. Training traffic travels in clear text and the "
    "server is not verified. Only for a local demo against a server run with --insecure."
)


@app.command("join")
def join(
    server: Annotated[
        str | None, typer.Option("--server", help="The server's HOST:PORT (config: node.server).")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="Dataset URI: hf:org/name, local:PATH or a path (config: node.dataset)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Node name (default: from the dataset) (config: node.name).")
    ] = None,
    skip_validation: Annotated[
        bool, typer.Option("--skip-validation", help="Do not validate the dataset first (bad data can fail rounds).")
    ] = False,
    detach: DetachOption = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS and no key (only against an --insecure server).")
    ] = False,
    install_service: InstallServiceOption = False,
    json_: JsonOption = False,
) -> None:
    """Validate the dataset, check the server, and train with the federation (restarted if it exits).

    Foreground by default: Ctrl-C leaves the federation and stops every process this node started.
    """
    from zk0cli.datasets.uri import parse_uri
    from zk0cli.services import node as node_service

    s = session()
    config = s.load_config({"node.server": server, "node.dataset": dataset, "node.name": name}).config.node
    if not config.server:
        raise bad_input("no server given", hint="pass --server HOST:9092, or: zk0 config set node.server HOST:9092")
    if not config.dataset:
        raise bad_input(
            "no dataset given", hint="pass --dataset hf:org/name or --dataset PATH, or: zk0 config set node.dataset URI"
        )
    options = node_service.JoinOptions(
        server=config.server,
        dataset=config.dataset,
        name=config.name,
        insecure=insecure,
        skip_validation=skip_validation,
    )
    uri = parse_uri(options.dataset)
    node_name = options.name or node_service.default_name(uri.name)
    if install_service:
        print_systemd_unit(node_service.service_name(node_name), f"zk0 node {node_name}")
        return
    if insecure:
        out().warning(INSECURE_WARNING)
    pki = node_service.node_pki(s.paths, insecure=insecure)
    _validate(node_service, uri, skip_validation)
    checked = node_service.check_server(options.server, ca_cert=pki.ca_cert if pki else None)
    security = "TLS verified with the pinned CA" if checked["tls"] else "no TLS"
    out().success(f"server {escape(options.server)} reachable ({security})")
    spec = node_service.build_spec(s.paths, options, node_name=node_name, dataset_uri=str(uri), pki=pki)
    supervise(
        spec,
        detach=detach,
        render_started=_render_started,
        serving=f"node {escape(node_name)} joining {escape(options.server)} with {escape(str(uri))} (Ctrl-C leaves)",
        stopped=f"node {escape(node_name)} stopped; nothing left running",
    )


def _validate(node_service, uri, skip_validation: bool) -> None:
    if skip_validation:
        out().warning(f"dataset {escape(str(uri))} not validated (--skip-validation): bad data can fail rounds")
        return
    with out().err.status(f"validating {escape(str(uri))}"):
        report = node_service.validate(uri)
    node_service.refuse_on_errors(report, uri)
    extra = f", {report.warnings} warning(s): see `zk0 dataset validate {uri}`" if report.warnings else ""
    out().success(
        f"dataset {escape(str(uri))} valid ({report.episodes} episodes, {report.frames} frames{escape(extra)})"
    )


def _render_started(console, state: dict) -> None:
    info = state["info"]
    node_id = state["processes"]["supernode"]["events"].get("connected", {}).get("groups", {}).get("node_id", "?")
    console.print(
        f"[green]✓[/green] node {escape(info['name'])} connected to {escape(info['server'])} as node id {node_id} "
        f"(supervisor pid {state['supervisor']['pid']})"
    )
    console.print(f"  dataset {escape(info['dataset'])}")
    console.print(f"  logs    zk0 logs node {escape(info['name'])} -f    stop: zk0 stop node {escape(info['name'])}")
