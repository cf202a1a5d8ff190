"""Opt-in Weights & Biases logging of a run: run config ``wandb-project`` (off when empty), the
``wandb`` extra installed where the ServerApp runs.

One W&B run per zk0 run record (same name and id, so a resumed run continues it), one W&B step
per server round. Everything logged is read from the round record zk0 writes anyway, so the two
never disagree: server evaluation, the nodes' mean and per-node training metrics (by the names
the record gives them), lr and mu, weight bytes down and up, flags, and the evaluation video.
W&B's own settings apply: ``WANDB_MODE=offline`` logs to files with no network.

W&B never stops a run part-way: a W&B run that cannot start (not logged in, no network in
online mode) stops the zk0 run before round 1 (exit 4, with what to do); a round that cannot be
logged later is a warning, W&B logging ends there and the run goes on (its record has every round).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

from zk0cli.core.errors import env_not_ready
from zk0cli.fl.records import RunRecord, node_label, summary
from zk0cli.fl.run_config import RunConfig

log = logging.getLogger("zk0.server")

OFF_HINT = "or set wandb-project to '' to turn it off"
START_HINT = (
    f"log in where the server runs (`wandb login`), or set WANDB_MODE=offline to log without a network, {OFF_HINT}"
)
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


def install_hint() -> str:
    """The command that adds the wandb extra to the zk0 this process runs: zk0 is installed from
    its checkout (install.sh), with the versions of its requirements.lock."""
    checkout = Path(__file__).resolve().parents[2]
    return (
        f"install the extra where the server runs: {sys.executable} -m pip install "
        f"-c {checkout / 'requirements.lock'} -e '{checkout}[wandb]' ({OFF_HINT})"
    )


def require_wandb(config: RunConfig) -> None:
    """env_not_ready when W&B logging is asked for and wandb cannot be imported here."""
    if not config.wandb_project:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise env_not_ready(
            f"run-config wandb-project is '{config.wandb_project}' but wandb is not installed", hint=install_hint()
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

        try:
            self.run = wandb.init(
                project=config.wandb_project,
                name=record.root.name,
                id=re.sub(r"[^A-Za-z0-9_-]", "-", record.root.name),  # resumed runs continue the same W&B run
                resume="allow",
                dir=record.root,
                config=config.to_flwr(),
                job_type="federated",
            )
        except Exception as exc:  # noqa: BLE001 - wandb raises UsageError, CommError, ValueError...
            raise env_not_ready(
                f"Weights & Biases could not start a run in project '{config.wandb_project}': {_first_line(exc)}",
                hint=START_HINT,
            ) from exc
        log.info("logging to Weights & Biases project %s (run %s)", config.wandb_project, record.root.name)

    def log_round(self, entry: dict[str, Any]) -> None:
        if self.run is None:
            return
        import wandb

        try:
            metrics: dict[str, Any] = dict(round_metrics(entry))
            video = (entry.get("video") or {}).get("video")
            if video:
                metrics["server/video"] = wandb.Video(str(Path(self.record.root) / "videos" / video), format="mp4")
            self.run.log(metrics, step=int(entry["round"]))
        except Exception as exc:  # noqa: BLE001 - W&B is a copy of the record: it must not end the run
            log.warning(
                "W&B logging stopped at round %s (%s); the run goes on and its record keeps every round",
                entry.get("round"),
                _first_line(exc),
            )
            self._finish(exit_code=1)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """The W&B run ends with the zk0 run: failed (exit code 1) when it raised."""
        self._finish(exit_code=1 if exc_type else 0)

    def _finish(self, exit_code: int) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001 - the zk0 run's outcome is what matters here
            log.warning("W&B could not finish its run (%s)", _first_line(exc))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
