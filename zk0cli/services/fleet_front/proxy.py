"""The fleet front's connection handling: one h11 connection per client, requests checked from
their headers alone, bodies streamed to the SuperLink and responses streamed back."""

from __future__ import annotations

import asyncio
import collections
import ssl

import h11

from zk0cli.core.childlog import child_logger
from zk0cli.services.fleet_front import rules
from zk0cli.services.fleet_front.node_auth import NodeRegistry

log = child_logger("fleet_front")


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
            await asyncio.sleep(rules.REFUSAL_SUMMARY_S)
            self.flush()


class _ClientError(Exception):
    """The client sent something this front refuses; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _target(request: h11.Request) -> str:
    return request.target.decode(errors="replace")[:200]


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
        return idle < rules.UPSTREAM_REUSE_S and not self.reader.at_eof()

    async def send(self, event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            self.bytes_sent += len(data)
            await asyncio.wait_for(self.writer.drain(), rules.UPSTREAM_TIMEOUT_S)

    async def next_event(self):
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(self.reader.read(rules.READ_CHUNK), rules.UPSTREAM_TIMEOUT_S)
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
        self.bodies_in_flight = asyncio.Semaphore(rules.MAX_BODIES_IN_FLIGHT)
        self.connections: collections.Counter[str] = collections.Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = rules.peer_host(writer.get_extra_info("peername"))
        crowded = sum(self.connections.values()) >= rules.MAX_CONNECTIONS
        if crowded or self.connections[peer] >= rules.MAX_CONNECTIONS_PER_PEER:
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
        if not rules.is_allowed(request.method, request.target):
            return 403, "not a Fleet call"
        if sum(len(name) + len(value) for name, value in request.headers) > rules.MAX_HEADER_BYTES:
            return 431, "headers too large"
        path = request.target.split(b"?", 1)[0]
        if self.nodes is not None and path.startswith(rules.ALLOWED_PREFIXES[0]):
            reason = self.nodes.refusal(path, request.headers)
            if reason is not None:
                return 401, reason
        length = rules.content_length(request.headers)
        if length is not None and length > rules.body_cap(path):
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
                    log.info("retrying %s on a new SuperLink connection: %s", _target(request), exc)
                    continue
                log.warning("upstream failed during %s: %s", _target(request), exc)
                await self._reply(client, writer, 502, b"zk0: the SuperLink connection failed\n", close=True)
                return None
            if not upstream.reusable():
                upstream.close()
                return None
            return upstream
        return upstream

    async def _read_headers(self, client: h11.Connection, reader: asyncio.StreamReader):
        """The next request's headers: IDLE_TIMEOUT_S for its first byte, then HEADER_DEADLINE_S in all."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError as exc:
                raise _ClientError(exc.error_status_hint, "malformed request") from exc
            if event is not h11.NEED_DATA:
                return event
            timeout = rules.IDLE_TIMEOUT_S if deadline is None else deadline - loop.time()
            if timeout <= 0:
                raise TimeoutError("request headers too slow")
            data = await asyncio.wait_for(reader.read(rules.READ_CHUNK), timeout)
            if deadline is None:
                deadline = loop.time() + rules.HEADER_DEADLINE_S
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
            client.receive_data(await asyncio.wait_for(reader.read(rules.READ_CHUNK), timeout))

    async def _reply(
        self, client: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes, close: bool = False
    ) -> None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        writer.write(client.send(h11.Response(status_code=status, headers=headers, reason=rules.REASONS[status])))
        writer.write(client.send(h11.Data(data=body)))
        writer.write(client.send(h11.EndOfMessage()))
        await asyncio.wait_for(writer.drain(), rules.DRAIN_TIMEOUT_S)

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
                headers=rules.upstream_headers(request.headers, peer, f"{self.upstream_host}:{self.upstream_port}"),
                http_version=b"1.1",
            )
        )
        await self._forward_body(client, reader, upstream, rules.body_cap(request.target.split(b"?", 1)[0]))
        await self._forward_response(client, writer, upstream)

    async def _forward_body(
        self, client: h11.Connection, reader: asyncio.StreamReader, upstream: _Upstream, cap: int
    ) -> None:
        try:
            await asyncio.wait_for(self.bodies_in_flight.acquire(), rules.UPSTREAM_TIMEOUT_S)
        except TimeoutError as exc:
            raise _ClientError(503, "too many bodies in flight") from exc
        try:
            deadline = asyncio.get_running_loop().time() + rules.BODY_DEADLINE_S
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
                headers = rules.without_hop_by_hop(event.headers)
                writer.write(
                    client.send(h11.Response(status_code=event.status_code, headers=headers, reason=event.reason))
                )
            elif isinstance(event, h11.Data):
                writer.write(client.send(event))
                await asyncio.wait_for(writer.drain(), rules.DRAIN_TIMEOUT_S)
            elif isinstance(event, h11.EndOfMessage):
                writer.write(client.send(h11.EndOfMessage()))
                await asyncio.wait_for(writer.drain(), rules.DRAIN_TIMEOUT_S)
                return
            else:
                raise OSError("the SuperLink closed the connection mid-response")


async def _lingering_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close after discarding briefly what the client still sends: closing on unread bytes sends a TCP
    reset, which makes the client lose the refusal it was just sent."""

    async def discard() -> None:
        discarded = 0
        while discarded < rules.LINGER_MAX_BYTES and not reader.at_eof():
            discarded += len(await reader.read(rules.READ_CHUNK))

    try:
        await asyncio.wait_for(discard(), rules.LINGER_S)
    except (TimeoutError, OSError, ssl.SSLError):
        pass
    writer.close()


async def _raw_reply(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    """A closing response written without h11, for requests h11 could not parse."""
    head = f"HTTP/1.1 {status} {rules.REASONS.get(status, b'Error').decode()}\r\ncontent-type: text/plain\r\n"
    head += f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    writer.write(head.encode() + body)
    await asyncio.wait_for(writer.drain(), rules.DRAIN_TIMEOUT_S)
