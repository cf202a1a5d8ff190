"""`zk0 init` for both roles: real certificates parsed back, key modes, and bad input."""

from __future__ import annotations

import ipaddress
import ssl
import stat
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from zk0cli.core.paths import Paths
from zk0cli.services.pki import NodePki, ServerPki


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def server_home(cli, zk0_home):
    result = cli(
        "--json",
        "init",
        "--role",
        "server",
        "--public-address",
        "fl.example.org",
        "--public-address",
        "203.0.113.7",
        "--yes",
    )
    assert result.code == 0, result.stderr
    return result.json()


def test_server_init_makes_a_ca_signed_certificate_with_the_right_names(server_home, zk0_home):
    pki = ServerPki.at(Paths.resolve(zk0_home).pki_dir)
    ca, server = load_cert(pki.ca_cert), load_cert(pki.server_cert)
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm))
    assert server.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"fl.example.org", "localhost"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("203.0.113.7"),
        ipaddress.ip_address("127.0.0.1"),
    }
    assert mode(pki.ca_key) == 0o600 and mode(pki.server_key) == 0o600
    assert server_home["ca_fingerprint"].count(":") == 31


def test_server_certificate_is_accepted_by_a_real_tls_client(server_home, zk0_home):
    """A TLS handshake on loopback, verified against the CA alone, as a node would do it."""
    pki = ServerPki.at(Paths.resolve(zk0_home).pki_dir)

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Health)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    httpd.socket = server_ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.handle_request, daemon=True)
    thread.start()
    import httpx

    client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    response = httpx.get(f"https://127.0.0.1:{httpd.server_port}/health", verify=client_ctx, timeout=5)
    assert response.status_code == 200
    thread.join(5)
    httpd.server_close()


def test_node_init_stores_ca_and_makes_an_openssh_p384_key(cli, server_home, zk0_home, tmp_path, monkeypatch):
    ca_path = Path(server_home["files"]["ca_cert"])
    monkeypatch.setenv("ZK0_HOME", str(tmp_path / "node"))
    result = cli(
        "--json", "init", "--role", "node", "--ca-cert", str(ca_path), "--server", "fl.example.org:9092", "--yes"
    )
    assert result.code == 0, result.stderr
    info = result.json()
    pki = NodePki.at(Paths.resolve().pki_dir)
    key = serialization.load_ssh_private_key(pki.private_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert info["public_key"].startswith("ecdsa-sha2-nistp384 ")
    assert mode(pki.private_key) == 0o600
    assert load_cert(pki.ca_cert) == load_cert(ca_path)
    assert info["ca_fingerprint"] == server_home["ca_fingerprint"]
    assert cli("config", "get", "node.server").stdout.strip() == "fl.example.org:9092"


def test_init_twice_refuses_and_force_keeps_a_backup(cli, server_home, zk0_home):
    pki = ServerPki.at(Paths.resolve(zk0_home).pki_dir)
    before = pki.ca_cert.read_bytes()
    again = cli("init", "--role", "server", "--yes")
    assert again.code == 2 and "already initialised" in again.stderr and "--force" in again.stderr
    assert pki.ca_cert.read_bytes() == before
    forced = cli("--json", "init", "--role", "server", "--yes", "--force")
    assert forced.code == 0
    backup = Path(forced.json()["backup_dir"])
    assert (backup / "ca.pem").read_bytes() == before
    assert pki.ca_cert.read_bytes() != before
    assert mode(backup / "ca.key") == 0o600


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["init", "--role", "banana"], 2, "'banana' is not one of"),
        (["init", "--role", "node", "--ca-cert", "/nonexistent/ca.pem", "--yes"], 2, "does not exist"),
        (["init", "--role", "node", "--yes"], 2, "--ca-cert"),
        (["init", "--role", "node", "--ca-cert", "/etc/hostname", "--yes"], 2, "not a PEM certificate"),
        (["init"], 2, "--role is required when zk0 cannot prompt"),
        (["init", "--role", "node", "--ca-cert", "/etc", "--yes"], 2, "is a directory"),
        (["init", "--bogus"], 2, "No such option"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_bad_input_gives_one_line_and_a_hint(cli, zk0_home, args, code, words):
    result = cli(*args)
    assert result.code == code
    assert words in result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.stderr
    assert not (zk0_home / "config" / "pki").exists()  # nothing half-written


def test_node_init_refuses_the_server_certificate_as_ca(cli, server_home, tmp_path, monkeypatch):
    monkeypatch.setenv("ZK0_HOME", str(tmp_path / "node"))
    result = cli("init", "--role", "node", "--ca-cert", server_home["files"]["server_cert"], "--yes")
    assert result.code == 2 and "not a CA certificate" in result.stderr


def test_broken_config_stops_init_before_any_key_is_written(cli, zk0_home):
    config_file = zk0_home / "config" / "config.toml"
    config_file.parent.mkdir(parents=True)
    config_file.write_text("role = \n")
    result = cli("init", "--role", "server", "--yes")
    assert result.code == 2 and "not valid TOML" in result.stderr and str(config_file) in result.stderr
    assert config_file.read_text() == "role = \n"
    assert not (zk0_home / "config" / "pki").exists()


@pytest.mark.parametrize("home", ["/proc/zk0-home", "FILE/sub"])
def test_unwritable_zk0_home_is_an_environment_error(cli, monkeypatch, tmp_path, home):
    if home.startswith("FILE"):
        (tmp_path / "FILE").write_text("x")
        home = str(tmp_path / home)
    monkeypatch.setenv("ZK0_HOME", home)
    result = cli("init", "--role", "server", "--yes")
    assert result.code == 4 and "cannot create" in result.stderr and "ZK0_HOME" in result.stderr


def test_three_forced_inits_in_a_second_keep_three_backups(cli, server_home, zk0_home):
    pki = ServerPki.at(Paths.resolve(zk0_home).pki_dir)
    keys = [pki.ca_key.read_bytes()]
    backups = []
    for _ in range(3):
        forced = cli("--json", "init", "--role", "server", "--yes", "--force")
        assert forced.code == 0
        backups.append(Path(forced.json()["backup_dir"]))
        keys.append(pki.ca_key.read_bytes())
    assert len(set(backups)) == 3  # never one folder written over by the next
    assert [(backup / "ca.key").read_bytes() for backup in backups] == keys[:3]  # every earlier CA key kept


def test_the_printed_ca_fingerprint_is_openssls_verbatim_on_one_line_at_80_columns(tmp_path):
    """Operators compare it by eye: rich must not turn ``:CD:`` into an emoji, nor wrap it."""
    import os
    import subprocess
    import sys

    def zk0(home: Path, *args: str) -> str:
        env = {**os.environ, "ZK0_HOME": str(home), "COLUMNS": "80", "TERM": "xterm-256color"}
        env.pop("NO_COLOR", None)
        done = subprocess.run(
            [sys.executable, "-m", "zk0cli", *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    server = tmp_path / "server"
    server_out = zk0(server, "init", "--role", "server", "--public-address", "fl.example.org", "--yes")
    ca = Paths.resolve(server).pki_dir / "ca.pem"
    openssl = subprocess.run(
        ["openssl", "x509", "-in", str(ca), "-noout", "-fingerprint", "-sha256"], capture_output=True, text=True
    )
    expected = openssl.stdout.strip().split("=", 1)[1]
    assert len(expected) == 95 and expected in server_out.splitlines()  # one line of its own, untouched
    node_out = zk0(tmp_path / "node", "init", "--role", "node", "--ca-cert", str(ca), "--yes")
    assert expected in node_out.splitlines()


def test_a_fingerprint_with_emoji_names_in_it_prints_as_it_is():
    import io

    from rich.console import Console

    from zk0cli.cli.init import _print_verbatim

    console = Console(file=io.StringIO(), width=80, force_terminal=True)
    value = ":".join(["1B", "CD", "A8", "AB"] * 8)  # :CD: and :AB: are rich emoji names
    _print_verbatim(console, value)
    assert console.file.getvalue() == value + "\n"
