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

Modules: ``rules`` (what passes, every limit), ``node_auth`` (signatures against registered
keys), ``proxy`` (connections and forwarding), ``__main__`` (TLS contexts, signals, the command:
``python -m zk0cli.services.fleet_front --listen HOST:PORT --upstream 127.0.0.1:PORT ...``).
"""
