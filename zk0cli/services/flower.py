"""Flower's command lines in one place: flower-superlink, flower-supernode and the flwr CLI.

Everything here follows Flower 1.42 (see shared/notes/flower-1.42.md): one HTTP port per
SuperLink for Fleet, Control and Runtime; TLS as one cert/key/CA set; node auth needs TLS;
``--node-config`` takes space-separated TOML pairs; the flwr CLI reads its connections from
``$FLWR_HOME/config.toml``. zk0 gives the CLI a FLWR_HOME of its own (``cli_home``) with one
connection, ``zk0-local``, to the SuperLink on loopback; nothing goes into an app's pyproject.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zk0cli.core.childlog import child_logger
from zk0cli.core.errors import Zk0Error, bad_input, unreachable
from zk0cli.core.files import atomic_write_text
from zk0cli.core.paths import Paths
from zk0cli.services.supervisor.proctree import child_env

SUPERLINK_ENTRY = "flwr.superlink.cli:flower_superlink"
SUPERNODE_ENTRY = "flwr.supernode.cli:flower_supernode"
CLI_CONNECTION = "zk0-local"  # the flwr CLI connection zk0 writes, to the SuperLink on loopback
NODE_AUTH_REFUSED = r"Failed to activate SuperNode|\[code: 2004\]"  # SuperLink does not know the node's key
log = child_logger("supervisor")  # release_stale_node runs in the supervisor's warm spare
# What the SuperLink logs for each read-only Control-API call: `zk0 status --watch` and a followed
# run ask every second or two, which would bury everything else in `zk0 logs server`.
SUPERLINK_POLLING_LINES = (
    r"ControlServicer\.(ListRuns|ListNodes)\s*$",
    r'"POST /v1/control/(list-runs|list-nodes) HTTP/1\.1" 200',
)
# 12 polls of zk0's ServerApp for replies (fl.strategy.REPLY_POLL_S); 2 s (3 polls) was missed
# on a loaded 2-core CI machine, and the round then waited out its timeout
LOST_MESSAGE_HOLD_S = 6.0


@dataclass
class TlsFiles:
    certfile: str
    keyfile: str
    cafile: str


def superlink_argv(*, host: str, port: int, database: str, tls: TlsFiles | None, node_auth: bool) -> list[str]:
    """flower-superlink serving Fleet+Control+Runtime on host:port (zk0 binds it to loopback)."""
    argv = [
        "flower-superlink",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        database,
        "--disable-runtime-dependency-installation",
    ]
    if tls is None:
        argv.append("--insecure")
    else:
        argv += ["--ssl-certfile", tls.certfile, "--ssl-keyfile", tls.keyfile, "--ssl-ca-certfile", tls.cafile]
    if node_auth:
        argv.append("--enable-supernode-auth")
    return argv


def supernode_argv(
    *, superlink: str, root_ca: str | None, auth_key: str | None, runtime_port: int, node_config: dict[str, Any]
) -> list[str]:
    """flower-supernode joining ``superlink`` (HOST:PORT); ``root_ca`` None means --insecure.

    ``--isolation process``: the SuperNode starts no ClientApp processes itself; zk0's resident
    host (:mod:`zk0cli.fl.clientapp_host`) takes its tasks from the Runtime API on ``runtime_port``.
    """
    argv = ["flower-supernode", "--superlink", superlink, "--port", str(runtime_port), "--isolation", "process"]
    argv += ["--insecure"] if root_ca is None else ["--root-certificates", root_ca]
    if auth_key:
        argv += ["--auth-supernode-private-key", auth_key]
    if node_config:
        argv += ["--node-config", node_config_arg(node_config)]
    return argv


def node_config_arg(values: dict[str, Any]) -> str:
    """``key='text' n=3 flag=true``: the TOML pairs flower-supernode's --node-config parses."""
    pairs = []
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, (int, float)):
            rendered = repr(value)
        else:
            text = str(value)
            if "'" in text and '"' in text:
                raise bad_input(f"node config value for {key} contains both quote characters: {text}")
            rendered = f"'{text}'" if "'" not in text else f'"{text}"'
        pairs.append(f"{key}={rendered}")
    return " ".join(pairs)


# --------------------------------------------------------------------------- flwr CLI


def cli_home(paths: Paths) -> Path:
    """FLWR_HOME of the flwr CLI calls zk0 makes (its config.toml holds the zk0-local connection)."""
    return paths.state_dir / "flwr-cli"


def write_cli_connection(paths: Paths, *, address: str, root_ca: str | None) -> Path:
    """Point the ``zk0-local`` connection at the local SuperLink's Control API."""
    import tomli_w

    connection: dict[str, Any] = {"address": address}
    if root_ca is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = root_ca
    path = cli_home(paths) / "config.toml"
    atomic_write_text(path, tomli_w.dumps({"superlink": {"default": CLI_CONNECTION, CLI_CONNECTION: connection}}))
    return path


def free_port() -> int:
    """A loopback port nobody listens on right now (for SuperLink, SuperNode and proxy ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def flwr_env(paths: Paths) -> dict[str, str]:
    return child_env(cli_home(paths))


def run_flwr(paths: Paths, args: list[str], *, timeout_s: float = 60.0) -> dict:
    """Run ``flwr ARGS --format json`` against zk0-local and return its JSON document."""
    if not (cli_home(paths) / "config.toml").exists():
        raise unreachable(
            "no local server connection is configured", hint="start the server first: zk0 server serve --detach"
        )
    return flwr_json(
        args, env=flwr_env(paths), timeout_s=timeout_s, hint="check the server with `zk0 status` and `zk0 logs server`"
    )


def flwr_json(args: list[str], *, env: dict[str, str], timeout_s: float, hint: str) -> dict:
    """``flwr ARGS --format json`` with ``env``; its JSON document, or a Zk0Error.

    Flower reports failures as ``{"success": false, "error-message": ...}``; those become a
    Zk0Error carrying Flower's message, with ``hint`` saying where to look next.
    """
    command = ["flwr", *args, "--format", "json"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise unreachable(f"`flwr {' '.join(args[:2])}` did not answer within {timeout_s:g} s", hint=hint) from None
    document = _json_document(done.stdout)
    if document is None:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise Zk0Error(
            f"`flwr {' '.join(args[:2])}` failed: {detail[-1] if detail else f'exit code {done.returncode}'}", hint=hint
        )
    if not document.get("success", False):
        message = str(document.get("error-message", "unknown error")).strip().splitlines()
        raise Zk0Error(
            f"Flower refused `flwr {' '.join(args[:2])}`: {message[0] if message else 'unknown error'}", hint=hint
        )
    return document


def _json_document(stdout: str) -> dict | None:
    start = stdout.find("{")
    if start < 0:
        return None
    try:
        return json.loads(stdout[start:])
    except ValueError:
        return None


# --------------------------------------------------------------------------- SuperNode restarts


def release_stale_node(argv: list[str], events: dict) -> None:
    """Deactivate the node a killed SuperNode left "online", so its restart can activate at once.

    A SuperNode killed without a chance to say goodbye (kill -9, OOM) stays online on the
    SuperLink until its heartbeat deadline passes (2 x 30 s), and with node auth the restarted
    SuperNode's activation is refused until then (Flower error 2004). The supervisor calls this in
    the warm spare before the restart, which already has Flower imported: it signs DeactivateNode
    with the node's own key, exactly as the SuperNode would on a clean exit.
    Without a key (self-registered nodes) there is nothing to release: a fresh node id is used.

    If the killed SuperNode had taken a message it never answered (``received`` seen after the
    last ``sent``), the node stays offline for ``LOST_MESSAGE_HOLD_S`` first: the ServerApp,
    polling for that reply, then gets Flower's "node unavailable" error and goes on with the
    round, instead of waiting for the round timeout for a reply that will never come.
    """
    options = _flag_values(argv, ("--superlink", "--root-certificates", "--auth-supernode-private-key"))
    node_id = (events.get("connected") or {}).get("groups", {}).get("node_id")
    key_path, ca = options.get("--auth-supernode-private-key"), options.get("--root-certificates")
    if not (node_id and key_path and ca and options.get("--superlink")):
        return
    import httpx
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.proto.fleet_pb2 import DeactivateNodeRequest  # pylint: disable=no-name-in-module
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    private_key = load_ssh_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC key: Flower's node auth signs with ECDSA")
    interceptor = NodeAuthHttpInterceptor(private_key, private_key.public_key())
    client = FleetHttpClient.from_server_address(options["--superlink"], False, ca, [interceptor])
    try:
        client.DeactivateNode(DeactivateNodeRequest(node_id=int(node_id)))
        log.info("released the session node id %s left behind, so this restart can join at once", node_id)
        if _held_a_message(events):
            log.info(
                "the killed SuperNode held an unanswered message: offline %g s so the server sees it lost",
                LOST_MESSAGE_HOLD_S,
            )
            time.sleep(LOST_MESSAGE_HOLD_S)
    except (httpx.HTTPError, RuntimeError) as exc:
        log.info("no stale session to release for node id %s (%s)", node_id, str(exc).splitlines()[0][:120])
    finally:
        client.close()


def _held_a_message(events: dict) -> bool:
    received = (events.get("received") or {}).get("at", "")
    return bool(received) and received > (events.get("sent") or {}).get("at", "")


def _flag_values(argv: list[str], flags: tuple[str, ...]) -> dict[str, str]:
    return {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag in flags}
