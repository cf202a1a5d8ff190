"""Opt-in Weights & Biases logging of a run: run config ``wandb-project`` (off when empty), the
``wandb`` extra installed where the ServerApp runs.

One W&B run per zk0 run record (same name and id, so a resumed run continues it), one W&B step
per server round. Everything logged is read from the round record zk0 writes anyway, so the two
never disagree: server evaluation, the nodes' mean and per-node training metrics (by the names
the record gives them), lr and mu, weight bytes down and up, flags, and the evaluation video.
W&B's own settings apply: ``WANDB_MODE=offline`` logs to files with no network.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from zk0cli.core.errors import env_not_ready
from zk0cli.fl.records import RunRecord, node_label, summary
from zk0cli.fl.run_config import RunConfig

log = logging.getLogger("zk0.server")

WANDB_HINT = "install it where the server runs: pip install 'zk0[wandb]' (or set wandb-project to '' to turn it off)"
SUMMARY_KEYS = {  # record summary key -> W&B key
    "server_policy_loss": "server/policy_loss",
    "server_action_error": "server/action_error",
    "federated_eval_loss": "federated/policy_loss",
    "loss_avg": "clients/loss_avg",
    "loss_std": "clients/loss_std",
    "grad_norm_avg": "clients/grad_norm_avg",
    "update_norm_avg": "clients/update_norm_avg",
    "num_clients": "clients/count",
    "rejected": "clients/rejected",
    "failed": "clients/failed",
    "late": "clients/late",
    "lr": "plan/lr",
    "mu": "plan/mu",
}


def require_wandb(config: RunConfig) -> None:
    """env_not_ready when W&B logging is asked for and wandb cannot be imported here."""
    if not config.wandb_project:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise env_not_ready(
            f"run-config wandb-project is '{config.wandb_project}' but wandb is not installed", hint=WANDB_HINT
        ) from None


def round_metrics(entry: dict[str, Any]) -> dict[str, float | int]:
    """What one round record gives W&B: numbers only, None left out."""
    line = summary(entry)
    metrics: dict[str, float | int] = {
        SUMMARY_KEYS[key]: value for key, value in line.items() if key in SUMMARY_KEYS and value is not None
    }
    for client in (entry.get("clients") or {}).get("each", []):
        prefix = f"node/{node_label(client)}"
        for name, value in (client.get("metrics") or {}).items():
            if isinstance(value, int | float):
                metrics[f"{prefix}/{name}"] = value
        for name in ("bytes_down", "bytes_up", "measured_update_norm", "cosine_to_aggregate"):
            if isinstance(client.get(name), int | float):
                metrics[f"{prefix}/{name}"] = client[name]
        metrics[f"{prefix}/flagged"] = int(bool(client.get("flags")))
    return metrics


class Tracker:
    """The W&B run of one zk0 run, or nothing at all when ``wandb-project`` is empty."""

    def __init__(self, config: RunConfig, record: RunRecord):
        self.record = record
        self.run: Any = None
        if not config.wandb_project:
            return
        require_wandb(config)
        import wandb

        self.run = wandb.init(
            project=config.wandb_project,
            name=record.root.name,
            id=re.sub(r"[^A-Za-z0-9_-]", "-", record.root.name),  # resumed runs continue the same W&B run
            resume="allow",
            dir=record.root,
            config=config.to_flwr(),
            job_type="federated",
        )
        log.info("logging to Weights & Biases project %s (run %s)", config.wandb_project, record.root.name)

    def log_round(self, entry: dict[str, Any]) -> None:
        if self.run is None:
            return
        import wandb

        metrics: dict[str, Any] = dict(round_metrics(entry))
        video = (entry.get("video") or {}).get("video")
        if video:
            metrics["server/video"] = wandb.Video(str(Path(self.record.root) / "videos" / video), format="mp4")
        self.run.log(metrics, step=int(entry["round"]))

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """The W&B run ends with the zk0 run: failed (exit code 1) when it raised."""
        if self.run is not None:
            self.run.finish(exit_code=1 if exc_type else 0)
            self.run = None
