"""The ServerApp: validate the run config, set up the run record, run zk0's FedProx.

A fresh run starts from the policy's initial trainable weights at round 0; a resumed run
(run config ``resume``, from ``zk0 run --resume``) from its record's last checkpoint, with the
schedules rebuilt from the recorded rounds, so round numbers, lr/mu and history continue.

Every failure before or during the rounds is written to the run's status.json (``zk0 sim`` and
``zk0 run`` read it to print one clear line) and then raised, so Flower marks the run failed.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from numpy.typing import NDArray

from zk0cli.core.errors import Zk0Error, bad_input
from zk0cli.core.paths import Paths
from zk0cli.fl import plots
from zk0cli.fl.records import RUN_LOG, RunLog, RunRecord, name_nodes, new_run_name, registered_node_names, summary
from zk0cli.fl.run_config import RunConfig
from zk0cli.fl.tracking import Tracker

log = logging.getLogger("zk0.server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(context.run_config)  # bad values stop here, before round 1
    record = RunRecord.create(runs_dir(config), config.run_name or f"{new_run_name()}-run{context.run_id}")
    record.write_status("starting", flwr_run_id=context.run_id)
    with _logged_to(record):
        try:
            run_federation(grid, config, record, flwr_run_id=context.run_id)
        except Zk0Error as error:
            log.error("run failed: %s (%s)", error.message, error.hint)
            record.write_status("failed", error=error.message, hint=error.hint, exit_code=int(error.code))
            raise
        except Exception as exc:
            log.exception("run failed")
            record.write_status("failed", error=f"{type(exc).__name__}: {exc}", hint=f"zk0 logs run {record.root.name}")
            raise
        log.info("run completed: %d round(s); record in %s", config.num_server_rounds, record.root)
    record.write_status("completed", rounds=config.num_server_rounds)


@contextlib.contextmanager
def _logged_to(record: RunRecord) -> Iterator[None]:
    """zk0's and Flower's log lines of this run also go to the record (``zk0 logs run``)."""
    handler = RunLog(record.root / RUN_LOG)
    loggers = [logging.getLogger("zk0"), logging.getLogger("flwr")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def runs_dir(config: RunConfig) -> Path:
    return Path(config.runs_dir).expanduser() if config.runs_dir else Paths.resolve().runs_dir


def run_federation(grid: Grid, config: RunConfig, record: RunRecord, *, flwr_run_id: int = 0) -> None:
    from zk0cli.fl.server_eval import ServerEvaluator
    from zk0cli.fl.strategy import Zk0FedProx

    spill = record.root / ".spill"  # a robust rule's spill files of a round's updates (fl/aggregate.py)
    shutil.rmtree(spill, ignore_errors=True)  # a ServerApp killed mid-round left them: a resume starts clean
    _check_sampling(grid, config)
    features = None
    if not config.server_evaluates():
        from zk0cli.fl.node_features import ask_nodes

        record.write_status("starting", flwr_run_id=flwr_run_id, stage="asking the nodes for their dataset features")
        features = ask_nodes(grid, config)
        log.info(
            "no held-out data: the policy follows the features of %s; server evaluation is off, rounds are judged "
            "by the nodes' federated evaluation",
            ", ".join(features.datasets),
        )
    evaluator = ServerEvaluator(config, features)
    start = (
        _resume(record, evaluator, config, flwr_run_id)
        if config.resume
        else _fresh(record, evaluator, config, flwr_run_id, features_from=features.datasets if features else [])
    )
    evaluations = sum(1 for entry in start.history if entry.get("server_eval"))
    tracker = Tracker(config, record)
    outputs = RunOutputs(config, record, evaluator, tracker, evaluations=evaluations)
    record.write_status(
        "running",
        flwr_run_id=flwr_run_id,
        rounds=config.num_server_rounds,
        **({"resumed_from_round": start.round} if config.resume else {}),
    )
    strategy = Zk0FedProx(
        config,
        start.weights,
        evaluator,
        outputs,
        spill_dir=spill,
        quarantine_file=Paths.resolve().quarantine_file,
    )
    strategy.control.replay(start.history)
    try:
        with tracker:
            strategy.run(grid, first_round=start.round + 1)
    finally:  # a round that raised keeps its spill (up to a model per node): a failed run is not always resumed
        shutil.rmtree(spill, ignore_errors=True)


def _check_sampling(grid: Grid, config: RunConfig) -> None:
    """Before any work: what round 1 samples, from the nodes connected now (a simulation's are all
    connected from the start) or the min-available-nodes it waits for."""
    if (warning := config.check_sampling(len(list(grid.get_node_ids())), "connected nodes")) is not None:
        log.warning("%s; %s", *warning)


@dataclass
class Start:
    round: int  # the last round already done: 0 for a fresh run
    weights: dict[str, NDArray[np.float32]]
    history: list[dict[str, Any]] = field(default_factory=list)  # round records up to ``round``


def _fresh(
    record: RunRecord, evaluator: Any, config: RunConfig, flwr_run_id: int, *, features_from: list[str]
) -> Start:
    initial = evaluator.initial_weights()
    record.write_config(
        config.to_flwr(),
        fingerprints=evaluator.fingerprints(),
        extra={
            "flwr_run_id": flwr_run_id,
            "trainable_parameters": int(sum(v.size for v in initial.values())),
            "trainable_tensors": len(initial),
            "server_eval": evaluator.evaluates,  # False: no held-out data, rounds judged by the nodes
            **({"features_from": features_from} if features_from else {}),
        },
    )
    return Start(0, initial)


def _resume(record: RunRecord, evaluator: Any, config: RunConfig, flwr_run_id: int) -> Start:
    """Continue ``record`` from its last checkpoint, refusing when the held-out data changed."""
    point = record.resume_point(config.num_server_rounds)
    recorded = record.read_config().get("dataset_fingerprints") or {}
    for uri, fingerprint in evaluator.fingerprints().items():
        if recorded.get(uri) != fingerprint:
            raise bad_input(
                f"held-out dataset {uri} is not the one run {record.root.name} evaluated on",
                hint="a resumed run must evaluate on the same data: restore it, or start a new run",
            )
    weights = evaluator.checkpoint_weights(point.checkpoint)
    superseded = record.continue_after(point, flwr_run_id, config.num_server_rounds)
    log.info(
        "resuming %s from the checkpoint of round %d%s",
        record.root.name,
        point.round,
        f" (rounds {superseded} recorded after it are superseded)" if superseded else "",
    )
    return Start(point.round, weights, point.history)


class RunOutputs:
    """What the end of each round leaves on disk: record, plots, checkpoint, video (and W&B)."""

    def __init__(self, config: RunConfig, record: RunRecord, evaluator: Any, tracker: Tracker, *, evaluations: int = 0):
        self.config = config
        self.record = record
        self.evaluator = evaluator
        self.tracker = tracker  # W&B, when the run config asks for it
        self.evaluations = evaluations  # server evaluations so far (videos follow their count)

    def __call__(self, entry: dict[str, Any], weights: Mapping[str, NDArray[np.float32]]) -> None:
        server_round = entry["round"]
        last = server_round == self.config.num_server_rounds
        if entry.get("server_eval"):
            if self.evaluations % self.config.video_frequency == 0 or last:
                path = self.record.root / "videos" / f"round_{server_round:04d}.mp4"
                entry["video"] = self.evaluator.write_video(path, weights, server_round)
            self.evaluations += 1
        if server_round > 0 and (server_round % self.config.checkpoint_interval == 0 or last):
            directory = self.record.save_checkpoint(
                server_round,
                lambda tmp, final: self.evaluator.save_checkpoint(tmp, weights, lives_at=final),
                self.config.keep_last_checkpoints,
            )
            entry["checkpoint"] = str(directory.relative_to(self.record.root))
        name_nodes(entry, registered_node_names(Paths.resolve()))  # re-read: a node added mid-run gets its name
        self.record.write_round(entry)
        self.tracker.log_round(entry)
        plots.write_plots(self.record.root / "plots", [summary(r) for r in self.record.rounds()])
        self.record.write_status("running", round=server_round, rounds=self.config.num_server_rounds)
