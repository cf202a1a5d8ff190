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

Run: ``python -m zk0cli.services.fleet_proxy --listen HOST:PORT --upstream 127.0.0.1:PORT
[--certfile F --keyfile F --cafile F | --insecure]``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

import h11

from zk0cli.core.childlog import child_logger

ALLOWED_PREFIXES = (b"/v1/fleet/",)
ALLOWED_EXACT = (b"/health",)
FORBIDDEN_TOKENS = (b"..", b"%", b"//", b"\\")
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"proxy-authorization"}
READ_CHUNK = 256 * 1024
REASONS = {403: b"Forbidden", 502: b"Bad Gateway"}
IDLE_TIMEOUT_S = 300.0  # a client connection with no request for this long is closed
UPSTREAM_TIMEOUT_S = 120.0  # the SuperLink must start answering within this

log = child_logger("fleet_proxy")


def is_allowed(method: bytes, target: bytes) -> bool:
    """Only Fleet API calls and the health check may pass."""
    if not target.startswith(b"/") or any(token in target for token in FORBIDDEN_TOKENS):
        return False
    path = target.split(b"?", 1)[0]
    if path in ALLOWED_EXACT:
        return method in (b"GET", b"HEAD")
    return any(path.startswith(prefix) for prefix in ALLOWED_PREFIXES)


class _Upstream:
    """One connection to the SuperLink, reused for the requests of one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

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
            return True
        return False

    def close(self) -> None:
        self.writer.close()


class FleetProxy:
    def __init__(self, upstream_host: str, upstream_port: int, upstream_ssl: ssl.SSLContext | None):
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.upstream_ssl = upstream_ssl

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = h11.Connection(h11.SERVER)
        upstream: _Upstream | None = None
        try:
            while True:
                request = await self._next_client_event(client, reader)
                if not isinstance(request, h11.Request):
                    break
                if not is_allowed(request.method, request.target):
                    log.warning(
                        "refused %s %s from %s",
                        request.method.decode(),
                        request.target.decode(errors="replace")[:200],
                        _peer(peer),
                    )
                    await self._drain_body(client, reader)
                    await self._reply(client, writer, 403, b"zk0: only the Fleet API is served on this address\n")
                elif upstream is None and not (upstream := await self._connect()):
                    await self._drain_body(client, reader)
                    await self._reply(client, writer, 502, b"zk0: the SuperLink is not reachable right now\n")
                else:
                    try:
                        await self._forward(client, reader, writer, upstream, request)
                    except (TimeoutError, OSError, h11.ProtocolError) as exc:
                        upstream.close()
                        upstream = None
                        if client.our_state is not h11.SEND_RESPONSE:
                            raise  # part of a response went out already: only closing is left
                        log.warning("upstream failed during %s: %s", request.target.decode(errors="replace")[:200], exc)
                        await self._drain_body(client, reader)
                        await self._reply(client, writer, 502, b"zk0: the SuperLink connection failed\n")
                    else:
                        if not upstream.reusable():
                            upstream.close()
                            upstream = None
                if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
                    break
                client.start_next_cycle()
        except (TimeoutError, OSError, h11.ProtocolError, ssl.SSLError):
            pass  # a client that goes away or speaks nonsense only loses its own connection
        finally:
            if upstream is not None:
                upstream.close()
            writer.close()

    async def _next_client_event(self, client: h11.Connection, reader: asyncio.StreamReader):
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), IDLE_TIMEOUT_S)
                client.receive_data(data)
                continue
            return event

    async def _drain_body(self, client: h11.Connection, reader: asyncio.StreamReader) -> None:
        while client.their_state is h11.SEND_BODY:
            event = await self._next_client_event(client, reader)
            if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break

    async def _reply(self, client: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        writer.write(client.send(h11.Response(status_code=status, headers=headers, reason=REASONS[status])))
        writer.write(client.send(h11.Data(data=body)))
        writer.write(client.send(h11.EndOfMessage()))
        await writer.drain()

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
    ) -> None:
        headers = [(name, value) for name, value in request.headers if name.lower() not in HOP_BY_HOP]
        await upstream.send(
            h11.Request(method=request.method, target=request.target, headers=headers, http_version=b"1.1")
        )
        while True:  # request body, streamed
            event = await self._next_client_event(client, reader)
            if isinstance(event, h11.Data):
                await upstream.send(event)
            elif isinstance(event, h11.EndOfMessage):
                await upstream.send(event)
                break
            else:
                raise h11.RemoteProtocolError("client closed mid-request")
        while True:  # response, streamed
            event = await upstream.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                headers = [(name, value) for name, value in event.headers if name.lower() not in HOP_BY_HOP]
                writer.write(
                    client.send(h11.Response(status_code=event.status_code, headers=headers, reason=event.reason))
                )
            elif isinstance(event, h11.Data):
                writer.write(client.send(event))
                await writer.drain()
            elif isinstance(event, h11.EndOfMessage):
                writer.write(client.send(h11.EndOfMessage()))
                await writer.drain()
                return
            else:
                raise OSError("the SuperLink closed the connection mid-response")


def _peer(peer) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


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
    async with server:
        await stop.wait()
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
    args = parser.parse_args(argv)
    if not args.insecure and not (args.certfile and args.keyfile and args.cafile):
        parser.error("TLS needs --certfile, --keyfile and --cafile (or --insecure)")
    listen_host, listen_port = _split(args.listen)
    upstream_host, upstream_port = _split(args.upstream)
    server_ssl = None if args.insecure else server_ssl_context(args.certfile, args.keyfile)
    upstream_ssl = None if args.insecure else upstream_ssl_context(args.cafile)
    try:
        asyncio.run(serve(listen_host, listen_port, FleetProxy(upstream_host, upstream_port, upstream_ssl), server_ssl))
    except OSError as exc:
        log.error("cannot listen on %s: %s", args.listen, exc.strerror or exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
