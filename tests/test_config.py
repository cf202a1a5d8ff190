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
