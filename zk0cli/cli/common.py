"""Small helpers every command shares: the session context and common options."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from zk0cli.core import config as config_mod
from zk0cli.core.errors import Zk0Error
from zk0cli.core.paths import Paths
from zk0cli.datasets import hub_progress
from zk0cli.ui import downloads, output

if TYPE_CHECKING:
    from rich.console import Console

    from zk0cli.services.supervisor import ServiceSpec


@dataclass
class Session:
    """What the root callback resolved once for the whole invocation."""

    paths: Paths
    config_file: Path

    def load_config(self, flags: Mapping[str, Any] | None = None) -> config_mod.LoadedConfig:
        return config_mod.load(self.config_file, flags=flags)


_session: Session | None = None


def start_session(config_file: Path | None) -> Session:
    global _session
    paths = Paths.resolve()
    _session = Session(paths=paths, config_file=config_file or paths.config_file)
    _apply_hub_environment(_session)
    hub_progress.set_watcher(downloads.show)  # zk0's own download progress, on a terminal only
    return _session


def _apply_hub_environment(s: Session) -> None:
    """hf.endpoint / hf.home replace HF_ENDPOINT / HF_HOME for this process, so for every process
    it starts too (before anything imports huggingface_hub, which reads them once). The Hub's
    progress bars are off unless HF_HUB_DISABLE_PROGRESS_BARS says otherwise."""
    # zk0 shows its own download progress (ui/downloads.py); the Hub's tqdm bars, where LeRobot
    # downloads on its own, would tangle with it (and fill service logs)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        hub = s.load_config().config.hf
    except Zk0Error:
        return  # the command that needs the config reports what is wrong with it
    os.environ.update(hub.environment())


def session() -> Session:
    return _session if _session is not None else start_session(None)


def out() -> output.Output:
    return output.current()


def _enable_json(value: bool) -> bool:
    if value:
        current = output.current()
        output.configure(json_mode=True, verbose=current.verbose)
    return value


JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document on stdout (messages go to stderr).", callback=_enable_json),
]

RUN_HELP = "The run: its Flower id or record name (either from `zk0 runs`), a unique prefix, or its directory."

# The options several commands share, typed once (as huggingface_hub's CLI does), so each reads
# and validates the same way everywhere.
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "--run-config",
        "-c",
        metavar="KEY=VALUE",
        help="Run-config KEY=VALUE, repeatable, e.g. --set local-steps=20 (`--list-keys` lists the keys).",
    ),
]
ListKeysOption = Annotated[
    bool, typer.Option("--list-keys", help="List every run-config key with its default, and exit.")
]
RoundsOption = Annotated[int, typer.Option("--rounds", "-r", min=1, help="Federated rounds.")]
DetachOption = Annotated[
    bool, typer.Option("--detach", help="Run in the background under zk0's supervisor; `zk0 stop` ends it.")
]
InstallServiceOption = Annotated[
    bool, typer.Option("--install-service", help="Print a systemd user unit for this command.")
]


def print_run_config_keys() -> None:
    """``--list-keys``: every run-config key with its default and meaning (the same for every command)."""
    from rich.table import Table

    from zk0cli.fl.run_config import documentation

    keys = [{"key": key, "default": default, "doc": doc} for key, default, doc in documentation()]

    def render(console: Console) -> None:
        table = Table(title="run-config keys (--set KEY=VALUE)", title_justify="left")
        for column in ("key", "default", "meaning"):
            table.add_column(column, overflow="fold")
        for row in keys:
            table.add_row(row["key"], repr(row["default"]), row["doc"])
        console.print(table)

    out().result(keys, render)


def print_systemd_unit(service: str, description: str) -> None:
    """``--install-service``: the systemd user unit that runs this very command in the foreground."""
    from zk0cli.services import supervisor

    unit = supervisor.systemd_unit(service, supervisor.service_argv(sys.argv[1:]), description)
    out().result({"unit": unit}, lambda c: c.print(unit, markup=False, highlight=False, soft_wrap=True))


def supervise(
    spec: ServiceSpec,
    *,
    detach: bool,
    render_started: Callable[[Console, dict[str, Any]], None],
    serving: str,
    stopped: str,
) -> None:
    """Run a service under zk0's supervisor: detached (then say what started), or here until
    Ctrl-C, printing its events as they happen. ``serving`` and ``stopped`` are rich markup."""
    from zk0cli.services import supervisor

    paths = session().paths
    if detach:
        state = supervisor.start_detached(paths, spec)
        out().result(state, lambda c: render_started(c, state))
        return
    out().info(serving)
    supervisor.run_foreground(paths, spec, _print_event)
    final = supervisor.read_state(paths, spec.name) or {}
    out().result(final, lambda c: c.print(stopped))


def _print_event(level: str, message: str) -> None:
    from rich.markup import escape

    if level == "info":
        out().info(escape(message))
    else:
        out().warning(escape(message))
