"""Times as zk0 writes and reads them: UTC ISO-8601 with a ``Z`` in files, local stamps in folder names."""

from __future__ import annotations

import datetime as dt
import time


def utc_now_iso(timespec: str = "milliseconds") -> str:
    """Now, e.g. ``2026-12-02T08:41:02.123Z``: the form of every time zk0 writes into a file."""
    return iso_from_epoch(time.time(), timespec=timespec)


def iso_from_epoch(epoch: float, *, timespec: str = "milliseconds") -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def iso_seconds_or_none(epoch: float | None) -> str | None:
    """``2026-12-02T15:04:05Z`` for a time in a listing; None for one that never came."""
    return None if epoch is None else iso_from_epoch(epoch, timespec="seconds")


def utc_clock(iso: str | None) -> str:
    """``2026-12-02 15:04:05`` (UTC) from an ISO-8601 ``...Z`` time, for tables; "" for none."""
    return iso.replace("T", " ").removesuffix("Z") if iso else ""


def iso_from_datetime(moment: dt.datetime, *, timespec: str = "milliseconds") -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def epoch_from_iso(text: object) -> float | None:
    """Epoch seconds of an ISO-8601 time: ``...Z``, an offset, or Flower's ``2026-12-02 05:28:17``
    (no zone: UTC, as Flower writes it). None when absent or not a time (Flower's ``N/A``)."""
    if not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def folder_stamp() -> str:
    """``20261202-084102`` in local time: names of run, backup and comparison folders sort by it."""
    return time.strftime("%Y%m%d-%H%M%S")
