"""The CLI shell: version, JSON envelope, plain output, error handling, generated docs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZK0 = Path(sys.executable).parent / "zk0"


def test_version_plain_and_verbose(cli):
    assert cli("--version").stdout.strip().startswith("zk0 ")
    versions = cli("--json", "--version", "-v").json()
    assert set(versions) >= {"zk0", "flwr", "lerobot", "torch", "transformers"}
    assert versions["flwr"].startswith("1.42")


def test_json_mode_keeps_stdout_parseable(cli):
    result = cli("--json", "init", "--role", "server", "--yes")
    assert result.code == 0
    assert result.json()["role"] == "server"
    again = cli("config", "path", "--json")  # --json is accepted after the command too
    assert set(again.json()) >= {"config_file", "data_dir", "state_dir", "log_dir"}


def test_json_errors_are_a_json_document_too(cli):
    result = cli("--json", "config", "get", "no.such.key")
    assert result.code == 2
    assert result.json() == {
        "error": "unknown config key 'no.such.key'",
        "hint": "see `zk0 config show` for the keys; run-config defaults are run.KEY (`zk0 run --list-keys`)",
        "exit_code": 2,
    }


def test_config_commands_round_trip(cli):
    assert cli("config", "set", "server.port", "9100").code == 0
    assert cli("config", "get", "server.port").stdout.strip() == "9100"
    shown = cli("--json", "config", "show").json()
    port = next(row for row in shown["values"] if row["key"] == "server.port")
    assert port == {"key": "server.port", "value": 9100, "source": "file"}
    bad = cli("config", "set", "server.port", "many")
    assert bad.code == 2 and "not an integer" in bad.stderr


def test_alternative_config_file(cli, tmp_path):
    other = tmp_path / "other.toml"
    assert cli("--config", str(other), "config", "set", "node.name", "alice").code == 0
    assert 'name = "alice"' in other.read_text()
    assert cli("config", "get", "node.name").stdout.strip() == ""


def run_console_script(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([str(ZK0), *args], capture_output=True, text=True, env=env, timeout=60)


def test_console_script_exit_codes_and_no_colour_in_pipes(zk0_home):
    ok = run_console_script("config", "show")
    assert ok.returncode == 0 and "\x1b[" not in ok.stdout  # a pipe gets no escape codes
    bad = run_console_script("config", "get", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("Error: unknown config key") and "Traceback" not in bad.stderr


def test_no_color_is_respected_on_a_terminal_too(zk0_home):
    red = "\x1b[1;31m"
    forced = run_console_script("config", "get", "nope", env_extra={"FORCE_COLOR": "1"})
    assert red in forced.stderr
    plain = run_console_script("config", "get", "nope", env_extra={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert red not in plain.stderr and "31m" not in plain.stderr  # bold stays, colour goes


def test_unexpected_errors_are_one_line_unless_verbose(cli, monkeypatch):
    from zk0cli.core import config

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(config, "read_file", boom)
    quiet = cli("config", "show")
    assert quiet.code == 1 and "unexpected RuntimeError: kaboom" in quiet.stderr and "-v" in quiet.stderr
    assert "Traceback" not in quiet.stderr


def test_generated_command_reference_is_current():
    check = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_reference.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    reference = (ROOT / "docs" / "commands.md").read_text()
    assert not [entity for entity in ("&#x27;", "&lt;", "&gt;", "&quot;", "&amp;") if entity in reference]


def test_readme_quickstart_and_ci_use_the_same_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./install.sh --test" in readme and "./install.sh --test" in ci


def test_runs_lists_federated_and_centralized_records_in_80_columns_without_a_server(zk0_home):
    """Issue 12: `zk0 runs` shows both names of a run, centralized runs too, and says what it left out."""
    from test_report import write_record

    from zk0cli.core.files import atomic_write_json

    runs = zk0_home / "data" / "runs"
    federated = write_record(runs, "20261203-080000-4242-run", [2.0, 1.5, 1.2])
    config = json.loads((federated / "config.json").read_text())
    atomic_write_json(federated / "config.json", {**config, "flwr_run_id": 13705448887388137106})
    write_record(runs, "20261203-081500-4243-train", [2.0, 1.4], mode="centralized")
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    shown = subprocess.run(
        [sys.executable, "-m", "zk0cli", "runs"], capture_output=True, text=True, env=env, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "13705448887388137106" in shown.stdout and "20261203-080000-4242-run" in shown.stdout  # whole
    assert "centralized" in shown.stdout and "20261203-081500-4243-train" in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80
    assert "Flower's runs left out" in shown.stderr and "zk0 server serve" not in shown.stdout


def command_paths() -> list[list[str]]:
    """Every command and group of the zk0 app, found from the app itself (new ones included)."""
    import click
    import typer

    from zk0cli.cli.app import app

    found: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        found.append(path)
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_every_help_screen_fits_80_columns_without_cutting_a_word():
    """Issue 12: `serve --help` cut option names (`--require-node-a…`) and dropped `[config: ...]`."""
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    cut = {}
    for path in command_paths():
        shown = subprocess.run(
            [sys.executable, "-m", "zk0cli", *path, "--help"], capture_output=True, text=True, env=env, timeout=60
        )
        assert shown.returncode == 0, (path, shown.stderr)
        bad = [line for line in shown.stdout.splitlines() if "…" in line or len(line) > 80]
        if bad:
            cut[" ".join(path)] = bad
    assert not cut
    serve = subprocess.run(
        [sys.executable, "-m", "zk0cli", "server", "serve", "--help"], capture_output=True, text=True, env=env
    )
    assert "(config:" in serve.stdout and "server.host)" in serve.stdout  # not eaten as rich markup
