"""Run records as ``zk0 status`` shows them: progress, timings, losses, the latest round's clients.

Round files are the truth (the summaries are derived from them); parsed files are cached by
mtime and size, so a ``--watch`` refresh re-reads only what changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zk0cli.core.files import JsonFileError, read_json
from zk0cli.fl.record_follow import STATUS_FILE, round_files
from zk0cli.fl.records import node_label
from zk0cli.services.status.model import ACTIVE_RUN_STATES, ClientRound, RunView, number
from zk0cli.services.status.superlink import SuperLinkData

RECENT_RUNS = 5  # run records shown besides the ones still running


def read_document(path: Path) -> tuple[Any, str]:
    """(document, "") or (None, what is wrong with the file in one line): a problem is shown, not raised."""
    try:
        return read_json(path), ""
    except JsonFileError as error:
        return None, error.reason


class RunRecordReader:
    """Reads run records, re-parsing only the files that changed since the last refresh."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[tuple[int, int], Any, str]] = {}

    def read_json(self, path: Path) -> tuple[Any, str]:
        try:
            stat = path.stat()
        except OSError:
            self._cache.pop(path, None)
            return read_document(path)
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        document, problem = read_document(path)
        self._cache[path] = (key, document, problem)
        return document, problem

    def recent(self, runs_dir: Path, *, limit: int = RECENT_RUNS) -> list[Path]:
        """Record directories, newest first: the ``limit`` newest plus any still running."""
        try:
            dirs = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            return []
        dirs.sort(key=_record_mtime, reverse=True)
        return [d for i, d in enumerate(dirs) if i < limit or self._running(d)]

    def _running(self, root: Path) -> bool:
        status, _ = self.read_json(root / STATUS_FILE)
        return isinstance(status, dict) and status.get("state") in ACTIVE_RUN_STATES

    def read(self, root: Path, *, now: float) -> RunView:
        view = RunView(run_id=root.name, record=str(root))
        status, problem = self.read_json(root / STATUS_FILE)
        if problem and not problem.endswith("is missing"):  # missing: the run is being set up
            view.problems.append(problem)
        status = status if isinstance(status, dict) else {}
        view.status = str(status.get("state", "")) or "unknown"
        if status.get("error"):
            view.problems.append(f"run failed: {status['error']}")
        rounds = self._rounds(root, view)
        config, problem = self.read_json(root / "config.json")
        if problem and (rounds or view.status in ("running", "completed")):
            view.problems.append(problem)  # written before round 0: missing by now means lost or damaged
        config = config if isinstance(config, dict) else {}
        view.mode = str(config.get("mode", "federated"))
        view.server_eval = config.get("server_eval") if isinstance(config.get("server_eval"), bool) else None
        run_config = config.get("run_config")
        run_config = run_config if isinstance(run_config, dict) else {}
        total = run_config.get("num-server-rounds", status.get("rounds"))
        view.rounds_total = total if isinstance(total, int) else None
        resumes = config.get("resumes") if isinstance(config.get("resumes"), list) else []
        latest = resumes[-1].get("flwr_run_id") if resumes and isinstance(resumes[-1], dict) else None
        flwr_run_id = latest or config.get("flwr_run_id", status.get("flwr_run_id"))  # a resume writes it now
        view.flwr_run_id = flwr_run_id if isinstance(flwr_run_id, int) and flwr_run_id > 0 else None
        if view.flwr_run_id is not None:
            view.run_id = str(view.flwr_run_id)
        _fill_progress(view, rounds)
        started = view.started_at = _record_started(root)
        ended = number(status.get("time")) if not view.running else None
        if started is not None:
            view.elapsed_s = max(0.0, (ended or now) - started)
        return view

    def _rounds(self, root: Path, view: RunView) -> list[dict[str, Any]]:
        found = []
        for round_number, path in sorted(round_files(root).items()):
            entry, problem = self.read_json(path)
            if problem or not isinstance(entry, dict) or entry.get("round") != round_number:
                view.problems.append(problem or f"{path.name} does not describe round {round_number}")
                continue
            found.append(entry)
        return found


def _record_mtime(root: Path) -> float:
    try:
        return max(p.stat().st_mtime for p in (root, root / "config.json", root / STATUS_FILE) if p.exists())
    except (OSError, ValueError):
        return 0.0


def _record_started(root: Path) -> float | None:
    """When the run began: the ServerApp writes config.json before round 0."""
    try:
        return (root / "config.json").stat().st_mtime
    except OSError:
        return None


def _fill_progress(view: RunView, rounds: list[dict[str, Any]]) -> None:
    """Rounds done, mean round time, loss history, and the latest round's clients."""
    trained = [e for e in rounds if e["round"] >= 1]
    view.round = max((e["round"] for e in trained), default=0)
    seconds = [s for s in (number(e.get("seconds")) for e in trained) if s is not None]
    view.mean_round_s = sum(seconds) / len(seconds) if seconds else None
    history = []
    for entry in rounds:
        loss = number(((entry.get("server_eval") or {}).get("composite") or {}).get("policy_loss"))
        if loss is not None:
            history.append((entry["round"], loss))
    view.loss_history = [loss for _, loss in history]
    if history:
        view.last_loss = history[-1][1]
        view.best_round, view.best_loss = min(history, key=lambda item: item[1])
    if trained:
        latest = trained[-1]
        view.clients_round = latest["round"]
        view.clients = client_rounds(latest)


def client_rounds(entry: dict[str, Any]) -> list[ClientRound]:
    """Each client of one round record: accepted ones with their metrics, then rejected and failed."""
    rows = []
    for client in (entry.get("clients") or {}).get("each") or []:
        metrics = client.get("metrics") or {}
        rows.append(
            ClientRound(
                node=node_label(client),
                dataset=str(client.get("dataset", "")),
                loss=number(metrics.get("loss")),
                fedprox_loss=number(metrics.get("fedprox_loss")),
                steps=_int(metrics.get("steps")),
                seconds=number(metrics.get("seconds")),
                bytes_up=_int(client.get("bytes_up", metrics.get("bytes_up"))),
                bytes_down=_int(client.get("bytes_down", metrics.get("bytes_down"))),
                outcome="flagged" if client.get("flags") else "accepted",
                reason="; ".join(client.get("flags") or []),
            )
        )
    for outcome in ("rejected", "failed", "late", "quarantined"):
        for item in entry.get(outcome) or []:
            rows.append(
                ClientRound(
                    node=node_label(item),
                    dataset=str(item.get("dataset", "")),
                    outcome=outcome,
                    reason=str(item.get("reason", "")),
                )
            )
    return rows


def _int(value: Any) -> int | None:
    as_float = number(value)
    return None if as_float is None else int(as_float)


RECORD_FINAL_STATES = ("completed", "failed")


def merge_runs(records_views: list[RunView], link: SuperLinkData | None, now: float) -> list[RunView]:
    """One row per run: SuperLink runs (status and timing from Flower) joined to their records.

    A record belongs to a Flower run when its config.json or status.json names it
    (``flwr_run_id``); records of runs this SuperLink does not know (``zk0 sim`` runs on their
    own local SuperLink) and all records while it is unreachable keep their own status.
    """
    if link is None:
        return records_views
    by_id = {view.flwr_run_id: view for view in records_views if view.flwr_run_id is not None}
    merged = []
    for run in link.runs:
        view = by_id.pop(run["run_id"], None) or RunView(run_id=str(run["run_id"]), flwr_run_id=run["run_id"])
        if not (view.status in RECORD_FINAL_STATES and run["status"] in ACTIVE_RUN_STATES):
            view.status = run["status"]  # else the ServerApp has ended and Flower has not heard yet
        started = run["running_at"] or run["pending_at"]
        if view.elapsed_s is None and started is not None:  # no record yet: Flower's clock; else the record's
            view.started_at = run["pending_at"]
            view.elapsed_s = max(0.0, (run["finished_at"] or link.now or now) - started)
        view.bytes_sent, view.bytes_recv = run["bytes_sent"], run["bytes_recv"]
        if run["details"] and run["status"].endswith("failed"):
            view.problems.append(f"run failed: {run['details']}")
        merged.append(view)
    linked = {id(view) for view in merged}
    return merged + [view for view in records_views if id(view) not in linked]


def eta(view: RunView) -> float | None:
    if not view.running or view.mean_round_s is None or view.rounds_total is None:
        return None
    return max(0, view.rounds_total - view.round) * view.mean_round_s
