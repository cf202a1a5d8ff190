"""`zk0 server serve` and `zk0 server nodes`: the SuperLink behind its fleet-only front.

Layout of a served federation (defaults from config ``server.*``):

    nodes --TLS--> fleet proxy on HOST:PORT (public, 0.0.0.0:9092)   only /v1/fleet/* and /health
                      --TLS--> flower-superlink on 127.0.0.1:CONTROL_PORT (PORT+1 by default)
    admin: flwr CLI / `zk0 run` --TLS--> 127.0.0.1:CONTROL_PORT        Control + Runtime stay local

Both processes run under one supervisor (service ``server``). The SuperLink keeps its state in
SQLite (``<data dir>/superlink.db`` unless ``--database``), so a restart loses no run and no
registered node, and nodes reconnect by themselves.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from zk0cli.core import files
from zk0cli.core.errors import bad_input, env_not_ready, unreachable
from zk0cli.core.paths import Paths
from zk0cli.core.timefmt import iso_seconds_or_none
from zk0cli.fl.quarantine import quarantined, release
from zk0cli.services import flower, supervisor
from zk0cli.services.flower_control import LocalControl
from zk0cli.services.pki import ServerPki, fingerprint

SERVICE = "server"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass
class ServeOptions:
    host: str = "0.0.0.0"  # public address of the fleet proxy
    port: int = 9092  # public port nodes join through
    control_port: int = 0  # the SuperLink's own port on 127.0.0.1 (Control/Runtime/Fleet); 0 = port + 1
    insecure: bool = False  # plain HTTP everywhere (demo/debug only)
    database: str = ""  # SuperLink SQLite file; empty = <data dir>/superlink.db
    require_node_auth: bool = True  # only registered node keys may join (needs TLS)
    auto_run: bool = False  # start a training session whenever min_nodes nodes are online and none runs
    min_nodes: int = 2  # auto-run: online nodes a session needs
    rounds: int = 3  # auto-run: rounds per session
    run_settings: list[str] = field(default_factory=list)  # auto-run: run-config KEY=VALUE for each session

    @property
    def superlink_port(self) -> int:
        return self.control_port or self.port + 1


def build_spec(paths: Paths, options: ServeOptions) -> supervisor.ServiceSpec:
    """Check everything that can be checked before starting, and describe the processes to run."""
    if options.insecure and options.require_node_auth:
        raise bad_input(
            "node authentication needs TLS, and --insecure turns TLS off",
            hint="add --no-require-node-auth to run insecure (demo only), or drop --insecure",
        )
    if not 1 <= options.superlink_port <= 65535 or options.superlink_port == options.port:
        raise bad_input(
            f"control port {options.superlink_port} is not usable next to public port {options.port}",
            hint="pass --control-port N (a free port other than --port)",
        )
    holder = supervisor.lock_holder(paths, SERVICE)
    if holder:
        raise supervisor.already_running(SERVICE, holder)
    pki = None if options.insecure else _server_pki(paths)
    health_host = _health_host(options.host)
    if pki is not None:
        _check_certificate_names(pki, options.host)
    ensure_port_free(options.host, options.port, flag="--port")
    ensure_port_free("127.0.0.1", options.superlink_port, flag="--control-port")
    database = Path(options.database).expanduser().absolute() if options.database else paths.data_dir / "superlink.db"
    database.parent.mkdir(parents=True, exist_ok=True)

    tls = flower.TlsFiles(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert)) if pki else None
    ca = str(pki.ca_cert) if pki else ""
    scheme = "http" if options.insecure else "https"
    superlink_address = f"127.0.0.1:{options.superlink_port}"
    superlink = supervisor.ProcessSpec(
        name="superlink",
        argv=flower.superlink_argv(
            host="127.0.0.1",
            port=options.superlink_port,
            database=str(database),
            tls=tls,
            node_auth=options.require_node_auth,
        ),
        health_url=f"{scheme}://{superlink_address}/health",
        health_ca=ca,
        ports={"control": options.superlink_port},
        flwr_home=str(supervisor.flwr_home(paths, SERVICE)),
        preload=flower.SUPERLINK_ENTRY,
        unlogged=list(flower.SUPERLINK_POLLING_LINES),
    )
    proxy_argv = [
        sys.executable,
        "-m",
        "zk0cli.services.fleet_front",
        "--listen",
        _join(options.host, options.port),
        "--upstream",
        superlink_address,
    ]
    proxy_argv += (
        ["--insecure"]
        if tls is None
        else ["--certfile", tls.certfile, "--keyfile", tls.keyfile, "--cafile", tls.cafile]
    )
    if options.require_node_auth:  # the front verifies node signatures before any body reaches the SuperLink
        proxy_argv += ["--nodes-file", str(paths.node_names_file)]
    proxy = supervisor.ProcessSpec(
        name="fleet-proxy",
        argv=proxy_argv,
        health_url=f"{scheme}://{_join(health_host, options.port)}/health",
        health_ca=ca,
        health_ok_status=[200, 502],  # 502: the proxy is up, the SuperLink behind it is (re)starting
        ports={"public": options.port},
    )
    processes = [superlink, proxy]
    if options.auto_run:
        processes.append(_auto_run_spec(options))
    info = {
        "public_address": _join(options.host, options.port),
        "control_address": superlink_address,
        "tls": not options.insecure,
        "node_auth": options.require_node_auth,
        "database": str(database),
        "ca_cert": ca or None,
        "ca_fingerprint": fingerprint(pki.ca_cert) if pki else None,
        "auto_run": {"min_nodes": options.min_nodes, "rounds": options.rounds} if options.auto_run else None,
    }
    return supervisor.ServiceSpec(name=SERVICE, kind="server", processes=processes, info=info)


def _auto_run_spec(options: ServeOptions) -> supervisor.ProcessSpec:
    """The auto-run loop as one more supervised process: restarted like the others, logged to the
    server log, stopped with the server, in the foreground and with --detach alike."""
    from zk0cli.fl.run_config import RunConfig, parse_overrides

    if options.min_nodes < 1 or options.rounds < 1:
        raise bad_input("--min-nodes and --rounds must be at least 1", hint="e.g. --auto-run --min-nodes 2 --rounds 3")
    RunConfig.from_mapping(parse_overrides(options.run_settings))  # a bad --set stops `serve`, not each session
    argv = [
        sys.executable,
        "-m",
        "zk0cli.services.auto_run",
        "--min-nodes",
        str(options.min_nodes),
        "--rounds",
        str(options.rounds),
    ]
    for pair in options.run_settings:
        argv += ["--set", pair]
    return supervisor.ProcessSpec(name="auto-run", argv=argv)


def prepare_cli_connection(paths: Paths, spec: supervisor.ServiceSpec) -> Path:
    """Write the flwr CLI's ``zk0-local`` connection for this server (Control API on loopback)."""
    return flower.write_cli_connection(paths, address=spec.info["control_address"], root_ca=spec.info["ca_cert"])


def ensure_port_free(host: str, port: int, *, flag: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise env_not_ready(
                    f"port {port} on {host or '0.0.0.0'} is already in use{_port_owner(port)}",
                    hint=f"stop what uses it (`zk0 status` shows zk0's services), or pick another: {flag} N",
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise bad_input(
                    f"{host} is not an address of this machine",
                    hint="use --host 0.0.0.0, or one of this machine's addresses",
                ) from None
            if exc.errno == errno.EACCES:
                raise env_not_ready(
                    f"port {port} needs privileges this user does not have", hint=f"use a port above 1023: {flag} N"
                ) from None
            raise


def _port_owner(port: int) -> str:
    """`` (pid N, NAME)`` for the process listening on port, when this user may see it."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f" (pid {conn.pid}, {psutil.Process(conn.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def _server_pki(paths: Paths) -> ServerPki:
    pki = ServerPki.at(paths.pki_dir)
    missing = [p for p in (pki.ca_cert, pki.server_cert, pki.server_key) if not p.exists()]
    if missing:
        raise env_not_ready(
            f"no server certificate: {missing[0]} is missing",
            hint="zk0 init --role server --public-address YOUR.HOST (or --insecure for a local demo)",
        )
    return pki


def _check_certificate_names(pki: ServerPki, host: str) -> None:
    """A specific bind address must be in the certificate, or nodes (and our health check) fail TLS."""
    if host in WILDCARD_HOSTS:
        return
    names = certificate_names(pki.server_cert)
    if host not in names:
        raise bad_input(
            f"the server certificate is not valid for {host} (it names {', '.join(names)})",
            hint=f"zk0 init --role server --public-address {host} --force, or --host 0.0.0.0",
        )


def certificate_names(cert_path: Path) -> list[str]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)


def _health_host(host: str) -> str:
    """Where the health check reaches a proxy bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _join(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


# --------------------------------------------------------------------------- zk0 server nodes


def require_running(paths: Paths) -> dict:
    state = supervisor.read_state(paths, SERVICE)
    if state is None or not state["supervisor_alive"] or state["state"] not in ("healthy", "restarting", "starting"):
        raise unreachable("the server is not running on this machine", hint="start it: zk0 server serve --detach")
    return state


def add_node(paths: Paths, public_key_file: Path, name: str) -> dict:
    """Register a node's public key with the SuperLink: from then on that node may join.

    The node registry is read, checked and written under a lock: registrations at the same moment
    (two admins, or the demo's nodes) must not drop each other's entry, or the fleet front, which
    reads it, would refuse a registered node.
    """
    supervisor.check_service_name(name, what="node name")
    key_text, key_pem = _read_public_key(public_key_file)
    registry = paths.node_names_file
    with files.exclusively(registry):
        _refuse_duplicate(_node_names(paths), key_text, name)
        require_running(paths)
        with LocalControl(paths) as control:
            node_id = str(control.register_node(key_pem, name))
        names = _node_names(paths)
        names[node_id] = {"name": name, "public_key": key_text}
        files.atomic_write_json(registry, names)
    return {"node_id": node_id, "name": name}


def list_nodes(paths: Paths) -> list[dict]:
    """Registered nodes (unregistered ones left out), with zk0's names and ISO 8601 UTC times."""
    require_running(paths)
    with LocalControl(paths) as control:
        nodes = control.list_nodes()
    names = _node_names(paths)
    left_out = quarantined(paths.quarantine_file)
    return [
        {
            "node_id": str(node.node_id),
            "name": names.get(str(node.node_id), {}).get("name", "") or node.name,
            "status": node.status,
            "registered_at": iso_seconds_or_none(node.registered_at),
            "online_at": iso_seconds_or_none(node.online_at),
            "offline_at": iso_seconds_or_none(node.offline_at),
            "quarantined": left_out.get(str(node.node_id)),
        }
        for node in sorted(nodes, key=lambda n: n.registered_at or 0.0)
        if node.status != "unregistered"
    ]


def remove_node(paths: Paths, node: str) -> dict:
    """Unregister a node named by its Flower node id or the name it was added with."""
    node_id = node if node.isdigit() else _node_id_of(paths, node)
    require_running(paths)
    registry = paths.node_names_file
    with files.exclusively(registry):
        with LocalControl(paths) as control:
            control.unregister_node(int(node_id))
        names = _node_names(paths)
        removed = names.pop(node_id, {})
        files.atomic_write_json(registry, names)
    return {"node_id": node_id, "name": removed.get("name", "")}


def release_node(paths: Paths, node: str) -> dict:
    """Take a quarantined node back into sampling (from the next round of a running run on)."""
    node_id = node if node.isdigit() else _node_id_of(paths, node)
    released = release(paths.quarantine_file, node_id)
    if released is None:
        raise bad_input(f"node {node} is not quarantined", hint="`zk0 server nodes list` shows which nodes are")
    return {"node_id": node_id, "released": released}


def _node_id_of(paths: Paths, name: str) -> str:
    for node_id, entry in _node_names(paths).items():
        if entry.get("name") == name:
            return node_id
    raise bad_input(f"no node named '{name}' is registered", hint="`zk0 server nodes list` shows names and ids")


MAX_PUBLIC_KEY_BYTES = 4096  # an OpenSSH P-521 public key is under 300 bytes


def _read_public_key(path: Path) -> tuple[str, bytes]:
    """The node's OpenSSH ECDSA public key, parsed before Flower sees it: its identity (type and
    key, without the comment) and the PEM that Flower registers. P-256, P-384 (what `zk0 init`
    makes) and P-521 are accepted, as Flower does; OpenSSH has no weaker ECDSA curve."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_PUBLIC_KEY_BYTES:
            raise bad_input(
                f"{path} is {size} bytes: not a public key (node_key.pub is one short line)",
                hint="pass the node's node_key.pub from `zk0 init --role node`",
            )
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise bad_input(
            f"public key file {path} does not exist",
            hint="the node operator sends node_key.pub from `zk0 init --role node`",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise bad_input(f"cannot read public key file {path}: {exc}") from None
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    not_a_key = bad_input(
        f"{path} is not an OpenSSH ECDSA public key",
        hint="pass the node's node_key.pub (starts with ecdsa-sha2-nistp384), not its private key",
    )
    if not text.startswith("ecdsa-sha2-nistp"):
        raise not_a_key
    try:
        key = serialization.load_ssh_public_key(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise not_a_key from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise not_a_key
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return " ".join(text.split()[:2]), pem  # the comment is the operator's, not the identity


def _refuse_duplicate(registry: dict[str, dict[str, str]], key: str, name: str) -> None:
    for node_id, entry in registry.items():
        if " ".join(str(entry.get("public_key", "")).split()[:2]) == key:
            raise bad_input(
                f"this key is already registered as {entry.get('name', '?')} (node id {node_id})",
                hint=f"to register it again under another name: zk0 server nodes remove {node_id} first",
            )
        if entry.get("name") == name:
            raise bad_input(
                f"a node named {name} is already registered (node id {node_id})",
                hint=f"pick another --name, or remove the old one: zk0 server nodes remove {name}",
            )


def _node_names(paths: Paths) -> dict[str, dict[str, str]]:
    registry = files.read_json(paths.node_names_file, {})
    return registry if isinstance(registry, dict) else {}
