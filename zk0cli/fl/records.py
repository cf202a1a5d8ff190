"""The run record: everything a run leaves behind under ``<data dir>/runs/<run-id>/``.

::

    config.json                    resolved run config, package versions, dataset fingerprints
    round_N_server_eval.json       one per round (round 0: the starting point)
    federated_metrics.json         one entry per round, for tables and plots
    policy_loss_history.json       server eval loss per evaluated round, ordered by round
    plots/losses.png, plots/lr_mu.png
    checkpoints/round_NNNN/        LeRobot save_pretrained: policy + pre/post processors
    final -> checkpoints/round_NNNN
    videos/round_NNNN_<dataset>.mp4 + .json
    status.json                    running / completed / failed (with the error), for `zk0 sim`
    superseded/<time>/             rounds after the checkpoint a resumed run continued from

Every file is written atomically; a checkpoint is written to a temporary directory and renamed.

A run that stopped (a crash, a SuperLink restart, ``zk0 run stop``) continues from its last
checkpoint with ``zk0 run --resume``: the same record, the same round numbers; the rounds it had
recorded after that checkpoint are moved to ``superseded/`` (kept, not mixed in) and run again.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zk0cli.core.errors import bad_input
from zk0cli.core.files import JsonFileError, atomic_write_json, read_json
from zk0cli.core.paths import Paths
from zk0cli.core.timefmt import folder_stamp, iso_from_epoch
from zk0cli.core.versions import package_versions
from zk0cli.fl.record_follow import ROUND_FILE, STATUS_FILE, round_files

CONFIG_FILE = "config.json"
FINAL_LINK = "final"


def new_run_name() -> str:
    return folder_stamp() + f"-{os.getpid() % 10000:04d}"


@dataclass
class RunRecord:
    root: Path

    @classmethod
    def create(cls, runs_dir: Path, run_name: str = "") -> RunRecord:
        root = Path(runs_dir) / (run_name or new_run_name())
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    # ------------------------------------------------------------ files

    def write_config(self, run_config: dict[str, Any], fingerprints: dict[str, str], extra: dict[str, Any]) -> None:
        atomic_write_json(
            self.root / CONFIG_FILE,
            {
                "run_config": run_config,
                "versions": package_versions(),
                "dataset_fingerprints": fingerprints,
                **extra,
            },
        )

    def read_config(self) -> dict[str, Any]:
        try:
            config = read_json(self.root / CONFIG_FILE)
        except JsonFileError as exc:
            raise bad_input(
                f"run {self.root.name} has no readable {CONFIG_FILE} ({exc.reason})",
                hint="the ServerApp writes it before round 0: a run that failed that early cannot be resumed",
            ) from None
        if not isinstance(config, dict):
            raise bad_input(
                f"run {self.root.name} has no readable {CONFIG_FILE} (not a JSON object)",
                hint="the ServerApp writes it before round 0: a run that failed that early cannot be resumed",
            )
        return config

    def flwr_run_ids(self) -> list[int]:
        """The Flower runs that wrote this record: the first, then each resume."""
        return record_flower_ids(self.root)

    def write_status(self, state: str, **details: Any) -> None:
        atomic_write_json(self.root / STATUS_FILE, {"state": state, "time": time.time(), **details})

    def write_round(self, entry: dict[str, Any]) -> None:
        """One round's full record, then the two summaries derived from all rounds so far."""
        atomic_write_json(self.root / ROUND_FILE.format(entry["round"]), entry)
        self._write_summaries()

    def _write_summaries(self) -> None:
        rounds = self.rounds()
        atomic_write_json(self.root / "federated_metrics.json", [summary(r) for r in rounds])
        atomic_write_json(
            self.root / "policy_loss_history.json",
            [
                {
                    "round": r["round"],
                    "policy_loss": r["server_eval"]["composite"]["policy_loss"],
                    "action_error": r["server_eval"]["composite"]["action_error"],
                    "per_dataset": {name: m["policy_loss"] for name, m in r["server_eval"]["datasets"].items()},
                }
                for r in rounds
                if r.get("server_eval")
            ],
        )

    def rounds(self) -> list[dict[str, Any]]:
        return [read_json(path) for _, path in sorted(round_files(self.root).items())]

    # ------------------------------------------------------------ resume

    def resume_point(self, num_rounds: int) -> ResumePoint:
        """Where a resumed run of ``num_rounds`` rounds starts: the last checkpoint, or why it cannot."""
        checkpoints = self.checkpoints()
        if not checkpoints:
            raise bad_input(
                f"run {self.root.name} has no checkpoint to resume from",
                hint="start a new run; checkpoint-interval sets how often a run writes one",
            )
        last = checkpoints[-1]
        done = int(last.name.split("_")[1])
        if done >= num_rounds:
            raise bad_input(
                f"run {self.root.name} already has its checkpoint of round {done} of {num_rounds}",
                hint=f"resume with more rounds to train further: --rounds {done + 1} or more",
            )
        return ResumePoint(done, last, [r for r in self.rounds() if r["round"] <= done])

    def continue_after(self, point: ResumePoint, flwr_run_id: int, num_rounds: int) -> list[int]:
        """Set the record back to ``point`` for a resumed run of ``num_rounds`` rounds in all; the
        rounds moved aside.

        Round files and videos of later rounds go to ``superseded/<time>/`` (kept for whoever
        wants to see what the interrupted run did), and config.json lists the resume (its run
        config then says the new number of rounds).
        """
        later = [r["round"] for r in self.rounds() if r["round"] > point.round]
        target = self.root / "superseded" / folder_stamp()
        for number in later:
            for path in [self.root / ROUND_FILE.format(number), *(self.root / "videos").glob(f"round_{number:04d}*")]:
                target.mkdir(parents=True, exist_ok=True)
                os.replace(path, target / path.name)
        config = self.read_config()
        config.setdefault("resumes", []).append(
            {
                "flwr_run_id": flwr_run_id,
                "from_round": point.round,
                "superseded_rounds": later,
                "at": time.time(),
                "num_server_rounds": num_rounds,
            }
        )
        config["run_config"]["num-server-rounds"] = num_rounds
        atomic_write_json(self.root / CONFIG_FILE, config)
        self._write_summaries()
        return later

    # ------------------------------------------------------------ checkpoints

    def checkpoint_dir(self, server_round: int) -> Path:
        return self.root / "checkpoints" / f"round_{server_round:04d}"

    def save_checkpoint(self, server_round: int, save: Callable[[Path, Path], None], keep_last: int) -> Path:
        """Write a checkpoint via ``save(tmp_dir, final_dir)`` (it will live at ``final_dir``), rename
        it into place, point final/ at it, prune."""
        target = self.checkpoint_dir(server_round)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            save(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        self._point_final_at(target)
        if keep_last > 0:
            for old in self.checkpoints()[:-keep_last]:
                shutil.rmtree(old)
        return target

    def checkpoints(self) -> list[Path]:
        return sorted(p for p in (self.root / "checkpoints").glob("round_*") if p.is_dir())

    def _point_final_at(self, target: Path) -> None:
        link = self.root / FINAL_LINK
        tmp_link = self.root / f".{FINAL_LINK}.tmp"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(target.relative_to(self.root), target_is_directory=True)
        os.replace(tmp_link, link)


@dataclass(frozen=True)
class ResumePoint:
    round: int  # the last round the checkpoint holds
    checkpoint: Path
    history: list[dict[str, Any]]  # the round records 0..round, to rebuild the schedules


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    """One line of federated_metrics.json from a full round record."""
    clients = entry.get("clients") or {}
    aggregate = clients.get("aggregate") or {}
    server = entry.get("server_eval") or {}
    federated = (entry.get("federated_eval") or {}).get("aggregate") or {}
    return {
        "round": entry["round"],
        "num_clients": aggregate.get("num_clients", 0),
        "loss_avg": aggregate.get("loss_avg"),
        "loss_std": aggregate.get("loss_std"),
        "fedprox_loss_avg": aggregate.get("fedprox_loss_avg"),
        "grad_norm_avg": aggregate.get("grad_norm_avg"),
        "update_norm_avg": aggregate.get("update_norm_avg"),
        "client_losses": {node_label(c): c["metrics"].get("loss") for c in clients.get("each", [])},
        "rejected": len(entry.get("rejected", [])),
        "failed": len(entry.get("failed", [])),
        "late": len(entry.get("late", [])),
        "quarantined": len(entry.get("quarantined", [])),
        "flagged": {node_label(c): c["flags"] for c in clients.get("each", []) if c.get("flags")},
        "server_policy_loss": (server.get("composite") or {}).get("policy_loss"),
        "server_action_error": (server.get("composite") or {}).get("action_error"),
        "federated_eval_loss": federated.get("policy_loss"),
        "lr": (entry.get("plan") or {}).get("lr", {}).get("value"),
        "mu": (entry.get("plan") or {}).get("mu", {}).get("value"),
    }


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    import statistics

    values = list(values)
    if not values:
        return None, None
    return statistics.fmean(values), statistics.pstdev(values)


def node_label(client: dict[str, Any]) -> str:
    """How a round record's node is shown: the admin's registered name, else its Flower node id."""
    return str(client.get("name") or client.get("node", "?"))


def name_nodes(entry: dict[str, Any], names: dict[str, str]) -> None:
    """Put the admin's registered name beside each Flower node id of a round record."""
    clients, federated = entry.get("clients") or {}, entry.get("federated_eval") or {}
    groups = (
        clients.get("each"),
        entry.get("rejected"),
        entry.get("failed"),
        entry.get("late"),
        entry.get("quarantined"),
        federated.get("each"),
        federated.get("failed"),
        federated.get("late"),
    )
    for group in groups:
        for item in group or []:
            if names.get(str(item.get("node"))):
                item["name"] = names[str(item["node"])]


def registered_node_names(paths: Paths) -> dict[str, str]:
    """Flower node id -> name of the nodes ``zk0 server nodes add`` registered ({} when none)."""
    try:
        entries = read_json(paths.node_names_file, {})
    except JsonFileError:
        return {}
    if not isinstance(entries, dict):
        return {}
    return {str(node_id): str(e.get("name", "")) for node_id, e in entries.items() if isinstance(e, dict)}


def record_flower_ids(root: Path) -> list[int]:
    """The Flower run ids a record names (first run, then resumes); [] for centralized runs or an
    unreadable config."""
    try:
        config = read_json(root / "config.json", {})
    except JsonFileError:
        return []
    if not isinstance(config, dict):
        return []
    resumes = config.get("resumes")
    resumes = resumes if isinstance(resumes, list) else []
    ids = [config.get("flwr_run_id"), *(r.get("flwr_run_id") for r in resumes if isinstance(r, dict))]
    return [int(i) for i in ids if isinstance(i, int) and i > 0]


def find_record(runs_dir: Path, ref: str | Path) -> Path:
    """The one way a command finds a run's record: a directory, a record name, a Flower run id
    (the first run or a resume), or a unique prefix of a name or id."""
    text = str(ref).strip()
    direct = Path(text).expanduser()
    if direct.is_dir():
        return direct.absolute()
    records = sorted(p for p in runs_dir.glob("*") if p.is_dir()) if runs_dir.is_dir() else []
    names = {record.name: record for record in records}
    if text in names:
        return names[text].absolute()
    ids = {str(flower_id): record for record in records for flower_id in record_flower_ids(record)}
    if text in ids:
        return ids[text].absolute()
    matches = {record for key, record in [*names.items(), *ids.items()] if text and key.startswith(text)}
    if len(matches) == 1:
        return matches.pop().absolute()
    if matches:
        shown = ", ".join(sorted(m.name for m in matches)[:4])
        raise bad_input(f"'{text}' matches {len(matches)} runs ({shown}...)", hint="give more of the run name or id")
    raise bad_input(
        f"no run '{text}' under {runs_dir}",
        hint="`zk0 runs` lists every run by name and Flower id; a run directory works too",
    )


RUN_LOG = "server.log"  # what the run's ServerApp logged (`zk0 logs run`), in zk0's service log format


class RunLog(logging.Handler):
    """Appends log records to the run's ``server.log`` as zk0's service logs read: one UTC stamp,
    the logger's name, the message; a traceback's lines follow unstamped (they go with the line)."""

    def __init__(self, path: Path):
        super().__init__(logging.INFO)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"{iso_from_epoch(record.created)} [{record.name}] {record.getMessage()}\n"
            if record.exc_info:
                text += "".join(traceback.format_exception(*record.exc_info))
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text)
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)
