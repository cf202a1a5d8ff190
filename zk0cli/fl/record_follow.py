"""Reading a run record while its ServerApp writes it: the round files, and the one loop that
follows a run to its end for `zk0 run`, `zk0 sim` and the demo.

Kept light (no hashing, no torch): `zk0 status` lists round files through it on every refresh.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.core.files import JsonFileError, read_json

ROUND_FILE = "round_{}_server_eval.json"
ROUND_NAME = re.compile(r"round_(\d+)_server_eval\.json")
STATUS_FILE = "status.json"
RECORD_TRAIL_S = 5.0  # how long the record's last write may trail Flower calling the run finished


def round_files(root: Path) -> dict[int, Path]:
    """The record's round files by the round number in their names; {} while there is no record."""
    try:
        names = os.listdir(root)
    except OSError:
        return {}
    return {int(m.group(1)): root / name for name in names if (m := ROUND_NAME.fullmatch(name))}


def read_or_none(path: Path) -> Any:
    """A record file's document, or None while it is missing or being replaced."""
    try:
        return read_json(path)
    except JsonFileError:
        return None


@dataclass(frozen=True)
class FollowedRun:
    root: Path  # the record directory
    label: str  # how errors name the run: "run 12", "the simulation"
    hint: str  # where to look when the run ends without saying why


def follow_record(
    run: FollowedRun,
    *,
    on_round: Callable[[dict[str, Any]], None],
    flower_status: Callable[[], str],
    poll_s: float = 1.0,
    flower_every_s: float = 2.0,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Hand each round's entry to ``on_round`` once, in order, as its file appears; return the
    record's final status once it says completed, raise a Zk0Error once it says failed.

    The record says how the ServerApp ended. Flower's own status (``flower_status``, asked every
    ``flower_every_s``) catches a ServerApp that died without writing it (killed, out of memory).
    ``check`` runs every poll and raises to give up (a deadline, a dead SuperLink).
    """
    reported: set[int] = set()
    next_flower_check = time.monotonic() + flower_every_s
    finished_since: float | None = None
    while True:
        fresh = {n: p for n, p in round_files(run.root).items() if n not in reported}
        for number in sorted(fresh):
            entry = read_or_none(fresh[number])
            if isinstance(entry, dict) and entry.get("round") == number:
                reported.add(number)
                on_round(entry)
        status = read_or_none(run.root / STATUS_FILE)
        status = status if isinstance(status, dict) else {}
        if status.get("state") == "completed":
            return status
        if status.get("state") == "failed":
            raise Zk0Error(
                f"{run.label} failed: {status.get('error', 'unknown error')}",
                hint=status.get("hint") or run.hint,
                code=_exit_code(status.get("exit_code")),
            )
        if time.monotonic() >= next_flower_check:
            next_flower_check = time.monotonic() + flower_every_s
            flower = flower_status()
            if finished_since is None and flower.startswith("finished"):
                finished_since = time.monotonic()
            if finished_since is not None and time.monotonic() - finished_since > RECORD_TRAIL_S:
                raise Zk0Error(f"{run.label} ended ({flower}) before its record was complete", hint=run.hint)
        if check is not None:
            check()
        time.sleep(poll_s)


def _exit_code(value: Any) -> ExitCode:
    """The exit code a failed record asks for (the ServerApp's error), FAILED when it names none."""
    try:
        return ExitCode(value)
    except ValueError:
        return ExitCode.FAILED
