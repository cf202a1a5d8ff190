"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zk0cli.core.errors import env_not_ready


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise env_not_ready(
            f"cannot write {path}: {exc.strerror}",
            hint="check that the directory is writable, or point ZK0_HOME at one that is",
        ) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode if mode is not None else _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _default_mode() -> int:
    """What open() would have given the file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def exclusively(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``<path>.lock`` for a read-modify-write of ``path``: two writers
    (two admins, or threads) then never lose each other's change. Waits for the other to finish."""
    import fcntl

    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: Path, data: object, *, mode: int | None = None) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n", mode=mode)


class JsonFileError(ValueError):
    """A JSON file that is missing, unreadable, empty or invalid; ``reason`` says which in one line."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


_RAISE = object()


def read_json(path: Path, default: object = _RAISE) -> Any:
    """The document in ``path``. Any failure returns ``default`` when one is given, else raises
    :class:`JsonFileError` with a one-line reason (``config.json is missing``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text)
    except FileNotFoundError:
        reason = f"{path.name} is missing"
    except OSError as exc:
        reason = f"{path.name} cannot be read: {exc.strerror}"
    except UnicodeDecodeError:
        reason = f"{path.name} is not UTF-8 text"
    except ValueError as exc:
        reason = f"{path.name} is " + ("empty" if not text.strip() else f"not valid JSON ({exc})")
    if default is not _RAISE:
        return default
    raise JsonFileError(path, reason)
