"""Role-specific checks. Server: port free, certificates valid. Node: keys, server reachable over TLS."""

from __future__ import annotations

import datetime as dt
import errno
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from zk0cli.core.checks import CheckResult, fail, ok, skip, warn
from zk0cli.core.config import parse_host_port
from zk0cli.core.errors import Zk0Error
from zk0cli.services.doctor.context import DoctorContext
from zk0cli.services.pki import NodePki, ServerPki

EXPIRY_WARNING_DAYS = 30
RENEW_SERVER = "zk0 init --role server --force (keeps a backup; then send the new ca.pem to node operators)"
REINIT_NODE = "zk0 init --role node --ca-cert CA.pem --force (ask the server admin for the current ca.pem)"


def check_role(ctx: DoctorContext) -> CheckResult:
    if not ctx.role:
        return warn(
            "role",
            "this machine is not initialised (no role in the config)",
            "zk0 init --role server  (or: zk0 init --role node --ca-cert CA.pem)",
        )
    return ok("role", ctx.role, role=ctx.role)


def check_server_port(ctx: DoctorContext) -> CheckResult:
    host, port = ctx.config.server.host, ctx.config.server.port
    data = {"host": host, "port": port}
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
            sock.bind((host, port))
    except PermissionError:
        return fail(
            "server port",
            f"{host}:{port}: no permission to bind (ports below 1024 need root)",
            "zk0 config set server.port 9092",
            **data,
        )
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return fail(
                "server port",
                f"cannot bind {host}:{port}: {exc.strerror}",
                "check server.host with `zk0 config get server.host`",
                **data,
            )
        return _port_in_use(ctx, host, port, data)
    return ok("server port", f"{host}:{port} free", **data)


def _port_in_use(ctx: DoctorContext, host: str, port: int, data: dict) -> CheckResult:
    """A port held by our own running server is fine; anything else blocks `zk0 server serve`."""
    ca_cert = ServerPki.at(ctx.paths.pki_dir).ca_cert
    if ca_cert.exists():
        probe = probe_health("127.0.0.1", port, ca_cert, ctx.timeout_s)
        if probe.ok:
            return ok(
                "server port",
                f"{host}:{port} in use by a running zk0 server (GET /health answered 200)",
                in_use=True,
                **data,
            )
    return fail(
        "server port",
        f"{host}:{port} is in use by another program",
        f"stop it (`ss -ltnp 'sport = :{port}'` shows which), or pick another port: zk0 config set server.port "
        f"{port + 1}",
        in_use=True,
        **data,
    )


def check_server_certificates(ctx: DoctorContext) -> CheckResult:
    from cryptography import x509

    server_pki = ServerPki.at(ctx.paths.pki_dir)
    missing = [p for p in server_pki.files() if not p.exists()]
    if missing:
        return fail(
            "server certs",
            f"{missing[0]} is missing",
            "zk0 init --role server --public-address YOUR.HOST",
            missing=[str(p) for p in missing],
        )
    try:
        ca = x509.load_pem_x509_certificate(server_pki.ca_cert.read_bytes())
        cert = x509.load_pem_x509_certificate(server_pki.server_cert.read_bytes())
    except ValueError as exc:
        return fail("server certs", f"unreadable certificate in {ctx.paths.pki_dir}: {exc}", RENEW_SERVER)
    names = _san_names(cert)
    days = _days_left(cert, ca)
    data = {
        "ca_cert": str(server_pki.ca_cert),
        "server_cert": str(server_pki.server_cert),
        "days_left": days,
        "names": names,
    }
    broken = _chain_problem(ca, cert, server_pki.server_key)
    if broken:
        return fail("server certs", broken, RENEW_SERVER, **data)
    loose = _key_mode_problem(server_pki.ca_key, server_pki.server_key)
    if loose:
        return fail("server certs", loose, f"chmod 600 {server_pki.ca_key} {server_pki.server_key}", **data)
    if days < 0:
        return fail("server certs", f"certificate expired {-days} day(s) ago", RENEW_SERVER, **data)
    unnamed = [a for a in ctx.config.server.public_addresses if a not in names]
    if unnamed:
        return warn(
            "server certs",
            f"the certificate does not name {', '.join(unnamed)} (it names {', '.join(names)}): nodes using it "
            "will fail TLS",
            "zk0 init --role server --force "
            + " ".join(f"--public-address {a}" for a in ctx.config.server.public_addresses),
            **data,
        )
    if days < EXPIRY_WARNING_DAYS:
        return warn("server certs", f"certificate expires in {days} day(s)", RENEW_SERVER, **data)
    return ok(
        "server certs", f"CA and server certificate valid for {days} more days; names: {', '.join(names)}", **data
    )


def check_node_keys(ctx: DoctorContext) -> CheckResult:
    node_pki = NodePki.at(ctx.paths.pki_dir)
    missing = [p for p in node_pki.files() if not p.exists()]
    if missing:
        return fail(
            "node keys",
            f"{missing[0]} is missing",
            "zk0 init --role node --ca-cert CA.pem",
            missing=[str(p) for p in missing],
        )
    problem = _key_mode_problem(node_pki.private_key)
    if problem:
        return fail("node keys", problem, f"chmod 600 {node_pki.private_key}")
    return ok(
        "node keys", f"pinned CA {node_pki.ca_cert} and the node's auth key present", ca_cert=str(node_pki.ca_cert)
    )


def check_server_connection(ctx: DoctorContext) -> CheckResult:
    """TCP connect, TLS handshake against the pinned CA, then GET /health: the path a node joins by."""
    if not ctx.config.node.server:
        return warn(
            "server",
            "no server address configured: the connection cannot be checked",
            "zk0 config set node.server HOST:PORT (or pass --server to `zk0 node join`)",
        )
    if ctx.skip_network:
        return skip("server", f"{ctx.config.node.server} not checked (--skip-network)")
    try:
        host, port = parse_host_port(ctx.config.node.server, origin="node.server")
    except Zk0Error as exc:
        return fail("server", exc.message, exc.hint)
    ca_cert = NodePki.at(ctx.paths.pki_dir).ca_cert
    if not ca_cert.exists():
        return fail(
            "server",
            f"cannot check TLS to {host}:{port}: no pinned CA at {ca_cert}",
            "zk0 init --role node --ca-cert CA.pem",
        )
    probe = probe_health(host, port, ca_cert, ctx.timeout_s)
    data = {"address": f"{host}:{port}", "stage": probe.stage, "days_left": probe.days_left}
    if probe.ok:
        expiry = f"server certificate valid {probe.days_left} more days"
        if probe.days_left is not None and probe.days_left < EXPIRY_WARNING_DAYS:
            return warn(
                "server",
                f"{host}:{port} healthy, but its {expiry}",
                "ask the server admin to renew it (zk0 init --role server --force)",
                **data,
            )
        return ok("server", f"{host}:{port}: TCP ok, TLS chain to the pinned CA ok, GET /health 200; {expiry}", **data)
    return fail("server", f"{host}:{port}: {probe.problem}", probe.fix, **data)


@dataclass(frozen=True)
class HealthProbe:
    stage: str  # how far it got: "tcp", "tls", "http", "done"
    ok: bool = False
    problem: str = ""
    fix: str = ""
    days_left: int | None = None


def probe_health(host: str, port: int, ca_cert: Path, timeout_s: float) -> HealthProbe:
    """Connect, verify the server certificate against ``ca_cert`` and ask GET /health; never raises."""
    start_server = (
        f"check the address, that `zk0 server serve` runs there, and that a firewall lets port {port} through"
    )
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return HealthProbe("tcp", problem="UNREACHABLE: connection refused (nothing listens there)", fix=start_server)
    except socket.gaierror as exc:
        return HealthProbe(
            "tcp",
            problem=f"UNREACHABLE: cannot resolve {host} ({exc.strerror})",
            fix="fix the host name: zk0 config set node.server HOST:PORT",
        )
    except TimeoutError:
        return HealthProbe("tcp", problem=f"UNREACHABLE: no answer within {timeout_s:g} s", fix=start_server)
    except OSError as exc:
        return HealthProbe("tcp", problem=f"UNREACHABLE: {exc.strerror or exc}", fix=start_server)
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            peer = tls.getpeercert() or {}
            days_left = _days_until(str(peer["notAfter"]))
            tls.sendall(f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            status_line = tls.recv(1024).split(b"\r\n", 1)[0].decode("latin-1")
    except ssl.SSLCertVerificationError as exc:
        return HealthProbe("tls", problem=_verification_problem(exc), fix=REINIT_NODE)
    except ssl.SSLError as exc:
        return HealthProbe(
            "tls", problem=f"TLS handshake failed ({exc.reason or exc}): is it a zk0 server with TLS?", fix=start_server
        )
    except TimeoutError:
        return HealthProbe("tls", problem=f"TLS or HTTP did not answer within {timeout_s:g} s", fix=start_server)
    except OSError as exc:
        return HealthProbe("tls", problem=f"connection dropped during TLS: {exc.strerror or exc}", fix=start_server)
    finally:
        raw.close()
    parts = status_line.split()
    if len(parts) < 2 or parts[1] != "200":
        return HealthProbe(
            "http",
            problem=f"GET /health answered {status_line or 'nothing'!r}",
            fix="look at the server's logs: zk0 server logs",
            days_left=days_left,
        )
    return HealthProbe("done", ok=True, days_left=days_left)


def _verification_problem(exc: ssl.SSLCertVerificationError) -> str:
    if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
        return (
            f"the server certificate does not name this address ({exc.verify_message}); the admin must add it "
            "with --public-address"
        )
    if exc.verify_code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return "the server certificate has expired"
    return (
        f"certificate chain not trusted by the pinned CA ({exc.verify_message}): wrong ca.pem, or the server's "
        "keys were re-made"
    )


def _chain_problem(ca, cert, server_key_path: Path) -> str:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "server.pem is not signed by ca.pem"
    try:
        key = serialization.load_pem_private_key(server_key_path.read_bytes(), password=None)
    except (ValueError, TypeError):
        return f"{server_key_path} is not an unencrypted PEM private key"
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return "server.key does not belong to server.pem"
    return ""


def _key_mode_problem(*keys: Path) -> str:
    loose = [k for k in keys if os.stat(k).st_mode & 0o077]
    return f"{loose[0]} is readable by other users (mode {oct(os.stat(loose[0]).st_mode & 0o777)})" if loose else ""


def _san_names(cert) -> list[str]:
    from cryptography import x509

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in sans.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in sans.get_values_for_type(x509.IPAddress)
    ]


def _days_left(*certs) -> int:
    soonest = min(c.not_valid_after_utc for c in certs)
    return (soonest - dt.datetime.now(dt.UTC)).days


def _days_until(not_after: str) -> int:
    expires = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), dt.UTC)
    return (expires - dt.datetime.now(dt.UTC)).days


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
