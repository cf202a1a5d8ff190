"""The server admin's bad inputs: every one is a line, a hint and an exit code, before Flower sees it."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from zk0cli.core.errors import ExitCode
from zk0cli.core.paths import Paths


def openssh_public_key(curve: ec.EllipticCurve) -> str:
    key = ec.generate_private_key(curve).public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


@pytest.fixture
def registry(zk0_home):
    """A node registry holding alice's key, as `zk0 server nodes add` leaves it."""
    alice = openssh_public_key(ec.SECP384R1())
    paths = Paths.resolve(zk0_home)
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    (paths.data_dir / "server-nodes.json").write_text(json.dumps({"7": {"name": "alice", "public_key": alice}}))
    return alice


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("ecdsa-sha2-nistp384 AAAAnot-base64!!", "is not an OpenSSH ECDSA public key"),
        ("ecdsa-sha2-nistp384 " + "QUFB" * 10, "is not an OpenSSH ECDSA public key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n", "is not an OpenSSH ECDSA public key"),
    ],
)
def test_garbage_is_refused_before_flower(cli, tmp_path, content, says):
    path = tmp_path / "node_key.pub"
    path.write_text(content)
    result = cli("server", "nodes", "add", str(path), "--name", "eve")
    assert result.code == ExitCode.BAD_INPUT and says in result.stderr and "hint:" in result.stderr


def test_a_huge_file_is_refused_without_reading_it(cli, tmp_path):
    path = tmp_path / "node_key.pub"
    with path.open("wb") as fh:
        fh.truncate(100 * 1024 * 1024)  # sparse: 100 MB that nobody should read
    result = cli("server", "nodes", "add", str(path), "--name", "eve")
    assert result.code == ExitCode.BAD_INPUT and "104857600 bytes: not a public key" in result.stderr


def test_a_duplicate_key_or_name_names_the_registered_node(cli, tmp_path, registry):
    again = tmp_path / "again.pub"
    again.write_text(registry + " alice@robot\n")  # same key, another comment
    result = cli("server", "nodes", "add", str(again), "--name", "bob")
    assert result.code == ExitCode.BAD_INPUT
    assert "already registered as alice (node id 7)" in result.stderr and "nodes remove 7" in result.stderr
    other = tmp_path / "other.pub"
    other.write_text(openssh_public_key(ec.SECP384R1()))
    result = cli("server", "nodes", "add", str(other), "--name", "alice")
    assert result.code == ExitCode.BAD_INPUT and "a node named alice is already registered" in result.stderr


def test_p256_is_accepted_as_flower_does(cli, tmp_path, registry):
    """A valid P-256 key passes zk0's checks; with no server running the next step says so (exit 3)."""
    path = tmp_path / "p256.pub"
    path.write_text(openssh_public_key(ec.SECP256R1()))
    result = cli("server", "nodes", "add", str(path), "--name", "carol")
    assert result.code == ExitCode.UNREACHABLE and "server is not running" in result.stderr


def test_tls_without_node_auth_needs_a_yes(cli):
    refused = cli("server", "serve", "--no-require-node-auth", "--port", "19391")
    assert refused.code == ExitCode.BAD_INPUT
    assert "anyone who reaches" in refused.stderr and "--yes" in refused.stderr
    confirmed = cli("server", "serve", "--no-require-node-auth", "--yes", "--port", "19391")
    assert "anyone who reaches" in confirmed.stderr  # said as a warning, then serve goes on...
    assert confirmed.code == ExitCode.ENV_NOT_READY and "zk0 init --role server" in confirmed.stderr  # ...to its PKI


def test_a_node_is_removed_by_name_or_id_and_an_unknown_name_says_where_names_are(cli, registry):
    unknown = cli("server", "nodes", "remove", "mallory")
    assert unknown.code == ExitCode.BAD_INPUT and "no node named 'mallory'" in unknown.stderr
    assert "zk0 server nodes list" in unknown.stderr
    by_name = cli("server", "nodes", "remove", "alice")  # found: node 7; the next step needs the server
    assert by_name.code == ExitCode.UNREACHABLE and "server is not running" in by_name.stderr
