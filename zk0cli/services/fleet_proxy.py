"""The fleet-only front of the SuperLink: the only thing zk0 exposes on the public address.

Why: Flower 1.42 serves Fleet (``/v1/fleet/*``), Control (``/v1/control/*``) and Runtime on ONE
HTTP port, and without OIDC the Control API does not authenticate anyone. Whoever reaches that
port can submit a run, i.e. execute code on the server and on every node. So ``zk0 server serve``
binds the SuperLink to 127.0.0.1 and puts this proxy on the public host:port. It passes
``/v1/fleet/*`` (all a SuperNode ever calls) and ``GET /health``, and answers everything else
with 403, so Control and Runtime stay reachable only on the server host (or through an SSH tunnel).

Design choices:
- A reverse proxy rather than patching Flower: Flower stays unmodified and upgradable, and the
  rule is one line that a test can prove from the outside.
- asyncio + h11 (both already installed with flwr/httpx) instead of uvicorn/starlette: the proxy
  forwards bytes and never decodes protobuf bodies, starts in ~0.1 s, and h11 does the HTTP/1.1
  framing (Content-Length and chunked) both ways, so bodies stream through in pieces, with
  keep-alive. Flower's SuperNode speaks HTTP/1.1 (httpx, no HTTP/2).
- TLS is terminated here with the server certificate from ``zk0 init --role server``; the hop to
  the SuperLink is TLS again on loopback, verified against the federation CA (Flower's node
  auth requires TLS on the SuperLink itself). Headers, including node-auth signatures, pass
  through untouched.
- Request targets are matched strictly: origin-form only, no ``..``, ``%`` or ``//`` anywhere, so
  no encoding trick can reach another route behind the proxy.
- When the SuperLink is down the proxy answers 502, which Flower's SuperNode treats as
  "retry later", so nodes ride out a SuperLink restart.
- Node auth is checked HERE, before a single body byte is forwarded: the SuperLink reads a whole
  body into memory before its own node-auth check, so an unauthenticated 200 MB POST would
  otherwise land in its memory. The front verifies what Flower's SuperNode signs (an ECDSA-SHA256
  signature over the ISO timestamp, the key a registered node's from ``--nodes-file``); the
  SuperLink still checks the node id against the key.
- Bounded per request: a body cap per route (413 before reading), a cap on bodies in flight,
  deadlines for a request's headers and for its body (not per read: a byte every few minutes
  must not hold a connection), a timeout on writes to clients that stop reading, and caps on
  connections in total and per peer. Refusals are counted and logged as one summary line per
  interval, so an outsider cannot flood the log.

Run: ``python -m zk0cli.services.fleet_proxy --listen HOST:PORT --upstream 127.0.0.1:PORT
[--certfile F --keyfile F --cafile F | --insecure] [--nodes-file server-nodes.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

import h11
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from zk0cli.core import files
from zk0cli.core.childlog import child_logger

ALLOWED_PREFIXES = (b"/v1/fleet/",)
ALLOWED_EXACT = (b"/health",)
FORBIDDEN_TOKENS = (b"..", b"%", b"//", b"\\")
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"proxy-authorization"}
READ_CHUNK = 256 * 1024
REASONS = {
    400: b"Bad Request",
    431: b"Request Header Fields Too Large",
    401: b"Unauthorized",
    403: b"Forbidden",
    413: b"Content Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}
IDLE_TIMEOUT_S = 300.0  # a client connection with no request for this long is closed
HEADER_DEADLINE_S = 30.0  # from a request's first byte to the end of its headers
BODY_DEADLINE_S = 300.0  # for a whole request body (a 6 MiB object on a slow uplink)
DRAIN_TIMEOUT_S = 60.0  # a client that stops reading its response is dropped after this
UPSTREAM_TIMEOUT_S = 120.0  # the SuperLink must start answering within this
# The SuperLink's uvicorn closes keep-alive connections idle for 5 s; reuse ours only well inside that.
UPSTREAM_REUSE_S = 3.0
# Flower ships arrays as content-addressed objects in chunks of at most 5 MiB
# (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE), one push-object call each, so its body is bounded by the
# chunk plus protobuf framing whatever the model; 1 MiB of margin covers the framing with room.
PUSH_OBJECT_BODY_CAP = 5 * 1024 * 1024 + 1024 * 1024
OTHER_BODY_CAP = 1024 * 1024  # every other Fleet call carries ids, metadata and small messages
FIRST_CONTACT_PATHS = (b"/v1/fleet/register-node", b"/v1/fleet/activate-node")
FIRST_CONTACT_BODY_CAP = 16 * 1024  # a node's first calls carry little more than its PEM public key
MAX_BODIES_IN_FLIGHT = 16
MAX_HEADER_BYTES = 16 * 1024  # h11's own limit, which it applies only to headers that arrive in pieces
MAX_CONNECTIONS = 512
MAX_CONNECTIONS_PER_PEER = 32
REFUSAL_SUMMARY_S = 60.0
LINGER_S = 1.0  # before closing a connection, discard what the client still sends for at most this long
LINGER_MAX_BYTES = 16 * 1024 * 1024
# Flower's node-auth window (flwr/superlink/routers/fleet/node_auth.py): -5 s < age < 305 s.
TIMESTAMP_MIN_AGE_S = -5.0
TIMESTAMP_MAX_AGE_S = 305.0
PUBLIC_KEY_HEADER = b"flwr-public-key"
TIMESTAMP_HEADER = b"flwr-timestamp"
SIGNATURE_HEADER = b"flwr-signature"
FORWARDED_HEADERS = (b"forwarded", b"x-forwarded-", b"x-real-ip")

log = child_logger("fleet_proxy")


def is_allowed(method: bytes, target: bytes) -> bool:
    """Only Fleet API calls and the health check may pass."""
    if not target.startswith(b"/") or any(token in target for token in FORBIDDEN_TOKENS):
        return False
    path = target.split(b"?", 1)[0]
    if path in ALLOWED_EXACT:
        return method in (b"GET", b"HEAD")
    return any(path.startswith(prefix) for prefix in ALLOWED_PREFIXES)


def body_cap(path: bytes) -> int:
    if path in FIRST_CONTACT_PATHS:
        return FIRST_CONTACT_BODY_CAP
    return PUSH_OBJECT_BODY_CAP if path == b"/v1/fleet/push-object" else OTHER_BODY_CAP


def _spki_der(public_key: object) -> bytes:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("not an EC public key")
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class NodeRegistry:
    """The public keys of the nodes registered with ``zk0 server nodes add``, re-read when the file changes."""

    def __init__(self, path: Path):
        self.path = path
        self._mtime_ns: int | None = None
        self._keys: dict[bytes, ec.EllipticCurvePublicKey] = {}

    def keys(self) -> dict[bytes, ec.EllipticCurvePublicKey]:
        try:
            mtime_ns = os.stat(self.path).st_mtime_ns
        except OSError:
            mtime_ns = None
        if mtime_ns != self._mtime_ns:
            self._mtime_ns = mtime_ns
            self._keys = self._load()
        return self._keys

    def _load(self) -> dict[bytes, ec.EllipticCurvePublicKey]:
        keys: dict[bytes, ec.EllipticCurvePublicKey] = {}
        entries = files.read_json(self.path, default={})
        for entry in entries.values() if isinstance(entries, dict) else ():
            try:
                key = serialization.load_ssh_public_key(str(entry["public_key"]).encode())
                keys[_spki_der(key)] = key  # type: ignore[assignment]
            except (KeyError, TypeError, ValueError, UnsupportedAlgorithm):
                log.warning("server-nodes.json: skipped an entry without a usable EC public key")
        return keys

    def refusal(self, path: bytes, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """Why this request's node-auth headers fail (None: they pass), checked as Flower's SuperLink does."""
        values = {name.lower(): value for name, value in headers}
        try:
            pem = base64.b64decode(values[PUBLIC_KEY_HEADER], validate=True)
            signature = base64.b64decode(values[SIGNATURE_HEADER], validate=True)
            timestamp = values[TIMESTAMP_HEADER]
            claimed = _spki_der(serialization.load_pem_public_key(pem))
        except (KeyError, ValueError, TypeError, UnsupportedAlgorithm):
            return "no node auth"
        key: object = self.keys().get(claimed)
        if key is None and path in FIRST_CONTACT_PATHS:
            # The SuperLink answers an unregistered key with its own "not registered" error, which
            # zk0 node join explains; the body is capped small, so the key need only sign correctly.
            key = serialization.load_pem_public_key(pem)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return "unknown node"
        try:
            signed_at = datetime.datetime.fromisoformat(timestamp.decode("ascii"))
            age = (datetime.datetime.now(datetime.UTC) - signed_at).total_seconds()
        except (ValueError, TypeError, UnicodeError):
            return "bad timestamp"
        if not TIMESTAMP_MIN_AGE_S < age < TIMESTAMP_MAX_AGE_S:
            return "stale timestamp"
        try:
            key.verify(signature, timestamp, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return "bad signature"
        return None


class RefusalLog:
    """Counts refusals per peer and reason, logged as one line per interval instead of one per request."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def add(self, peer: str, reason: str) -> None:
        self.counts[(peer, reason)] += 1

    def flush(self) -> None:
        if self.counts:
            top = ", ".join(f"{peer} {reason} x{n}" for (peer, reason), n in self.counts.most_common(10))
            more = len(self.counts) - 10
            log.warning(
                "refused %d requests: %s%s", sum(self.counts.values()), top, f" (+{more} more)" if more > 0 else ""
            )
            self.counts.clear()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(REFUSAL_SUMMARY_S)
            self.flush()


class _ClientError(Exception):
    """The client sent something this front refuses; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Upstream:
    """One connection to the SuperLink, reused for the requests of one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)
        self.last_used = asyncio.get_running_loop().time()
        self.bytes_sent = 0

    def fresh(self) -> bool:
        """Safe to reuse: idle less than the SuperLink keeps it open, and not closed by it."""
        idle = asyncio.get_running_loop().time() - self.last_used
        return idle < UPSTREAM_REUSE_S and not self.reader.at_eof()

    async def send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            self.bytes_sent += len(data)
            await asyncio.wait_for(self.writer.drain(), UPSTREAM_TIMEOUT_S)

    async def next_event(self):
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(self.reader.read(READ_CHUNK), UPSTREAM_TIMEOUT_S)
                self.conn.receive_data(data)
                continue
            return event

    def reusable(self) -> bool:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self.last_used = asyncio.get_running_loop().time()
            self.bytes_sent = 0
            return True
        return False

    def close(self) -> None:
        self.writer.close()


class FleetProxy:
    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        upstream_ssl: ssl.SSLContext | None,
        nodes: NodeRegistry | None = None,
    ):
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.upstream_ssl = upstream_ssl
        self.nodes = nodes
        self.refusals = RefusalLog()
        self.bodies_in_flight = asyncio.Semaphore(MAX_BODIES_IN_FLIGHT)
        self.connections: collections.Counter[str] = collections.Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_host(writer.get_extra_info("peername"))
        if sum(self.connections.values()) >= MAX_CONNECTIONS or self.connections[peer] >= MAX_CONNECTIONS_PER_PEER:
            self.refusals.add(peer, "too many connections")
            writer.close()
            return
        self.connections[peer] += 1
        try:
            await self._serve_connection(peer, reader, writer)
        finally:
            self.connections[peer] -= 1
            if not self.connections[peer]:
                del self.connections[peer]

    async def _serve_connection(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = h11.Connection(h11.SERVER)
        upstream: _Upstream | None = None
        try:
            while True:
                request = await self._read_headers(client, reader)
                if not isinstance(request, h11.Request):
                    break
                refusal = self._refusal(request)
                if refusal is not None:
                    status, reason = refusal
                    self.refusals.add(peer, reason)
                    await self._reply(client, writer, status, f"zk0: refused: {reason}\n".encode(), close=True)
                    break
                if upstream is not None and not upstream.fresh():
                    upstream.close()
                    upstream = None
                upstream = await self._forward_with_retry(client, reader, writer, upstream, request, peer)
                if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
                    break
                client.start_next_cycle()
        except _ClientError as exc:
            self.refusals.add(peer, exc.reason)
            if client.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing of a response went out yet
                await _raw_reply(writer, exc.status, f"zk0: refused: {exc.reason}\n".encode())
        except (TimeoutError, OSError, h11.ProtocolError, ssl.SSLError):
            pass  # a client that goes away or speaks nonsense only loses its own connection
        finally:
            if upstream is not None:
                upstream.close()
            await _lingering_close(reader, writer)

    def _refusal(self, request: h11.Request) -> tuple[int, str] | None:
        """(status, reason) when this request must not reach the SuperLink; decided from its headers alone."""
        if not is_allowed(request.method, request.target):
            return 403, "not a Fleet call"
        if sum(len(name) + len(value) for name, value in request.headers) > MAX_HEADER_BYTES:
            return 431, "headers too large"
        path = request.target.split(b"?", 1)[0]
        if self.nodes is not None and path.startswith(ALLOWED_PREFIXES[0]):
            reason = self.nodes.refusal(path, request.headers)
            if reason is not None:
                return 401, reason
        length = _content_length(request.headers)
        if length is not None and length > body_cap(path):
            return 413, "body over the cap"
        return None

    async def _forward_with_retry(
        self,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: _Upstream | None,
        request: h11.Request,
        peer: str,
    ) -> _Upstream | None:
        """Forward one request; a failure before any byte reached the SuperLink is retried once on a new connection."""
        for attempt in (1, 2):
            if upstream is None and not (upstream := await self._connect()):
                await self._reply(client, writer, 502, b"zk0: the SuperLink is not reachable right now\n", close=True)
                return None
            try:
                await self._forward(client, reader, writer, upstream, request, peer)
            except _ClientError:
                upstream.close()
                raise
            except (TimeoutError, OSError, h11.ProtocolError) as exc:
                nothing_sent = upstream.bytes_sent == 0
                upstream.close()
                upstream = None
                if client.our_state is not h11.SEND_RESPONSE:
                    raise  # part of a response went out already: only closing is left
                if attempt == 1 and nothing_sent:
                    continue
                log.warning("upstream failed during %s: %s", request.target.decode(errors="replace")[:200], exc)
                await self._reply(client, writer, 502, b"zk0: the SuperLink connection failed\n", close=True)
                return None
            if not upstream.reusable():
                upstream.close()
                return None
            return upstream
        return upstream

    async def _read_headers(self, client: h11.Connection, reader: asyncio.StreamReader):
        """The next request's headers: up to IDLE_TIMEOUT_S for its first byte, then HEADER_DEADLINE_S in all."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError as exc:
                raise _ClientError(exc.error_status_hint, "malformed request") from exc
            if event is not h11.NEED_DATA:
                return event
            timeout = IDLE_TIMEOUT_S if deadline is None else deadline - loop.time()
            if timeout <= 0:
                raise TimeoutError("request headers too slow")
            data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
            if deadline is None:
                deadline = loop.time() + HEADER_DEADLINE_S
            client.receive_data(data)

    async def _read_body_event(self, client: h11.Connection, reader: asyncio.StreamReader, deadline: float):
        loop = asyncio.get_running_loop()
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError as exc:
                raise _ClientError(400, "malformed body") from exc
            if event is not h11.NEED_DATA:
                return event
            timeout = deadline - loop.time()
            if timeout <= 0:
                raise TimeoutError("request body too slow")
            client.receive_data(await asyncio.wait_for(reader.read(READ_CHUNK), timeout))

    async def _reply(
        self, client: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes, close: bool = False
    ) -> None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        writer.write(client.send(h11.Response(status_code=status, headers=headers, reason=REASONS[status])))
        writer.write(client.send(h11.Data(data=body)))
        writer.write(client.send(h11.EndOfMessage()))
        await asyncio.wait_for(writer.drain(), DRAIN_TIMEOUT_S)

    async def _connect(self) -> _Upstream | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.upstream_host,
                    self.upstream_port,
                    ssl=self.upstream_ssl,
                    server_hostname=self.upstream_host if self.upstream_ssl else None,
                ),
                10.0,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            log.warning("cannot reach the SuperLink at %s:%s: %s", self.upstream_host, self.upstream_port, exc)
            return None
        return _Upstream(reader, writer)

    async def _forward(
        self,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: _Upstream,
        request: h11.Request,
        peer: str,
    ) -> None:
        await upstream.send(
            h11.Request(
                method=request.method,
                target=request.target,
                headers=_upstream_headers(request.headers, peer),
                http_version=b"1.1",
            )
        )
        await self._forward_body(client, reader, upstream, body_cap(request.target.split(b"?", 1)[0]))
        await self._forward_response(client, writer, upstream)

    async def _forward_body(
        self, client: h11.Connection, reader: asyncio.StreamReader, upstream: _Upstream, cap: int
    ) -> None:
        try:
            await asyncio.wait_for(self.bodies_in_flight.acquire(), UPSTREAM_TIMEOUT_S)
        except TimeoutError as exc:
            raise _ClientError(503, "too many bodies in flight") from exc
        try:
            deadline = asyncio.get_running_loop().time() + BODY_DEADLINE_S
            received = 0
            while True:
                event = await self._read_body_event(client, reader, deadline)
                if isinstance(event, h11.Data):
                    received += len(event.data)
                    if received > cap:  # chunked bodies announce no length: cut them off at the cap
                        raise _ClientError(413, "body over the cap")
                    await upstream.send(event)
                elif isinstance(event, h11.EndOfMessage):
                    await upstream.send(event)
                    return
                else:
                    raise h11.RemoteProtocolError("client closed mid-request")
        finally:
            self.bodies_in_flight.release()

    async def _forward_response(
        self, client: h11.Connection, writer: asyncio.StreamWriter, upstream: _Upstream
    ) -> None:
        while True:
            event = await upstream.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                headers = _without_hop_by_hop(event.headers)
                writer.write(
                    client.send(h11.Response(status_code=event.status_code, headers=headers, reason=event.reason))
                )
            elif isinstance(event, h11.Data):
                writer.write(client.send(event))
                await asyncio.wait_for(writer.drain(), DRAIN_TIMEOUT_S)
            elif isinstance(event, h11.EndOfMessage):
                writer.write(client.send(h11.EndOfMessage()))
                await asyncio.wait_for(writer.drain(), DRAIN_TIMEOUT_S)
                return
            else:
                raise OSError("the SuperLink closed the connection mid-response")


async def _lingering_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close after discarding briefly what the client still sends: closing on unread bytes sends a TCP
    reset, which makes the client lose the refusal it was just sent."""

    async def discard() -> None:
        discarded = 0
        while discarded < LINGER_MAX_BYTES and not reader.at_eof():
            discarded += len(await reader.read(READ_CHUNK))

    try:
        await asyncio.wait_for(discard(), LINGER_S)
    except (TimeoutError, OSError, ssl.SSLError):
        pass
    writer.close()


async def _raw_reply(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    """A closing response written without h11, for requests h11 could not parse."""
    head = f"HTTP/1.1 {status} {REASONS.get(status, b'Error').decode()}\r\ncontent-type: text/plain\r\n"
    head += f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await asyncio.wait_for(writer.drain(), DRAIN_TIMEOUT_S)


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value)  # h11 has already rejected malformed or conflicting values
    return None


def _without_hop_by_hop(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers, including every header the Connection header names."""
    named = {
        token.strip().lower() for name, value in headers if name.lower() == b"connection" for token in value.split(b",")
    }
    return [(name, value) for name, value in headers if name.lower() not in HOP_BY_HOP and name.lower() not in named]


def _upstream_headers(headers: Sequence[tuple[bytes, bytes]], peer: str) -> list[tuple[bytes, bytes]]:
    """What the SuperLink sees: no client-supplied forwarding headers, the real peer in X-Forwarded-For."""
    kept = [
        (name, value) for name, value in _without_hop_by_hop(headers) if not name.lower().startswith(FORWARDED_HEADERS)
    ]
    return [*kept, (b"x-forwarded-for", peer.encode())]


def _peer_host(peer: object) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


def server_ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


def upstream_ssl_context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


async def serve(listen_host: str, listen_port: int, proxy: FleetProxy, server_ssl: ssl.SSLContext | None) -> None:
    server = await asyncio.start_server(
        proxy.handle,
        listen_host,
        listen_port,
        ssl=server_ssl,
        ssl_handshake_timeout=30.0 if server_ssl else None,
        reuse_address=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    scheme = "https" if server_ssl else "http"
    log.info(
        "fleet proxy on %s://%s:%s -> SuperLink %s:%s (only /v1/fleet/* and /health pass)",
        scheme,
        listen_host,
        listen_port,
        proxy.upstream_host,
        proxy.upstream_port,
    )
    summaries = asyncio.create_task(proxy.refusals.run())
    async with server:
        await stop.wait()
    summaries.cancel()
    proxy.refusals.flush()
    log.info("fleet proxy stopped")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zk0-fleet-proxy", description="Fleet-only TLS front of a Flower SuperLink.")
    parser.add_argument("--listen", required=True, help="public HOST:PORT")
    parser.add_argument("--upstream", required=True, help="the SuperLink's loopback HOST:PORT")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--cafile", help="CA that signed the SuperLink's certificate")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP on both sides")
    parser.add_argument("--nodes-file", type=Path, help="server-nodes.json: verify node auth against these keys")
    args = parser.parse_args(argv)
    if not args.insecure and not (args.certfile and args.keyfile and args.cafile):
        parser.error("TLS needs --certfile, --keyfile and --cafile (or --insecure)")
    listen_host, listen_port = _split(args.listen)
    upstream_host, upstream_port = _split(args.upstream)
    server_ssl = None if args.insecure else server_ssl_context(args.certfile, args.keyfile)
    upstream_ssl = None if args.insecure else upstream_ssl_context(args.cafile)
    try:
        nodes = NodeRegistry(args.nodes_file) if args.nodes_file else None
        proxy = FleetProxy(upstream_host, upstream_port, upstream_ssl, nodes)
        asyncio.run(serve(listen_host, listen_port, proxy, server_ssl))
    except OSError as exc:
        log.error("cannot listen on %s: %s", args.listen, exc.strerror or exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
