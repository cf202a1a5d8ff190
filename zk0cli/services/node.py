"""`zk0 node join`: check the dataset and the server, then run a supervised SuperNode.

The service runs two processes: ``flower-supernode`` (the connection to the server) in process
isolation, and zk0's resident ClientApp host (:mod:`zk0cli.fl.clientapp_host`), which trains
every round in one long-lived process with the policy and data built once.
Each node is the service ``node-<name>`` with its own FLWR_HOME, its own free Runtime API port
and its own state, lock and log, so several nodes can run on one host. With TLS the node always
presents its key from ``zk0 init --role node`` (Flower's SuperNode auth): the server admin
registers it with ``zk0 server nodes add``. Nodes with the same key are the same node to the
server, so nodes that must count separately need their own ZK0_HOME (their own key).
"""

from __future__ import annotations

import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from zk0cli.core.config import parse_host_port
from zk0cli.core.errors import Zk0Error, bad_input, env_not_ready, unreachable
from zk0cli.core.paths import Paths
from zk0cli.fl import clientapp_host
from zk0cli.services import flower, supervisor
from zk0cli.services.pki import NodePki, fingerprint

SERVICE_PREFIX = "node-"
CONNECT_TIMEOUT_S = 5.0
# What Flower's SuperNode logs, kept in the node's state for `zk0 status` (its own retry loop
# rides out a server restart; these lines make that visible).
WATCH = {
    "connected": r"SuperNode ID: (?P<node_id>\d+)",
    "reconnecting": r"Connection attempt failed, retrying in (?P<next_try_s>[\d.]+) seconds",
    "reconnected": r"Connection successful after (?P<after_s>[\d.]+) seconds and (?P<tries>\d+) tries",
    "received": r"Receiving: (?P<type>\w+) message",  # with "sent": is a message in flight (restart hook)
    "sent": r"Sent successfully",
}


@dataclass
class JoinOptions:
    server: str  # HOST:PORT of the federation's public (fleet) endpoint
    dataset: str  # dataset URI
    name: str = ""  # empty: derived from the dataset
    insecure: bool = False  # plain HTTP, no key (only against a server run with --insecure)
    skip_validation: bool = False  # do not validate the dataset before joining


def service_name(node_name: str) -> str:
    return SERVICE_PREFIX + node_name


def default_name(dataset_name: str) -> str:
    name = dataset_name.lower().strip("-._")[:50]
    return name or "node"


def validate(uri) -> object:
    """Run the dataset checks; the report (``errors``, ``warnings``, ``checks``) for the caller to act on."""
    from zk0cli.datasets.validate import validate_dataset

    return validate_dataset(uri)


def refuse_on_errors(report, uri) -> None:
    if report.errors:
        from zk0cli.core.checks import Status

        first = next(c for c in report.checks if c.status is Status.FAIL)
        raise Zk0Error(
            f"dataset {uri} failed validation ({report.errors} error(s)); first: {first.name}: {first.detail}",
            hint=f"see `zk0 dataset validate {uri}`; fix the data, or join anyway with --skip-validation",
        )


def node_pki(paths: Paths, *, insecure: bool) -> NodePki | None:
    return None if insecure else require_node_pki(paths)


def require_node_pki(paths: Paths) -> NodePki:
    """The node's key and pinned CA from ``zk0 init --role node``; exit 4 when either is missing."""
    pki = NodePki.at(paths.pki_dir)
    for path in (pki.ca_cert, pki.private_key):
        if not path.exists():
            raise env_not_ready(
                f"this machine is not set up as a node: {path} is missing",
                hint="zk0 init --role node --ca-cert CA.pem (the federation's ca.pem from the server admin)",
            )
    return pki


def check_server(address: str, *, ca_cert: Path | None) -> dict:
    """TCP, then TLS against the pinned CA, then GET /health: fail with what exactly is wrong."""
    host, port = parse_host_port(address, origin="--server")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise unreachable(
            f"cannot resolve the server name '{host}'", hint="check the spelling of --server HOST:PORT"
        ) from None
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except ConnectionRefusedError:
        raise unreachable(
            f"nothing listens on {address} (connection refused)",
            hint="check the address and port, and that `zk0 server serve` runs there",
        ) from None
    except TimeoutError:
        raise unreachable(
            f"no answer from {address} within {CONNECT_TIMEOUT_S:g} s",
            hint="check the address; a firewall may block the port",
        ) from None
    except OSError as exc:
        raise unreachable(
            f"cannot connect to {address}: {exc.strerror or exc}", hint="check the address and your network"
        ) from None
    with sock:
        if ca_cert is not None:
            _check_tls(sock, host, address, ca_cert)
    import httpx

    scheme = "http" if ca_cert is None else "https"
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else False
    try:
        status = httpx.get(f"{scheme}://{address}/health", verify=verify, timeout=CONNECT_TIMEOUT_S).status_code
    except httpx.HTTPError as exc:
        raise unreachable(
            f"{address} accepted a connection but did not answer HTTP: {exc}",
            hint="is this the federation's fleet port (9092 by default)?",
        ) from None
    if status == 502:
        raise unreachable(
            f"the server at {address} is up but its SuperLink is not (HTTP 502)",
            hint="ask the admin to check `zk0 status` / `zk0 logs server`; try again shortly",
        )
    if status != 200:
        raise unreachable(
            f"{address} answered /health with HTTP {status}: not a zk0 fleet endpoint",
            hint="check the port: nodes join the server's public port (9092 by default)",
        )
    return {
        "address": address,
        "resolved": sorted({info[4][0] for info in infos}),
        "tls": ca_cert is not None,
        "health": status,
    }


def _check_tls(sock: socket.socket, host: str, address: str, ca_cert: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with context.wrap_socket(sock, server_hostname=host):
            return
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code == 62 or "match" in str(exc.verify_message).lower():  # X509_V_ERR_HOSTNAME_MISMATCH
            raise bad_input(
                f"the server's certificate is not valid for '{host}'",
                hint="join with the address the admin gave to `zk0 init --public-address`, or ask the admin to add it",
            ) from None
        raise bad_input(
            f"the server at {address} is not signed by this node's pinned CA ({fingerprint(ca_cert)[:23]}...)",
            hint="get the federation's ca.pem from the admin, then: zk0 init --role node --ca-cert ca.pem --force",
        ) from None
    except ssl.SSLError as exc:
        raise unreachable(
            f"{address} does not speak TLS ({exc.reason or exc})",
            hint="if the server runs --insecure, join with --insecure; otherwise check the port",
        ) from None
    except (TimeoutError, OSError) as exc:
        raise unreachable(
            f"the TLS handshake with {address} failed: {exc}", hint="check the address and port"
        ) from None


def build_spec(
    paths: Paths,
    options: JoinOptions,
    *,
    node_name: str,
    dataset_uri: str,
    pki: NodePki | None,
    runtime_port: int | None = None,
) -> supervisor.ServiceSpec:
    service = supervisor.check_service_name(service_name(node_name), what="node name")
    holder = supervisor.lock_holder(paths, service)
    if holder:
        raise supervisor.already_running(service, holder)
    port = runtime_port or flower.free_port()
    ca = str(pki.ca_cert) if pki else None
    scheme = "http" if pki is None else "https"
    key_hint = f"{pki.public_key}" if pki else "node_key.pub"
    supernode = supervisor.ProcessSpec(
        name="supernode",
        argv=flower.supernode_argv(
            superlink=options.server,
            root_ca=ca,
            auth_key=str(pki.private_key) if pki else None,
            runtime_port=port,
            node_config={"dataset-uri": dataset_uri, "node-name": node_name},
        ),
        health_url=f"http://127.0.0.1:{port}/health",
        ports={"runtime": port},
        flwr_home=str(supervisor.flwr_home(paths, service)),
        preload=flower.SUPERNODE_ENTRY,
        watch=WATCH,
        ready_event="connected",
        restart_hook="zk0cli.services.flower:release_stale_node",
        fatal={
            flower.NODE_AUTH_REFUSED: f"the server refused this node: its key is not registered there, or another "
            f"node with the same key is connected (admin: zk0 server nodes add {key_hint} "
            f"--name {node_name})"
        },
    )
    clientapp = supervisor.ProcessSpec(
        name="clientapp",
        argv=[sys.executable, "-m", "zk0cli.fl.clientapp_host", "--runtime-api-address", f"127.0.0.1:{port}"],
        watch={"ready": clientapp_host.READY_LINE},
        ready_event="ready",
    )
    probe = supervisor.ProbeSpec(name="server", url=f"{scheme}://{options.server}/health", ca=ca or "")
    info = {
        "name": node_name,
        "server": options.server,
        "dataset": dataset_uri,
        "tls": pki is not None,
        "auth_key": str(pki.private_key) if pki else None,
        "runtime_port": port,
    }
    return supervisor.ServiceSpec(
        name=service, kind="node", processes=[supernode, clientapp], info=info, probes=[probe]
    )
