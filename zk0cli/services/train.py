"""The centralized baseline: the federated run's policy, loop and evaluation, with the data pooled.

What stays the same as in a federated run (so the comparison measures federation, nothing else):
- the policy (``RunConfig.policy_spec``) and its starting trainable weights (the server's);
- the local training loop (:func:`zk0cli.policy.train.train`), with SmolVLA's AdamW preset and
  the loop's in-call cosine, one call per *equivalent round*, each round's lr from the same
  round-level control (:class:`zk0cli.fl.control.RoundControl`: schedule and server-loss trend);
- the server evaluation on the same held-out datasets (:class:`zk0cli.fl.server_eval.ServerEvaluator`)
  at the same rounds, and the same run record, checkpoints, plots and videos
  (:class:`zk0cli.fl.server_app.RunOutputs`).

What differs, by design:
- the data: the union of every client's training episodes (held-out episodes stay out), one
  dataset (several datasets are merged with LeRobot's ``aggregate_datasets`` into a cache, whose
  statistics pool theirs, as pooling the recordings would);
- FedProx: no global anchor exists, so mu is 0 (``proximal-mu = mu-min = 0`` in the record);
- steps: the matching rule is *the same optimizer steps that reached the model*: equivalent round
  r trains for the sum of the steps of the clients accepted in federated round r (rejected or
  failed clients' steps never reached the global model). With ``--steps N`` the N steps are spread
  evenly over ``num-server-rounds`` rounds.

Local-only (``zk0 train --match-run RUN --local-only``): one such run per node dataset of the
federated run, each on that dataset's training episodes alone, equivalent round r training for
the steps that node's accepted updates brought to federated round r: what each node would have
got by training alone. Their records say ``"mode": "local-only"`` and name their dataset.

``config.json`` says ``"mode": "centralized"`` (or ``"local-only"``) and holds the plan (steps per round, evaluation
rounds, datasets with their episodes, frames and fingerprints), so ``zk0 train --from-record``
re-runs it exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zk0cli.core.errors import bad_input
from zk0cli.core.paths import Paths
from zk0cli.fl.run_config import RunConfig

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from zk0cli.datasets.uri import DatasetUri
    from zk0cli.fl.records import RunRecord
    from zk0cli.fl.tracking import Tracker

MODE = "centralized"
LOCAL_ONLY = "local-only"
MODES = (MODE, LOCAL_ONLY)  # the records this module writes and re-runs
NODE = "centralized"  # the one "client" of the round records
MATCHING_RULE = (
    "each equivalent round trains for the sum of the optimizer steps of the clients accepted in "
    "that federated round; evaluations at the same rounds"
)
LOCAL_RULE = (
    "each equivalent round trains for the optimizer steps this node's accepted updates brought to "
    "that federated round; evaluations at the same rounds"
)
# No FedProx anchor in centralized training; mu-min 0 keeps the mu control at 0 too.
CENTRALIZED_SETTINGS = {"proximal-mu": 0.0, "mu-min": 0.0}

Progress = Callable[[str], None]


@dataclass
class TrainingData:
    """One dataset of the pool and the episodes of it that train."""

    uri: str
    episodes: list[int]
    frames: int = 0
    fingerprint: str = ""


@dataclass
class CentralizedPlan:
    """Everything a centralized run does, decided before it starts (and recorded)."""

    config: RunConfig
    steps_per_round: list[int]  # optimizer steps of equivalent rounds 1..R
    eval_rounds: list[int]  # rounds (0 = start) with a server evaluation
    training: list[TrainingData]
    matched_run: dict[str, str] | None = None  # {"run_id", "root"} of the federated run
    # the server's datasets in the record matched or re-run: the same URI must hold the same content
    recorded_fingerprints: dict[str, str] = field(default_factory=dict)
    mode: str = MODE  # or LOCAL_ONLY: one node's dataset alone

    @property
    def total_steps(self) -> int:
        return sum(self.steps_per_round)

    def record_extra(self) -> dict[str, Any]:
        rule = LOCAL_RULE if self.mode == LOCAL_ONLY else MATCHING_RULE
        return {
            "mode": self.mode,
            "matched_run": self.matched_run,
            "matching_rule": rule if self.matched_run else "--steps spread evenly over num-server-rounds",
            "steps_per_round": self.steps_per_round,
            "optimizer_steps": self.total_steps,
            "eval_rounds": self.eval_rounds,
            "participants": [{"name": _name(data.uri), **dataclasses.asdict(data)} for data in self.training],
        }


# ----------------------------------------------------------------------------- planning


def plan_centralized(
    *,
    datasets: list[str] | None = None,
    steps: int | None = None,
    match_run: str | Path | None = None,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> CentralizedPlan:
    """The centralized run for these options; ``match_run`` copies a federated run's config.

    With neither datasets nor a matched run: the samples a default ``zk0 sim`` generates. With no
    eval-datasets the server evaluation uses the training datasets' held-out episodes, as in ``zk0 sim``.
    """
    from zk0cli.services.report import load_run

    if steps is not None and match_run is not None:
        raise bad_input("--steps and --match-run exclude each other", hint="match a run, or give the steps yourself")
    if steps is not None and steps < 1:
        raise bad_input(f"--steps must be >= 1, got {steps}", hint="pass the total optimizer steps, e.g. --steps 200")
    settings: dict[str, Any] = {}
    federated = None
    if match_run is not None:
        federated = load_run(match_run)
        if federated.mode != "federated":
            raise bad_input(
                f"run {federated.run_id} is a {federated.mode} run, not a federated one",
                hint="--match-run takes the federated run to match",
            )
        settings.update(federated.run_config)
        settings["run-name"] = ""  # the federated run's name is taken
    settings.update({key.replace("_", "-"): value for key, value in (overrides or {}).items()})
    if seed is not None:
        settings["seed"] = seed
    if datasets:
        settings["datasets"] = " ".join(datasets)
    if federated is not None:
        settings["num-server-rounds"] = max(entry["round"] for entry in federated.rounds)
    settings.update(CENTRALIZED_SETTINGS)
    config = RunConfig.from_mapping(settings)  # every value checked before anything is generated
    if not config.dataset_uris():  # like `zk0 sim` with no data: its generated samples
        from zk0cli.services.simulation import SimRequest, sample_datasets

        settings["datasets"] = " ".join(sample_datasets(Paths.resolve(), SimRequest().clients, progress=progress))
        settings.setdefault("policy", "tiny")  # as `zk0 sim` does: the offline backbone for its samples
        config = RunConfig.from_mapping(settings)
    if federated is None:
        per_round = _spread(steps or config.num_server_rounds * config.local_steps, config.num_server_rounds)
        config = dataclasses.replace(config, num_server_rounds=len(per_round))
        return CentralizedPlan(config, per_round, _eval_rounds(config), _union(config, None))
    from zk0cli.services.report import round_steps

    trained = [round_steps(entry) for entry in federated.rounds if entry["round"] > 0]
    if not any(trained):
        raise bad_input(
            f"run {federated.run_id} has no accepted training steps to match",
            hint="match a run whose rounds trained (see `zk0 report` of it)",
        )
    evaluated = [entry["round"] for entry in federated.rounds if entry.get("server_eval")]
    return CentralizedPlan(
        config,
        trained,
        evaluated,
        _union(config, federated),
        matched_run={"run_id": federated.run_id, "root": str(federated.root)},
        recorded_fingerprints=dict(federated.config.get("dataset_fingerprints") or {}),
    )


def plan_local_only(
    match_run: str | Path,
    *,
    datasets: list[str] | None = None,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> list[CentralizedPlan]:
    """One local-only plan per dataset the federated run's nodes trained on (by fingerprint)."""
    from zk0cli.services.report import load_run

    pooled = plan_centralized(datasets=datasets, match_run=match_run, seed=seed, overrides=overrides, progress=progress)
    rounds = [entry for entry in load_run(match_run).rounds if entry["round"] > 0]
    plans = []
    for data in pooled.training:
        steps = [_node_steps(entry, data.fingerprint) for entry in rounds]
        if not any(steps):
            continue  # a dataset no accepted update came from: nothing to match
        plans.append(dataclasses.replace(pooled, steps_per_round=steps, training=[data], mode=LOCAL_ONLY))
    if not plans:
        raise bad_input(
            f"no update of run {match_run} was accepted: no node trained anything to match alone",
            hint="match a run whose rounds trained (see `zk0 report` of it)",
        )
    return plans


def _node_steps(entry: dict[str, Any], fingerprint: str) -> int:
    """Optimizer steps one dataset's accepted updates brought to a federated round."""
    clients = (entry.get("clients") or {}).get("each") or []
    return int(
        sum(
            int((client.get("metrics") or {}).get("steps", 0))
            for client in clients
            if client.get("dataset_fingerprint") == fingerprint
        )
    )


def plan_from_record(root: str | Path, *, seed: int | None = None) -> CentralizedPlan:
    """The plan a centralized record was made with (``seed`` replaced if given)."""
    from zk0cli.services.report import load_run

    run = load_run(root)
    if run.mode not in MODES:
        raise bad_input(
            f"run {run.run_id} is a {run.mode} run", hint=f"re-run it with `zk0 sim --from-record {run.root}`"
        )
    extra = run.config
    settings = dict(run.run_config)
    if seed is not None:
        settings["seed"] = seed
    settings.update({"runs-dir": "", "run-name": ""})
    training = [
        TrainingData(p["uri"], list(p["episodes"]), int(p.get("frames", 0)), str(p.get("fingerprint", "")))
        for p in extra.get("participants") or []
    ]
    return CentralizedPlan(
        RunConfig.from_mapping(settings),
        list(extra["steps_per_round"]),
        list(extra["eval_rounds"]),
        training,
        matched_run=extra.get("matched_run"),
        recorded_fingerprints=dict(extra.get("dataset_fingerprints") or {}),
        mode=run.mode,
    )


def _spread(total: int, rounds: int) -> list[int]:
    """``total`` steps over ``rounds`` rounds as evenly as possible (fewer rounds if steps < rounds)."""
    rounds = min(rounds, total)
    base, extra = divmod(total, rounds)
    return [base + (1 if index < extra else 0) for index in range(rounds)]


def _eval_rounds(config: RunConfig) -> list[int]:
    """The federated server's rule: round 0, every eval-frequency rounds, and the last round."""
    last = config.num_server_rounds
    return [r for r in range(last + 1) if r == 0 or r % config.eval_frequency == 0 or r == last]


def _union(config: RunConfig, federated: Any) -> list[TrainingData]:
    """Every client's training episodes: each dataset minus its client-held-out episodes.

    For a matched run, only the datasets the clients trained on (recognised by fingerprint) are
    pooled, and a dataset whose content changed since is refused.
    """
    from zk0cli.datasets.partition import split_heldout
    from zk0cli.datasets.uri import dataset_fingerprint, open_metadata, parse_uri

    used = _client_fingerprints(federated) if federated is not None else set()
    pool = []
    for text in dict.fromkeys(config.dataset_uris()):
        meta = open_metadata(parse_uri(text))
        fingerprint = dataset_fingerprint(parse_uri(text))
        if used and fingerprint not in used:
            continue
        episodes = split_heldout(range(meta.total_episodes), config.client_eval_episodes).train
        frames = int(sum(meta.episodes["length"][e] for e in episodes))
        pool.append(TrainingData(str(parse_uri(text)), episodes, frames, fingerprint))
    if not pool:
        raise bad_input(
            f"none of the datasets {config.datasets!r} is one the clients of {federated.run_id} trained on "
            "(their fingerprints differ)",
            hint="pass the clients' datasets with --dataset, or use --steps instead of --match-run",
        )
    return pool


def _client_fingerprints(federated: Any) -> set[str]:
    return {
        str(client.get("dataset_fingerprint", ""))
        for entry in federated.rounds
        for client in (entry.get("clients") or {}).get("each") or []
    } - {""}


# ----------------------------------------------------------------------------- running


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and every GPU) from one seed; data order and evaluation noise
    are seeded by the training loop and the evaluation from the run config's seed."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def round_seed(seed: int, server_round: int) -> int:
    """The training seed of one equivalent round (a federated client derives its own alike)."""
    return (seed * 1_000_003 + server_round * 7919) % (2**31)


def run_centralized(
    plan: CentralizedPlan, *, runs_dir: Path | None = None, run_name: str = "", progress: Progress | None = None
) -> RunRecord:
    """Train, evaluate and record the centralized run; returns its record."""
    from zk0cli.core.errors import Zk0Error
    from zk0cli.fl.records import RunRecord, new_run_name
    from zk0cli.fl.tracking import Tracker

    config = plan.config
    runs_dir = (
        Path(runs_dir)
        if runs_dir
        else (Path(config.runs_dir).expanduser() if config.runs_dir else Paths.resolve().runs_dir)
    )
    suffix = MODE if plan.mode == MODE else f"local-{pooled_name(plan.training)}"
    record = RunRecord.create(runs_dir, run_name or config.run_name or f"{new_run_name()}-{suffix}")
    record.write_status("starting", mode=plan.mode)
    try:
        with Tracker(plan.config, record) as tracker:
            _train_rounds(plan, record, tracker, progress or (lambda _message: None))
    except Zk0Error as error:
        record.write_status("failed", error=error.message, hint=error.hint)
        raise
    except Exception as exc:
        record.write_status("failed", error=f"{type(exc).__name__}: {exc}", hint=f"run dir {record.root}")
        raise
    record.write_status("completed", rounds=len(plan.steps_per_round))
    return record


def train_from_record(
    root: str | Path,
    *,
    seed: int | None = None,
    run_name: str = "",
    runs_dir: Path | None = None,
    progress: Progress | None = None,
) -> RunRecord:
    """Re-run a centralized record (``zk0 train --from-record``), optionally with another seed."""
    plan = plan_from_record(root, seed=seed)
    return run_centralized(plan, runs_dir=runs_dir, run_name=run_name, progress=progress)


def run_summary(record: RunRecord) -> dict[str, Any]:
    """What ``zk0 train`` prints, read back from the record it wrote."""
    from zk0cli.services.report import load_run

    run = load_run(record.root)
    final = run.eval_points()[-1]
    return {
        "run_id": run.run_id,
        "record": str(run.root),
        "seed": run.seed,
        "optimizer_steps": run.config["optimizer_steps"],
        "final_round": final.round,
        "final_loss": final.policy_loss,
        "final_action_error": final.action_error,
        "matched_run": (run.config.get("matched_run") or {}).get("run_id"),
        "mode": run.mode,
        "datasets": [p["name"] for p in run.config.get("participants") or []],
    }


def _train_rounds(plan: CentralizedPlan, record: RunRecord, tracker: Tracker, progress: Progress) -> None:
    from zk0cli.datasets.uri import open_dataset, open_metadata
    from zk0cli.fl.control import RoundControl
    from zk0cli.fl.server_app import RunOutputs
    from zk0cli.fl.server_eval import ServerEvaluator
    from zk0cli.policy.build import build_policy
    from zk0cli.policy.train import TrainConfig, train
    from zk0cli.policy.trainable import get_trainable, set_trainable

    config = dataclasses.replace(plan.config, num_server_rounds=len(plan.steps_per_round))
    seed_everything(config.seed)
    progress("building the policy and the held-out evaluation")
    evaluator = ServerEvaluator(config)
    _check_fingerprints(plan.recorded_fingerprints, evaluator.fingerprints())
    source, episodes = pooled_source(plan.training, progress)
    meta = open_metadata(source)
    built = build_policy(config.policy_spec(), meta)
    dataset = open_dataset(source, episodes=episodes, delta_timestamps=built.delta_timestamps(meta))
    initial = evaluator.initial_weights()
    set_trainable(built.policy, _tensors(initial))  # the federated server's starting point
    record.write_config(
        config.to_flwr(),
        fingerprints={**evaluator.fingerprints(), **{d.uri: d.fingerprint for d in plan.training}},
        extra={
            **plan.record_extra(),
            "trainable_parameters": int(sum(v.size for v in initial.values())),
            "trainable_tensors": len(initial),
        },
    )
    record.write_status("running", mode=plan.mode, rounds=config.num_server_rounds)
    outputs = RunOutputs(config, record, evaluator, tracker)
    control = RoundControl(config)
    name = pooled_name(plan.training)

    started = time.monotonic()
    baseline = evaluator(0, initial)
    outputs(
        {"round": 0, "mode": plan.mode, "server_eval": baseline, "seconds": round(time.monotonic() - started, 3)},
        initial,
    )
    for server_round, steps in enumerate(plan.steps_per_round, start=1):
        started = time.monotonic()
        plan_r = control.plan(server_round)
        entry: dict[str, Any] = {
            "round": server_round,
            "mode": plan.mode,
            "plan": plan_r.to_dict(),
            "clients": None,
            "rejected": [],
            "failed": [],
        }
        clients: list[dict[str, Any]] = []
        if steps > 0:
            progress(f"round {server_round}/{config.num_server_rounds}: {steps} steps at lr {plan_r.lr:.3g}")
            settings = TrainConfig(
                steps=steps,
                batch_size=config.batch_size,
                lr=plan_r.lr,
                eta_min=min(config.eta_min, plan_r.lr),
                proximal_mu=plan_r.mu,
                seed=round_seed(config.seed, server_round),
            )
            result = train(built, dataset, settings)
            metrics = result.metrics()
            clients.append({"node": NODE, "dataset": name, "metrics": metrics, "samples": result.samples})
        entry["clients"] = {"aggregate": _aggregate(clients), "each": clients}
        control.observe_clients({c["node"]: c["metrics"]["loss"] for c in clients})
        weights = {key: value.numpy() for key, value in get_trainable(built.policy).items()}
        result_eval = evaluator(server_round, weights) if server_round in plan.eval_rounds else None
        if result_eval:
            control.observe_server_loss(result_eval["composite"]["policy_loss"])
        entry["server_eval"] = result_eval
        entry["seconds"] = round(time.monotonic() - started, 3)
        outputs(entry, weights)


def _aggregate(clients: list[dict[str, Any]]) -> dict[str, Any]:
    """The round record's client aggregate, made by the federated strategy's own function."""
    from zk0cli.fl.strategy import _aggregate_clients

    return _aggregate_clients(clients)


def _check_fingerprints(recorded: dict[str, str], actual: dict[str, str]) -> None:
    for uri, fingerprint in recorded.items():
        if actual.get(uri) not in (None, fingerprint):
            raise bad_input(
                f"the evaluation dataset {uri} changed since the recorded run (fingerprint "
                f"{fingerprint[:12]} recorded, {actual[uri][:12]} now)",
                hint="restore the recorded dataset, or run with --steps to start a new comparison",
            )


def _tensors(weights: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {name: torch.from_numpy(value) for name, value in weights.items()}


# ----------------------------------------------------------------------------- the pooled dataset


def pooled_name(training: list[TrainingData]) -> str:
    return "+".join(_name(data.uri) for data in training)


def _name(uri: str) -> str:
    from zk0cli.datasets.uri import parse_uri

    return parse_uri(uri).name


def pooled_source(training: list[TrainingData], progress: Progress) -> tuple[DatasetUri, list[int]]:
    """The dataset holding the union of the training episodes, and those episodes' indices in it.
    One dataset is used in place; several are merged once into a cache."""
    from zk0cli.datasets.uri import dataset_fingerprint, open_metadata, parse_uri

    uris = [parse_uri(data.uri) for data in training]
    metas = [open_metadata(uri) for uri in uris]
    for data, uri in zip(training, uris, strict=True):
        if data.fingerprint and dataset_fingerprint(uri) != data.fingerprint:
            raise bad_input(
                f"the training dataset {data.uri} changed since the recorded run",
                hint="restore the recorded dataset, or run with --steps to start a new comparison",
            )
    if len(uris) == 1:
        return uris[0], training[0].episodes
    # aggregate_datasets appends the datasets' episodes in order, renumbered from 0
    offsets = [sum(meta.total_episodes for meta in metas[:index]) for index in range(len(metas))]
    episodes = [offset + episode for offset, data in zip(offsets, training, strict=True) for episode in data.episodes]
    return _merged_dataset(uris, metas, training, progress), episodes


def _merged_dataset(
    uris: list[DatasetUri], metas: list[LeRobotDatasetMetadata], training: list[TrainingData], progress: Progress
) -> DatasetUri:
    """``<data dir>/pooled/<digest of the sources>``: LeRobot's aggregate_datasets, written once."""
    from lerobot.datasets.aggregate import aggregate_datasets

    from zk0cli.datasets.uri import dataset_fingerprint, parse_uri

    digest = hashlib.sha256("\n".join(dataset_fingerprint(uri) for uri in uris).encode()).hexdigest()[:16]
    target = Paths.resolve().data_dir / "pooled" / f"{pooled_name(training)[:80]}-{digest}"
    if not (target / "meta" / "info.json").is_file():
        progress(f"merging {len(uris)} datasets into {target}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        shutil.rmtree(staging)  # LeRobot creates the root itself
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # tqdm bars; errors still raise
                aggregate_datasets(
                    [uri.repo_id for uri in uris],
                    f"local/{target.name}",
                    roots=[meta.root for meta in metas],
                    aggr_root=staging,
                )
            os.replace(staging, target)
        except ValueError as exc:  # LeRobot refuses datasets it cannot pool (features, fps, robot)
            raise bad_input(
                f"these datasets cannot be pooled into one: {exc}",
                hint="pool datasets with the same features and fps, or compare on one dataset",
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return parse_uri(f"local:{target}")
