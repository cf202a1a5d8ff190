"""The fleet front against hostile clients: node auth and caps before any body byte reaches the SuperLink.

The proxy's asyncio server runs in-process against a stand-in SuperLink that records every byte it
receives, so each test can prove what did NOT get through. Loopback only, plain HTTP (TLS changes
nothing about these rules).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from node_auth_headers import signed_headers

from zk0cli.services.fleet_front import proxy as front_proxy
from zk0cli.services.fleet_front import rules
from zk0cli.services.fleet_front.node_auth import NodeRegistry
from zk0cli.services.fleet_front.proxy import FleetProxy

BIG = 200 * 1024 * 1024


class FakeSuperLink:
    """Answers every request with 200 and counts the bytes that reached it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                self.received += data
                buffer += data
                while b"\r\n\r\n" in buffer:
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ),
                        0,
                    )
                    while len(buffer) < length:
                        more = await reader.read(65536)
                        self.received += more
                        buffer += more
                    buffer = buffer[length:]
                    echo = head.replace(b"\r\n", b"\n")
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(echo) + echo)
                    await writer.drain()
        finally:
            writer.close()


def _register(path: Path, *keys: ec.EllipticCurvePrivateKey) -> None:
    entries = {}
    for number, key in enumerate(keys, start=1):
        openssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        entries[str(number)] = {"name": f"node{number}", "public_key": openssh.decode()}
    path.write_text(json.dumps(entries), encoding="utf-8")


def _head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: front", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _exchange(port: int, request: bytes, body_bytes: int = 0, chunked: bool = False) -> bytes:
    """Send ``request`` then up to ``body_bytes`` of body while the front lets us; return what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    piece = b"x" * (1024 * 1024)
    try:
        for _ in range(body_bytes // len(piece)):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await asyncio.wait_for(writer.drain(), 2)
        if chunked and body_bytes:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
    except (ConnectionError, TimeoutError):
        pass  # the front refused and closed: what it answered is still in the reader
    try:
        return await asyncio.wait_for(reader.read(65536), 5)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def _run(tmp_path: Path, body: Callable[[int, FakeSuperLink, ec.EllipticCurvePrivateKey], Awaitable[None]]) -> None:
    async def main() -> None:
        upstream = FakeSuperLink()
        upstream_port = await upstream.start()
        node_key = ec.generate_private_key(ec.SECP384R1())
        nodes_file = tmp_path / "server-nodes.json"
        _register(nodes_file, node_key)
        proxy = FleetProxy("127.0.0.1", upstream_port, None, NodeRegistry(nodes_file))
        front = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        try:
            await body(front.sockets[0].getsockname()[1], upstream, node_key)
        finally:
            front.close()
            assert upstream.server is not None
            upstream.server.close()

    asyncio.run(asyncio.wait_for(main(), 60))


PUSH = "/v1/fleet/push-object"


@pytest.mark.parametrize("chunked", [False, True])
def test_unauthenticated_and_wrongly_signed_big_bodies_never_reach_the_superlink(tmp_path: Path, chunked: bool):
    async def body(port: int, upstream: FakeSuperLink, node_key: ec.EllipticCurvePrivateKey) -> None:
        framing = [("transfer-encoding", "chunked")] if chunked else [("content-length", str(BIG))]
        stranger = ec.generate_private_key(ec.SECP384R1())
        forged = signed_headers(stranger)
        forged[0] = signed_headers(node_key)[0]  # a registered key with a signature it did not make
        cases = {
            "no node auth": [],
            "unknown node": signed_headers(stranger),
            "bad signature": forged,
            "stale timestamp": signed_headers(node_key, age_s=400),
        }
        for reason, auth in cases.items():
            answer = await _exchange(
                port, _head("POST", PUSH, framing + auth), body_bytes=8 * 1024 * 1024, chunked=chunked
            )
            assert answer.startswith(b"HTTP/1.1 401"), (reason, answer[:200])
            assert reason.encode() in answer
        assert upstream.received == b""

    _run(tmp_path, body)


def test_a_registered_node_passes_with_its_headers_and_the_real_peer(tmp_path: Path):
    async def body(port: int, upstream: FakeSuperLink, node_key: ec.EllipticCurvePrivateKey) -> None:
        spoofed = [("content-length", "5"), ("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=6.6.6.6")]
        answer = await _exchange(port, _head("POST", PUSH, spoofed + signed_headers(node_key)) + b"hello")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"x-forwarded-for: 127.0.0.1" in upstream.received.lower()
        assert b"6.6.6.6" not in upstream.received
        assert upstream.received.endswith(b"hello")

    _run(tmp_path, body)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_registered_node_is_capped_per_route(tmp_path: Path, chunked: bool):
    async def body(port: int, upstream: FakeSuperLink, node_key: ec.EllipticCurvePrivateKey) -> None:
        framing = [("transfer-encoding", "chunked")] if chunked else [("content-length", str(BIG))]
        answer = await _exchange(
            port, _head("POST", PUSH, framing + signed_headers(node_key)), body_bytes=16 * 1024 * 1024, chunked=chunked
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert len(upstream.received) <= rules.PUSH_OBJECT_BODY_CAP + 64 * 1024

    _run(tmp_path, body)


def test_the_registry_is_reread_when_nodes_are_added(tmp_path: Path):
    async def body(port: int, upstream: FakeSuperLink, node_key: ec.EllipticCurvePrivateKey) -> None:
        newcomer = ec.generate_private_key(ec.SECP384R1())
        request = _head("POST", "/v1/fleet/pull-messages", [("content-length", "0"), *signed_headers(newcomer)])
        assert (await _exchange(port, request)).startswith(b"HTTP/1.1 401")
        _register(tmp_path / "server-nodes.json", node_key, newcomer)
        assert (await _exchange(port, request)).startswith(b"HTTP/1.1 200")

    _run(tmp_path, body)


def test_an_unregistered_key_reaches_only_activation_to_hear_flowers_own_error(tmp_path: Path):
    async def body(port: int, upstream: FakeSuperLink, node_key: ec.EllipticCurvePrivateKey) -> None:
        stranger = signed_headers(ec.generate_private_key(ec.SECP384R1()))
        activate = _head("POST", "/v1/fleet/activate-node", [("content-length", "0"), *stranger])
        assert (await _exchange(port, activate)).startswith(b"HTTP/1.1 200")
        too_big = _head("POST", "/v1/fleet/activate-node", [("content-length", str(BIG)), *stranger])
        assert (await _exchange(port, too_big)).startswith(b"HTTP/1.1 413")

    _run(tmp_path, body)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/control/start-run HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        b"POST /v1/fleet/../control/list-runs HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        b"POST /v1/fleet/%2e%2e/control/list-runs HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        b"POST http://x/v1/control/list-runs HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        b"CONNECT 127.0.0.1:9093 HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST /v1/fleet/x HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/fleet/x HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        b"POST /v1/fleet/x HTTP/1.1\r\nhost: x\r\ncontent-length:\r\n 3\r\n\r\nabc",
        b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
        b"POST /v1/control/start-run HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
    ],
)
def test_nothing_but_fleet_calls_reach_the_superlink(tmp_path: Path, request_bytes: bytes):
    async def body(port: int, upstream: FakeSuperLink, node_key: ec.EllipticCurvePrivateKey) -> None:
        await _exchange(port, request_bytes)
        assert b"control" not in bytes(upstream.received)
        assert b"CONNECT" not in bytes(upstream.received)

    _run(tmp_path, body)


def test_slow_headers_are_cut_off_at_the_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(rules, "HEADER_DEADLINE_S", 0.5)

    async def body(port: int, upstream: FakeSuperLink, node_key: ec.EllipticCurvePrivateKey) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nx-slow: ")
        started = asyncio.get_running_loop().time()
        try:
            for _ in range(40):  # one header byte every 0.1 s: each read is quick, the whole is too slow
                await asyncio.sleep(0.1)
                writer.write(b"x")
                await writer.drain()
        except ConnectionError:
            pass
        closed_after = asyncio.get_running_loop().time() - started
        writer.close()
        assert closed_after < 3.5
        assert upstream.received == b""

    _run(tmp_path, body)


def test_refusals_are_summarised_not_logged_one_by_one(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    async def body(port: int, upstream: FakeSuperLink, node_key: ec.EllipticCurvePrivateKey) -> None:
        for _ in range(50):
            await _exchange(port, b"POST /v1/control/list-runs HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")

    with caplog.at_level("WARNING", logger=front_proxy.log.name):
        _run(tmp_path, body)
    assert not [record for record in caplog.records if record.name == front_proxy.log.name]


def test_a_client_framing_error_is_the_clients_fault(tmp_path: Path):
    async def body(port: int, upstream: FakeSuperLink, node_key: ec.EllipticCurvePrivateKey) -> None:
        answer = await _exchange(port, b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70000 + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]

    _run(tmp_path, body)


def test_an_http_1_0_health_check_without_host_is_forwarded_with_one(tmp_path: Path):
    async def body(port: int, upstream: FakeSuperLink, node_key: ec.EllipticCurvePrivateKey) -> None:
        answer = await _exchange(port, b"GET /health HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
        assert b"\r\nhost: 127.0.0.1:" in bytes(upstream.received)  # the HTTP/1.1 hop names the SuperLink

    _run(tmp_path, body)


def test_an_upstream_connection_the_superlink_closed_is_not_reused(tmp_path: Path):
    async def body(port: int, upstream: FakeSuperLink, node_key: ec.EllipticCurvePrivateKey) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for _ in range(2):
            writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            await writer.drain()
            answers.append(await asyncio.wait_for(reader.read(65536), 5))
            assert upstream.server is not None
            for connection in list(upstream.writers):  # the SuperLink's keep-alive timeout fires
                connection.close()
            await asyncio.sleep(0.3)
        writer.close()
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers

    _run(tmp_path, body)
