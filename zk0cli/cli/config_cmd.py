"""`zk0 config`: where the config lives, what is in effect, and changing one key."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from zk0cli.cli.common import JsonOption, out, session
from zk0cli.core import config as config_mod

app = typer.Typer(help="Show and change zk0's configuration.", no_args_is_help=True)


@app.command("path")
def path(json_: JsonOption = False) -> None:
    """Print the config file and every directory zk0 uses."""
    s = session()
    data = {
        "config_file": str(s.config_file),
        "config_dir": str(s.paths.config_dir),
        "data_dir": str(s.paths.data_dir),
        "state_dir": str(s.paths.state_dir),
        "log_dir": str(s.paths.log_dir),
    }
    out().result(data, lambda c: c.print("\n".join(f"{k:12} {v}" for k, v in data.items()), markup=False))


@app.command("show")
def show(json_: JsonOption = False) -> None:
    """Show every key with its effective value and where it came from."""
    loaded = session().load_config()
    rows = [
        {"key": key, "value": config_mod.get_value(loaded.config, key), "source": loaded.sources[key]}
        for key in [*config_mod.keys(), *config_mod.run_keys(loaded.config)]
    ]

    def render(console) -> None:
        table = Table(
            title=f"config ({loaded.path})",
            title_justify="left",
            caption=(
                "override any key with ZK0_<KEY>, e.g. ZK0_SERVER_PORT=9093; run defaults are\n"
                "run.KEY (zk0 config set run.eval-datasets hf:ORG/HELDOUT; keys: zk0 run --list-keys)"
            ),
            caption_justify="left",
        )
        table.add_column("key", no_wrap=True)
        table.add_column("value")
        table.add_column("source")
        for row in rows:
            table.add_row(row["key"], repr(row["value"]), row["source"])
        console.print(table)

    out().result({"file": str(loaded.path), "values": rows}, render)


@app.command("get")
def get(key: Annotated[str, typer.Argument(help="Dotted key, e.g. server.port.")], json_: JsonOption = False) -> None:
    """Print the effective value of one key."""
    value = config_mod.get_value(session().load_config().config, key, run_keys=_run_keys())
    out().result({"key": key, "value": value}, lambda c: c.print(str(value), markup=False))


@app.command("set")
def set_(
    key: Annotated[str, typer.Argument(help="Dotted key, e.g. server.port.")],
    value: Annotated[str, typer.Argument(help="New value; lists are comma-separated.")],
    json_: JsonOption = False,
) -> None:
    """Set one key in the config file (written atomically); run.KEY sets a run-config default."""
    from zk0cli.fl.run_config import check_defaults

    s = session()
    typed = config_mod.set_value(s.config_file, key, value, check_run=check_defaults)
    out().result({"key": key, "value": typed, "file": str(s.config_file)}, lambda c: c.print(f"{key} = {typed!r}"))


@app.command("unset")
def unset(
    key: Annotated[str, typer.Argument(help="Dotted key, e.g. run.local-steps.")], json_: JsonOption = False
) -> None:
    """Remove one key from the config file, so its default applies again."""
    s = session()
    removed = config_mod.unset_value(s.config_file, key, run_keys=_run_keys())
    message = f"{key} removed from {s.config_file}" if removed else f"{key} was not set in {s.config_file}"
    out().result({"key": key, "removed": removed, "file": str(s.config_file)}, lambda c: c.print(message, markup=False))


def _run_keys() -> list[str]:
    """The run-config's key names, for telling a run.* typo from a key that is not set."""
    from zk0cli.fl.run_config import documentation

    return [name for name, _, _ in documentation()]
