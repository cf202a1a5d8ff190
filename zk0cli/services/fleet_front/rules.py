"""What the fleet front lets through, and the limits it holds every client to.

Protocol facts (the Fleet routes, the hop-by-hop headers) and tunable limits live together, so
one file answers "what can a client on the public port do, and how much of it".
"""

from __future__ import annotations

from collections.abc import Sequence

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
FORWARDED_HEADERS = (b"forwarded", b"x-forwarded-", b"x-real-ip")


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


def content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value)  # h11 has already rejected malformed or conflicting values
    return None


def without_hop_by_hop(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop headers, including every header the Connection header names."""
    named = {
        token.strip().lower() for name, value in headers if name.lower() == b"connection" for token in value.split(b",")
    }
    return [(name, value) for name, value in headers if name.lower() not in HOP_BY_HOP and name.lower() not in named]


def upstream_headers(headers: Sequence[tuple[bytes, bytes]], peer: str, upstream: str) -> list[tuple[bytes, bytes]]:
    """What the SuperLink sees: no client-supplied forwarding headers, the real peer in
    X-Forwarded-For, and a Host (``upstream``) where an HTTP/1.0 client sent none: the hop to the
    SuperLink is HTTP/1.1, which requires one."""
    kept = [
        (name, value) for name, value in without_hop_by_hop(headers) if not name.lower().startswith(FORWARDED_HEADERS)
    ]
    if not any(name.lower() == b"host" for name, _ in kept):
        kept.insert(0, (b"host", upstream.encode()))
    return [*kept, (b"x-forwarded-for", peer.encode())]


def peer_host(peer: object) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
