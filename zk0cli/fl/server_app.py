"""The ServerApp: validate the run config, set up the run record, run zk0's FedProx.

Every failure before or during the rounds is written to the run's status.json (``zk0 sim`` and
``zk0 run`` read it to print one clear line) and then raised, so Flower marks the run failed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from zk0cli.core.errors import Zk0Error
from zk0cli.core.paths import Paths
from zk0cli.fl import plots
from zk0cli.fl.records import RunRecord, new_run_name, summary
from zk0cli.fl.run_config import RunConfig

log = logging.getLogger("zk0.server")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(context.run_config)  # bad values stop here, before round 1
    record = RunRecord.create(runs_dir(config), config.run_name or f"{new_run_name()}-run{context.run_id}")
    record.write_status("starting", flwr_run_id=context.run_id)
    try:
        run_federation(grid, config, record, flwr_run_id=context.run_id)
    except Zk0Error as error:
        record.write_status("failed", error=error.message, hint=error.hint, exit_code=int(error.code))
        raise
    except Exception as exc:
        record.write_status("failed", error=f"{type(exc).__name__}: {exc}", hint=f"see the server log; run dir {record.root}")
        raise
    record.write_status("completed", rounds=config.num_server_rounds)


def runs_dir(config: RunConfig) -> Path:
    return Path(config.runs_dir).expanduser() if config.runs_dir else Paths.resolve().runs_dir


def run_federation(grid: Grid, config: RunConfig, record: RunRecord, *, flwr_run_id: int = 0) -> None:
    from zk0cli.fl.server_eval import ServerEvaluator
    from zk0cli.fl.strategy import Zk0FedProx

    evaluator = ServerEvaluator(config)
    initial = evaluator.initial_weights()
    record.write_config(
        config.to_flwr(),
        fingerprints=evaluator.fingerprints(),
        extra={
            "flwr_run_id": flwr_run_id,
            "trainable_parameters": int(sum(v.size for v in initial.values())),
            "trainable_tensors": len(initial),
        },
    )
    outputs = RunOutputs(config, record, evaluator)
    record.write_status("running", flwr_run_id=flwr_run_id, rounds=config.num_server_rounds)
    Zk0FedProx(config, initial, evaluator, outputs).run(grid)


class RunOutputs:
    """What the end of each round leaves on disk: record, plots, checkpoint, video."""

    def __init__(self, config: RunConfig, record: RunRecord, evaluator: Any):
        self.config = config
        self.record = record
        self.evaluator = evaluator
        self.evaluations = 0

    def __call__(self, entry: dict[str, Any], weights: Mapping[str, np.ndarray]) -> None:
        server_round = entry["round"]
        last = server_round == self.config.num_server_rounds
        if entry.get("server_eval"):
            if self.evaluations % self.config.video_frequency == 0 or last:
                path = self.record.root / "videos" / f"round_{server_round:04d}.mp4"
                entry["video"] = self.evaluator.write_video(path, weights, server_round)
            self.evaluations += 1
        if server_round > 0 and (server_round % self.config.checkpoint_interval == 0 or last):
            directory = self.record.save_checkpoint(
                server_round, lambda d: self.evaluator.save_checkpoint(d, weights), self.config.keep_last_checkpoints
            )
            entry["checkpoint"] = str(directory.relative_to(self.record.root))
        self.record.write_round(entry)
        plots.write_plots(self.record.root / "plots", [summary(r) for r in self.record.rounds()])
        self.record.write_status("running", round=server_round, rounds=self.config.num_server_rounds)
