"""Config precedence, atomic writes, and refusing broken files."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zk0cli.core import config
from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.core.files import atomic_write_text
from zk0cli.core.paths import Paths


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    path = tmp_path / "config.toml"
    assert config.load(path, env={}).config.server.port == 9092
    path.write_text("[server]\nport = 9100\n")
    assert config.load(path, env={}).config.server.port == 9100
    loaded = config.load(path, env={"ZK0_SERVER_PORT": "9200"})
    assert (loaded.config.server.port, loaded.sources["server.port"]) == (9200, "env")
    loaded = config.load(path, env={"ZK0_SERVER_PORT": "9200"}, flags={"server.port": 9300})
    assert (loaded.config.server.port, loaded.sources["server.port"]) == (9300, "flag")
    assert loaded.sources["server.host"] == "default"


def test_env_values_are_typed(tmp_path):
    env = {"ZK0_SERVER_PUBLIC_ADDRESSES": "a.example, 10.0.0.1", "ZK0_SERVER_REQUIRE_NODE_AUTH": "no"}
    cfg = config.load(tmp_path / "none.toml", env=env).config
    assert cfg.server.public_addresses == ["a.example", "10.0.0.1"]
    assert cfg.server.require_node_auth is False
    with pytest.raises(Zk0Error) as err:
        config.load(tmp_path / "none.toml", env={"ZK0_SERVER_PORT": "ninety"})
    assert err.value.code == ExitCode.BAD_INPUT and "ZK0_SERVER_PORT" in err.value.message


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('role = "node"\n\n[server]\nport = 9092\ncolour = "blue"\n')
    with pytest.raises(Zk0Error) as err:
        config.load(path, env={})
    assert err.value.code == ExitCode.BAD_INPUT
    assert str(path) in err.value.message and "line 5" in err.value.message and "server.colour" in err.value.message


def test_wrong_type_in_file_is_refused(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[server]\nport = "9092"\n')
    with pytest.raises(Zk0Error, match="server.port.*must be int"):
        config.load(path, env={})


def test_malformed_file_is_never_overwritten(tmp_path):
    path = tmp_path / "config.toml"
    broken = "[server\nport = 1\n"
    path.write_text(broken)
    with pytest.raises(Zk0Error) as err:
        config.set_value(path, "server.port", "9000")
    assert "line 1" in err.value.message and str(path) in err.value.message
    assert path.read_text() == broken


def test_set_value_validates_before_writing(tmp_path):
    path = tmp_path / "config.toml"
    config.set_value(path, "server.port", "9000")
    with pytest.raises(Zk0Error):
        config.set_value(path, "server.port", "70000")
    with pytest.raises(Zk0Error):
        config.set_value(path, "role", "banana")
    assert config.load(path, env={}).config.server.port == 9000
    assert config.load(path, env={}).config.role == ""


def test_host_port_parsing():
    assert config.parse_host_port("fl.example.org:9092", origin="x") == ("fl.example.org", 9092)
    assert config.parse_host_port("[::1]:9092", origin="x") == ("::1", 9092)
    for bad in ("fl.example.org", "host:0", "host:99999", ":9092", "host:port"):
        with pytest.raises(Zk0Error):
            config.parse_host_port(bad, origin="--server")


@settings(max_examples=40, deadline=None)
@given(port=st.integers(1, 65535), names=st.lists(st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True), max_size=4))
def test_set_then_load_round_trips(tmp_path_factory, port, names):
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    config.set_value(path, "server.port", str(port))
    config.set_value(path, "server.public-addresses", ",".join(names))
    loaded = config.load(path, env={}).config
    assert loaded.server.port == port
    assert loaded.server.public_addresses == [n for n in names if n.strip()]


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", explode)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


def test_atomic_write_modes(tmp_path):
    atomic_write_text(tmp_path / "secret", "x", mode=0o600)
    atomic_write_text(tmp_path / "public", "x")
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) & 0o044  # readable by others (umask permitting)


def test_zk0_home_moves_every_path(tmp_path):
    paths = Paths.resolve(tmp_path)
    assert all(str(p).startswith(str(tmp_path)) for p in paths.all_dirs())
    assert paths.config_file == tmp_path / "config" / "config.toml"


def test_without_zk0_home_paths_follow_platformdirs(monkeypatch, tmp_path):
    monkeypatch.delenv("ZK0_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdgc"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdgd"))
    paths = Paths.resolve()
    assert paths.config_dir == tmp_path / "xdgc" / "zk0"
    assert paths.data_dir == tmp_path / "xdgd" / "zk0"


def test_run_defaults_are_set_shown_read_and_unset(cli, zk0_home):
    """Issue 12: server-side run defaults live in config.toml's [run] table, checked as a run would check them."""
    file = zk0_home / "config" / "config.toml"
    assert cli("config", "set", "run.local-steps", "5").code == 0
    assert cli("config", "set", "run.eval-datasets", "hf:org/heldout").code == 0
    assert 'local-steps = 5\neval-datasets = "hf:org/heldout"' in file.read_text()
    rows = {row["key"]: row for row in cli("config", "show", "--json").json()["values"]}
    assert (rows["run.local-steps"]["value"], rows["run.local-steps"]["source"]) == (5, "file")
    assert cli("config", "get", "run.eval-datasets").stdout.strip() == "hf:org/heldout"
    assert "run.KEY" in " ".join(cli("config", "show").stdout.split())  # the table says how to set them

    removed = cli("config", "unset", "run.local-steps", "--json")
    assert removed.code == 0 and removed.json()["removed"] is True
    assert "local-steps" not in file.read_text() and "eval-datasets" in file.read_text()
    again = cli("config", "unset", "run.local-steps", "--json")
    assert again.code == 0 and again.json()["removed"] is False
    unset = cli("--json", "config", "get", "run.local-steps")
    assert unset.code == 2 and "zk0 run --list-keys" in unset.json()["hint"]
    assert "is not set" in unset.json()["error"]


@pytest.mark.parametrize("command", ["get", "unset"])
@pytest.mark.parametrize(
    ("key", "said", "hint"),
    [
        ("run.local-stepz", "unknown run-config key 'local-stepz'", "did you mean run.local-steps?"),
        ("no.such.key", "unknown config key 'no.such.key'", "zk0 config show"),
    ],
)
def test_get_and_unset_of_an_unknown_key_say_so_and_leave_the_file_alone(cli, zk0_home, command, key, said, hint):
    """A typo is not a key that is merely not set: one line, a hint, exit 2, config.toml untouched."""
    file = zk0_home / "config" / "config.toml"
    assert cli("config", "set", "run.local-steps", "5").code == 0
    before = file.read_text()
    refused = cli("--json", "config", command, key)
    assert refused.code == 2, refused.stderr
    assert refused.json()["error"] == said and hint in refused.json()["hint"]
    assert file.read_text() == before


def test_a_retired_run_key_left_in_the_file_can_still_be_unset(cli, zk0_home):
    file = zk0_home / "config" / "config.toml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("[run]\nuplink-bf16-delta = true\nlocal-steps = 5\n")  # written before the key was retired
    removed = cli("config", "unset", "run.uplink-bf16-delta", "--json")
    assert removed.code == 0 and removed.json()["removed"] is True
    assert "uplink" not in file.read_text() and "local-steps = 5" in file.read_text()


@pytest.mark.parametrize(
    ("key", "value", "said", "hint"),
    [
        ("run.local-steps", "many", "local-steps must be int", "optimizer steps per client"),
        ("run.local-stepz", "5", "unknown run-config key 'local-stepz'", "zk0 run --list-keys"),
        ("run.eta-min", "1.0", "eta-min 1.0 must be below lr", "lower eta-min"),
        ("run.run-name", "x", "run.run-name names one run", "zk0 run --set run-name"),
        ("run.resume", "true", "run.resume names one run", "zk0 run --resume"),
        ("hf.endpoint.x", "1", "unknown config key 'hf.endpoint.x'", "zk0 config show"),
        ("hf.endpoint", "huggingface.co", "is not an http(s) URL", "https://huggingface.co"),
        ("hf.home", "hf-cache", "hf.home 'hf-cache' is a relative path", "~/hf-cache"),
        ("hf.home", "~/a-file", "is a file, not a directory", "the Hugging Face cache's directory"),
    ],
)
def test_bad_run_defaults_are_refused_with_a_hint_and_leave_the_file_alone(
    cli, zk0_home, monkeypatch, tmp_path, key, value, said, hint
):
    file = zk0_home / "config" / "config.toml"
    assert cli("config", "set", "run.batch-size", "2").code == 0
    monkeypatch.setenv("HOME", str(tmp_path))  # ~ expands here
    (tmp_path / "a-file").write_text("not a directory")
    before = file.read_text()
    refused = cli("--json", "config", "set", key, value)
    assert refused.code == 2, refused.stderr
    assert said in refused.json()["error"] and hint in refused.json()["hint"]
    assert file.read_text() == before


def test_hub_settings_reach_zk0_and_every_process_it_starts(cli, zk0_home, monkeypatch):
    """hf.endpoint / hf.home replace HF_ENDPOINT / HF_HOME whatever the shell had, for zk0 and its children."""
    from zk0cli.services.supervisor import child_env

    monkeypatch.setenv("HF_ENDPOINT", "https://from-the-shell.example")  # restored after the test
    monkeypatch.setenv("HF_HOME", "/from/the/shell")
    assert cli("config", "set", "hf.endpoint", "http://127.0.0.1:9/").code == 0
    assert cli("config", "set", "hf.home", "~/hf-cache").code == 0
    assert cli("config", "path").code == 0  # any command: the session applies them first
    assert os.environ["HF_ENDPOINT"] == "http://127.0.0.1:9"
    assert os.environ["HF_HOME"] == os.path.expanduser("~/hf-cache")
    assert child_env()["HF_ENDPOINT"] == "http://127.0.0.1:9"
    assert cli("config", "unset", "hf.endpoint").code == 0
    monkeypatch.setenv("HF_ENDPOINT", "https://from-the-shell.example")
    assert cli("config", "path").code == 0
    assert os.environ["HF_ENDPOINT"] == "https://from-the-shell.example"  # empty keeps the environment's
