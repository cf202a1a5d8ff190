"""A service's log: one rotating file the supervisor writes, and the readers behind ``zk0 logs``.

Every line starts with its time as :mod:`zk0cli.core.timefmt` writes it (UTC, milliseconds, ``Z``),
then ``[source]``, then the text: ``2026-12-02T08:41:02.123Z [supernode] ...``. Such stamps sort as
text, so ``--since`` compares strings.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from zk0cli.core.errors import bad_input
from zk0cli.core.paths import Paths
from zk0cli.core.timefmt import iso_from_datetime, utc_now_iso
from zk0cli.services.supervisor.spec import ServiceFiles

STAMP_LENGTH = len("2026-12-02T08:41:02.123Z")
OWN_STAMP = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?Z? ")  # e.g. uvicorn's access log


class RotatingLog:
    """One time-stamped line per write; rotates to ``.1``, ``.2`` ... past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")
        self._size = self._fh.tell()

    def write(self, source: str, text: str) -> None:
        """One line, stamped once: a time the process put at the start of its own line is dropped."""
        line = f"{utc_now_iso()} [{source}] {OWN_STAMP.sub('', text, count=1)}\n"
        self._fh.write(line)
        self._fh.flush()
        self._size += len(line.encode("utf-8", errors="replace"))
        if self._size > self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._fh.close()
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._size = 0

    def close(self) -> None:
        self._fh.close()


def log_files(paths: Paths, service: str) -> list[Path]:
    """The service's log files, oldest first (``.3``, ``.2``, ``.1``, then the live one)."""
    live = ServiceFiles.of(paths, service).log
    rotated = sorted(live.parent.glob(live.name + ".*"), key=lambda p: -_rotation_index(p))
    return [p for p in rotated if _rotation_index(p) > 0] + ([live] if live.exists() else [])


def logged_services(paths: Paths) -> list[str]:
    """The services that have a log on this machine."""
    return sorted(p.name.removesuffix(".log") for p in paths.log_dir.glob("*.log"))


def _rotation_index(path: Path) -> int:
    suffix = path.name.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else 0


def read_log(paths: Paths, service: str, *, tail: int | None = None, since: dt.datetime | None = None) -> list[str]:
    """Lines of the service's log: the last ``tail`` ones, or those stamped at or after ``since``."""
    return read_lines(log_files(paths, service), tail=tail, since=since)


def read_lines(files: list[Path], *, tail: int | None = None, since: dt.datetime | None = None) -> list[str]:
    """Lines of a log in this format kept in ``files`` (oldest first): the last ``tail`` ones, or
    those stamped at or after ``since``."""
    if since is None:
        return _tail(files, tail if tail is not None else 50)
    cutoff = iso_from_datetime(since)
    lines: list[str] = []
    keep = False
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                stamp = line[:STAMP_LENGTH]
                if stamp[:4].isdigit() and stamp.endswith("Z"):  # a line without a stamp goes with the one before
                    keep = stamp >= cutoff
                if keep:
                    lines.append(line.rstrip("\n"))
    return lines[-tail:] if tail else lines


def _tail(files: list[Path], count: int) -> list[str]:
    """The last ``count`` lines over the files, reading each from its end in blocks."""
    collected: list[str] = []
    for path in reversed(files):
        need = count - len(collected)
        if need <= 0:
            break
        collected = _tail_one(path, need) + collected
    return collected[-count:] if count else []


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of one file; none when it cannot be read."""
    try:
        return _tail_one(path, count)
    except OSError:
        return []


def _tail_one(path: Path, count: int, block: int = 65536) -> list[str]:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        data = b""
        while end > 0 and data.count(b"\n") <= count:
            start = max(0, end - block)
            fh.seek(start)
            data = fh.read(end - start) + data
            end = start
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]


def follow_log(
    path: Path,
    emit: Callable[[str], None],
    *,
    poll_s: float = 0.2,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Print the lines written to the log at ``path`` from now on, across rotations, until
    ``stop()`` or Ctrl-C."""
    fh, inode = _open_at_end(path)
    pending = ""
    while not stop():
        chunk = fh.read() if fh else ""
        if chunk:
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                emit(line)
            continue
        try:
            current: int | None = path.stat().st_ino
        except FileNotFoundError:
            current = None
        if current != inode:  # rotated (or created): read the new file from its start
            if fh:
                fh.close()
            fh, inode = (open(path, encoding="utf-8", errors="replace"), current) if current else (None, None)
        time.sleep(poll_s)
    if fh:
        fh.close()


def _open_at_end(path: Path) -> tuple[TextIO | None, int | None]:
    try:
        fh = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None, None
    fh.seek(0, os.SEEK_END)
    return fh, os.fstat(fh.fileno()).st_ino


def parse_since(text: str) -> dt.datetime:
    """``30s``, ``10m``, ``2h``, ``1d`` ago, or an ISO-8601 time (local time when it has no zone)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip())
    if match:
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    try:
        # not timefmt.epoch_from_iso: that reads a time without a zone as UTC (Flower's), a user means local time
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise bad_input(
            f"--since '{text}' is not a duration or a time", hint="e.g. --since 10m, 2h, 1d or 2026-01-31T12:00"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()
