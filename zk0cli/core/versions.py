"""Versions of zk0 and the stack it is built on, read from package metadata (nothing imported)."""

from __future__ import annotations

from importlib import metadata

from zk0cli import __version__

STACK = ("flwr", "lerobot", "torch", "transformers")


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions(names: tuple[str, ...] = STACK) -> dict[str, str | None]:
    """zk0's version and each named package's; None where one is not installed."""
    return {"zk0": __version__, **{name: installed_version(name) for name in names}}
