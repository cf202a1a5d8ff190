"""``python -m zk0cli.services.fleet_front --listen HOST:PORT --upstream 127.0.0.1:PORT
[--certfile F --keyfile F --cafile F | --insecure] [--nodes-file server-nodes.json]``"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from pathlib import Path

from zk0cli.core.childlog import child_logger
from zk0cli.services.fleet_front.node_auth import NodeRegistry
from zk0cli.services.fleet_front.proxy import FleetProxy

log = child_logger("fleet_front")


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
