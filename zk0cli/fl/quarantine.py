"""Nodes left out of sampling: a node whose updates were flagged in ``quarantine-after`` rounds
of a run stays out of every later round (of that run and the next) until the admin takes it back
with ``zk0 server nodes release NODE``. One JSON file on the server, node id -> why and when."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zk0cli.core.files import JsonFileError, atomic_write_json, exclusively, read_json


def quarantined(path: Path) -> dict[str, dict[str, Any]]:
    try:
        entries = read_json(path, {})
    except JsonFileError:
        return {}
    return {str(k): v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}


def quarantine(path: Path, node_id: str, **why: Any) -> None:
    with exclusively(path):
        entries = quarantined(path)
        entries[node_id] = why
        atomic_write_json(path, entries)


def release(path: Path, node_id: str) -> dict[str, Any] | None:
    """Take a node back; what its quarantine said, or None when it was not quarantined."""
    with exclusively(path):
        entries = quarantined(path)
        released = entries.pop(node_id, None)
        if released is not None:
            atomic_write_json(path, entries)
    return released
