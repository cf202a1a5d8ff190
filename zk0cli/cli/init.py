"""`zk0 init`: set this machine up as the federation server or as a node."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from zk0cli.cli.common import JsonOption, out, session
from zk0cli.core.errors import bad_input


class Role(StrEnum):
    server = "server"
    node = "node"


def init(
    role: Annotated[
        Role | None, typer.Option("--role", help="server: runs the SuperLink; node: trains on a local dataset.")
    ] = None,
    public_address: Annotated[
        list[str] | None,
        typer.Option("--public-address", help="[server] DNS name or IP nodes use to reach you (repeatable)."),
    ] = None,
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="[node] The federation's ca.pem, from the server admin.")
    ] = None,
    server: Annotated[str, typer.Option("--server", help="[node] The server's HOST:PORT.")] = "",
    dataset: Annotated[str, typer.Option("--dataset", help="[node] Dataset URI this node trains on.")] = "",
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing keys (a timestamped backup is kept).")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Never prompt: take defaults for what is not given.")
    ] = False,
    json_: JsonOption = False,
) -> None:
    """Create the config, directories, keys and certificates for a server or a node."""
    from zk0cli.services import init as init_service

    s = session()
    ask = _prompter(yes)
    if role is None:
        role = Role(ask("Role of this machine", choices=["server", "node"], missing="--role server|node"))
    if role is Role.server:
        addresses = public_address or []
        if not addresses and not yes:
            answer = ask(
                "Public address(es) nodes will use, comma-separated (empty: loopback only)",
                default="",
                missing="--public-address HOST",
            )
            addresses = [a.strip() for a in answer.split(",") if a.strip()]
        result = init_service.init_server(s.paths, s.config_file, addresses, force=force)
    else:
        if ca_cert is None:
            if yes:
                raise bad_input(
                    "a node needs the federation's CA certificate",
                    hint="pass --ca-cert PATH (the server admin's ca.pem)",
                )
            ca_cert = Path(ask("Path to the federation's ca.pem", missing="--ca-cert PATH"))
        result = init_service.init_node(s.paths, s.config_file, ca_cert, server=server, dataset=dataset, force=force)
    out().result(result.to_dict(), lambda c: _render(c, result))


def _prompter(yes: bool):
    """A prompt function that refuses to block when there is no terminal to answer it."""

    def ask(question: str, *, missing: str, choices: list[str] | None = None, default: str | None = None) -> str:
        if yes or not sys.stdin.isatty():
            raise bad_input(
                f"{missing.split()[0]} is required when zk0 cannot prompt (no terminal, or --yes)",
                hint=f"pass {missing}",
            )
        from rich.prompt import Prompt

        if default is None:
            return Prompt.ask(question, choices=choices, console=out().err)
        return Prompt.ask(question, choices=choices, default=default, console=out().err)

    return ask


def _render(console, result) -> None:
    console.print(
        f"[green]✓[/green] initialised as [bold]{result.role}[/bold]; config: {escape(str(result.config_file))}"
    )
    for purpose, path in result.files.items():
        console.print(f"  {purpose:12} {escape(path)}")
    if result.backup_dir:
        console.print(f"  previous keys backed up to {escape(str(result.backup_dir))}")
    if result.role == "server":
        console.print("\nCA fingerprint (node operators compare it):")
        _print_verbatim(console, result.ca_fingerprint)
        console.print(f"Send {escape(result.files['ca_cert'])} to node operators. Next: [bold]zk0 server serve[/bold]")
    else:
        console.print("\nCA fingerprint pinned (check it with the server admin):")
        _print_verbatim(console, result.ca_fingerprint)
        console.print("Public key for the admin to register (`zk0 server nodes add`):")
        _print_verbatim(console, result.public_key)


def _print_verbatim(console, text: str) -> None:
    """A value people compare or copy, on a line of its own: no markup, no emoji (rich would turn
    ``:CD:`` of a fingerprint into one), no highlighting, never wrapped into two lines."""
    console.print(text, markup=False, emoji=False, highlight=False, soft_wrap=True)
