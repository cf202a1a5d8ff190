"""The `zk0` command: global options, the command table, and error handling.

Kept light on purpose: nothing here imports torch, lerobot, transformers or flwr, so
`zk0 --help` and `zk0 --version` answer at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from zk0cli import __version__
from zk0cli.cli import common, config_cmd, dataset, doctor, init, logs, node, stop
from zk0cli.cli import compare as compare_cmd
from zk0cli.cli import demo as demo_cmd
from zk0cli.cli import export as export_cmd
from zk0cli.cli import report as report_cmd
from zk0cli.cli import run as run_cmd
from zk0cli.cli import server as server_cmd
from zk0cli.cli import sim as sim_cmd
from zk0cli.cli import status as status_cmd
from zk0cli.cli import train as train_cmd
from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.ui import output

app = typer.Typer(
    name="zk0",
    help="Federated learning for robots: train one SmolVLA policy together, keep your data at home.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("init")(init.init)
app.add_typer(config_cmd.app, name="config")
app.command("doctor")(doctor.doctor)
app.add_typer(dataset.app, name="dataset")
app.command("status")(status_cmd.status)
app.add_typer(server_cmd.app, name="server")
app.add_typer(node.app, name="node")
app.add_typer(logs.app, name="logs")
app.command("stop")(stop.stop)
app.add_typer(run_cmd.app, name="run")
app.command("runs")(run_cmd.runs)
app.command("report")(report_cmd.report)
app.command("sim")(sim_cmd.sim)
app.command("compare")(compare_cmd.compare)
app.command("train")(train_cmd.train)
app.command("demo")(demo_cmd.demo)
app.command("export")(export_cmd.export)


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Show the version (with -v: dependencies too).")] = False,
    json_mode: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="Config file to use instead of the default.", dir_okay=False)
    ] = None,
) -> None:
    out = output.configure(json_mode=json_mode, verbose=verbose)
    common.start_session(config)
    if version:
        from zk0cli.core.versions import package_versions

        versions = package_versions() if verbose else {"zk0": __version__}
        out.result(versions, lambda c: c.print("\n".join(f"{k} {v or 'not installed'}" for k, v in versions.items())))
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        out.out.print(ctx.get_help())


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: turns every known failure into one line and an exit code."""
    try:
        code = app(args=argv, prog_name="zk0", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(n) arrives here as n
    except Zk0Error as error:
        output.current().error(error)
        sys.exit(int(error.code))
    except click.exceptions.NoArgsIsHelpError:
        sys.exit(0)  # the help was printed: nothing went wrong
    except click.exceptions.UsageError as exc:
        _usage_error(exc)
    except click.exceptions.Abort:
        output.current().err.print("Aborted.")
        sys.exit(130)
    except click.ClickException as exc:  # e.g. a file option pointing nowhere
        output.current().error(Zk0Error(exc.format_message(), code=ExitCode.BAD_INPUT))
        sys.exit(int(ExitCode.BAD_INPUT))
    except KeyboardInterrupt:
        output.current().err.print("Interrupted.")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        out = output.current()
        if out.verbose:
            raise
        out.error(Zk0Error(f"unexpected {type(exc).__name__}: {exc}", hint="rerun with -v for the traceback"))
        sys.exit(int(ExitCode.FAILED))


def _usage_error(exc: click.exceptions.UsageError) -> None:
    command = exc.ctx.command_path if exc.ctx else "zk0"
    hint = f"see `{command} --help`"
    output.current().error(Zk0Error(exc.format_message(), hint=hint, code=ExitCode.BAD_INPUT))
    sys.exit(int(ExitCode.BAD_INPUT))
