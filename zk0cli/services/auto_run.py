"""`zk0 server serve --auto-run`: start a session when enough nodes are online, the next when it ends.

Runs as one more supervised process of the server (``python -m zk0cli.services.auto_run``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from zk0cli.core import config as config_mod
from zk0cli.core import files
from zk0cli.core.childlog import child_logger
from zk0cli.core.errors import Zk0Error
from zk0cli.core.paths import Paths
from zk0cli.services.runs import run_status, submit_run
from zk0cli.services.server import list_nodes

AUTO_RUN_FILE = "auto-run.json"  # the session in progress, so a restarted loop never starts a second one
FAILED_SESSION_PAUSE_S = 60.0


def auto_run(
    paths: Paths,
    *,
    min_nodes: int,
    rounds: int,
    settings: dict,
    poll_s: float = 10.0,
    say: Callable[[str], None] | None = None,
) -> None:
    """Start a session when ``min_nodes`` nodes are online and none is running; repeat forever.
    A SuperLink that is (re)starting is waited for, not fatal. ``say`` reports what it does
    (default: the auto-run's log, which the server's supervisor keeps)."""
    say = say or child_logger("auto_run").info
    marker = paths.state_dir / AUTO_RUN_FILE
    current = files.read_json(marker, None) or {}
    waiting_said = -1
    while True:
        try:
            if current.get("run_id"):
                status = run_status(paths, current["run_id"])
                if status and not status.startswith("finished"):
                    time.sleep(poll_s)
                    continue
                say(f"auto-run: session run {current['run_id']} ended ({status or 'unknown to the SuperLink'})")
                current = {}
                marker.unlink(missing_ok=True)
                if status != "finished:completed":  # a broken config would otherwise fail one session per poll
                    say(
                        f"auto-run: next session in {FAILED_SESSION_PAUSE_S:g} s; see `zk0 logs server` for why "
                        "it failed"
                    )
                    time.sleep(FAILED_SESSION_PAUSE_S)
            online = [n for n in list_nodes(paths) if n["status"] == "online"]
            if len(online) >= min_nodes:
                values = {**settings, "min-available-nodes": min_nodes}
                defaults = config_mod.load(paths.config_file).config.run  # re-read: set between sessions, used
                run = submit_run(paths, rounds=rounds, settings=values, defaults=defaults)
                current = {"run_id": run.run_id, "run_dir": str(run.run_dir), "nodes": [n["node_id"] for n in online]}
                files.atomic_write_json(marker, current)
                say(
                    f"auto-run: {len(online)} node(s) online: started run {run.run_id} ({rounds} rounds) -> "
                    f"{run.run_dir}"
                )
            elif len(online) != waiting_said:
                waiting_said = len(online)
                say(f"auto-run: {len(online)}/{min_nodes} node(s) online, waiting")
        except Zk0Error as error:
            say(f"auto-run: {error.message} (retrying in {poll_s:g} s)")
        time.sleep(poll_s)


def _auto_run_main(argv: list[str]) -> int:
    import argparse

    from zk0cli.fl.run_config import parse_overrides

    parser = argparse.ArgumentParser(prog="zk0-auto-run")
    parser.add_argument("--min-nodes", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    auto_run(Paths.resolve(), min_nodes=args.min_nodes, rounds=args.rounds, settings=parse_overrides(args.set))
    return 0


if __name__ == "__main__":
    sys.exit(_auto_run_main(sys.argv[1:]))
