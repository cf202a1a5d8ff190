"""The `zk0 server serve` arguments of a test server: plain HTTP on loopback, any node may join."""

from __future__ import annotations

from zk0cli.services.flower import free_port


def insecure_loopback_serve(port: int) -> list[str]:
    """``server serve`` on 127.0.0.1:``port`` (its SuperLink on a free loopback port), for tests only."""
    return [
        "server",
        "serve",
        "--insecure",
        "--no-require-node-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--control-port",
        str(free_port()),
    ]
