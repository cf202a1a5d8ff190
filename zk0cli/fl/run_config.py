"""Every tunable of a federated run, with its default, in one dataclass.

The Flower app's ``[tool.flwr.app.config]`` (zk0cli/fl/app/pyproject.toml) mirrors these defaults
key for key (a test keeps them equal); ``--run-config k=v`` overrides them. Keys are the field
names with ``-`` for ``_``. :func:`RunConfig.from_mapping` checks types and ranges up front and
names the offending key, so a bad value stops the run before round 1.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zk0cli.core.errors import bad_input

if TYPE_CHECKING:
    from zk0cli.policy.build import PolicySpec

LR_SCHEDULES = ("constant", "cosine", "cosine_warm_restarts", "reduce_on_plateau")
AGGREGATIONS = ("mean", "trimmed-mean", "median", "krum", "multi-krum")
WIRE_ENCODINGS = ("fp32", "bf16-delta", "int8-delta")  # zk0cli.fl.integrity
RETIRED = {"uplink-bf16-delta": "it became wire-encoding: bf16-delta (true) or fp32 (false)"}


def _p(
    default: Any,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A field with its range rule and one line of documentation (listed by `zk0 sim --list-keys`)."""
    rules = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "doc": doc}
    return field(default=default, metadata=rules)


@dataclass
class RunConfig:
    # --- federation
    num_server_rounds: int = _p(3, "rounds of federated training", ge=1)
    fraction_train: float = _p(1.0, "fraction of connected nodes sampled for training each round", gt=0, le=1)
    fraction_evaluate: float = _p(1.0, "fraction of nodes doing federated evaluation (0 turns it off)", ge=0, le=1)
    min_available_nodes: int = _p(2, "nodes that must be connected before a round starts", ge=1)
    round_timeout_s: float = _p(3600.0, "seconds the server waits for replies in one round", gt=0)
    min_replies: float = _p(
        0.0, "replies after which a round may close early: 0 every sampled node, a fraction (0.8) or a count (3)", ge=0
    )
    straggler_grace_s: float = _p(
        60.0, "once min-replies nodes replied, seconds the round still waits (later replies are discarded)", ge=0
    )
    seed: int = _p(42, "seed of local training, evaluation noise and sampling", ge=0)

    # --- policy (see zk0cli.policy)
    policy: str = _p(
        "lerobot/smolvla_base",
        "'tiny' (offline test backbone), 'real-geometry' (random weights), or a SmolVLA checkpoint "
        "(<org>/<name>[@revision] on the Hub, or a directory)",
    )
    vlm_model_name: str = _p(
        "", "VLM used instead of the checkpoint's: a local directory (offline use) or <org>/<name>[@revision]"
    )
    device: str = _p("auto", "'auto' (cuda, then mps, then cpu), 'cuda', 'mps' or 'cpu'")
    chunk_size: int = _p(0, "actions predicted per inference; 0 keeps the policy's own (SmolVLA: 50)", ge=0)

    # --- data
    datasets: str = _p(
        "", "simulation: space-separated dataset URIs, one per client (cycled), or one URI partitioned across clients"
    )
    eval_datasets: str = _p("", "space-separated held-out dataset URIs the server evaluates on")
    client_eval_episodes: int = _p(1, "episodes each client holds out of training for federated evaluation", ge=0)

    # --- local training
    local_steps: int = _p(20, "optimizer steps per client per round (ignored when local-epochs > 0)", ge=1)
    local_epochs: int = _p(0, "full passes over the local data per round; 0 uses local-steps", ge=0)
    batch_size: int = _p(4, "local batch size", ge=1)
    lr: float = _p(1e-4, "peak learning rate of round 1 (SmolVLA's preset)", gt=0)
    eta_min: float = _p(2.5e-6, "learning-rate floor, within a round and across rounds", ge=0)

    # --- round-level lr schedule
    lr_schedule: str = _p("cosine", "round-level lr schedule", choices=LR_SCHEDULES)
    t_0: int = _p(15, "cosine_warm_restarts: rounds in the first cycle", ge=1)
    t_mult: int = _p(1, "cosine_warm_restarts: integer growth of each next cycle", ge=1)
    stall_patience: int = _p(3, "reduce_on_plateau: server evals without improvement before lr is reduced", ge=1)
    plateau_factor: float = _p(0.5, "reduce_on_plateau: lr multiplier on a plateau", gt=0, lt=1)

    # --- adaptive per-client lr
    adaptive_lr: bool = _p(True, "boost the lr of clients whose loss is far above the mean")
    high_loss_multiplier: float = _p(2.0, "a client is boosted when its loss > this x the mean loss", gt=1)
    lr_boost_factor: float = _p(1.15, "lr multiplier for a boosted client", gt=1)

    # --- lr from the server loss trend
    lr_trend: bool = _p(True, "adjust the lr from the server eval loss trend")
    adjustment_window: int = _p(5, "server evals the trend is measured over", ge=2)
    spike_threshold: float = _p(0.5, "relative rise within 3 rounds that counts as a spike (lr held)", gt=0)
    max_adjust_factor: float = _p(1.05, "largest single trend adjustment during early rounds", ge=1)
    early_rounds: int = _p(10, "rounds during which max-adjust-factor caps the trend adjustment", ge=0)
    lr_stall_factor: float = _p(0.95, "lr multiplier when the loss stalls (within 1% either way)", gt=0, lt=1)
    lr_divergence_factor: float = _p(1.05, "lr multiplier when the loss gets 1% or more worse over the window", gt=1)

    # --- FedProx mu
    proximal_mu: float = _p(0.01, "FedProx mu of round 1", ge=0)
    mu_decay: float = _p(0.98, "mu multiplier per round (exponential decay)", gt=0, le=1)
    dynamic_mu: bool = _p(True, "raise mu when client losses spread out")
    loss_std_threshold: float = _p(1.2, "std of client losses above which mu is raised", gt=0)
    mu_adjust_factor: float = _p(1.05, "mu multiplier when losses spread out", gt=1)
    mu_min: float = _p(0.001, "mu lower bound", ge=0)
    mu_max: float = _p(1.0, "mu upper bound", ge=0)

    # --- what the server does with each update
    aggregation: str = _p(
        "mean",
        "mean (sample-weighted, streamed), or robust: trimmed-mean, median, krum, multi-krum (spilled to disk)",
        choices=AGGREGATIONS,
    )
    trim_fraction: float = _p(0.1, "trimmed-mean: fraction of the highest and of the lowest values cut", ge=0, lt=0.5)
    byzantine_nodes: int = _p(
        1, "krum, multi-krum: harmful nodes to tolerate (a round must sample at least 2 x this + 3)", ge=0
    )
    quarantine_after: int = _p(
        0, "leave a node out of sampling after this many flagged rounds (zk0 server nodes release NODE); 0 off", ge=0
    )
    clip_update_norm: float = _p(
        0.0, "scale each update's change (local - global) to at most this L2 norm before averaging; 0 off", ge=0
    )

    # --- transport
    wire_encoding: str = _p(
        "bf16-delta",
        "weights both ways: fp32 (full), or changes in bf16-delta / int8-delta (server keeps fp32)",
        choices=WIRE_ENCODINGS,
    )
    int8_block_size: int = _p(256, "int8-delta: values sharing one float32 scale (a power of two)", ge=16, le=65536)
    error_feedback: bool = _p(True, "delta encodings: each side adds its last rounding error to its next change")
    keep_globals: int = _p(
        3, "changes of the global the server keeps to send a node only what it lacks; 0 sends full fp32", ge=0, le=64
    )

    # --- evaluation and records
    wandb_project: str = _p(
        "", "log every round to this Weights & Biases project (the wandb extra; WANDB_MODE=offline works); '' off"
    )
    eval_frequency: int = _p(1, "server evaluation every N rounds (and always at round 0 and the last round)", ge=1)
    eval_batches: int = _p(4, "batches per held-out dataset in a server or client evaluation", ge=1)
    video_frequency: int = _p(
        5, "evaluation video every N server evaluations, from round 0 (the last round always gets one)", ge=1
    )
    checkpoint_interval: int = _p(5, "checkpoint every N rounds (the last round always gets one)", ge=1)
    keep_last_checkpoints: int = _p(0, "round checkpoints kept (0 keeps all)", ge=0)
    runs_dir: str = _p("", "where run records go; empty means <data dir>/runs")
    run_name: str = _p("", "run directory name; empty derives one from the time")
    resume: bool = _p(
        False, "continue the record runs-dir/run-name from its last checkpoint (`zk0 run --resume` sets it)"
    )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from flwr-style keys (``local-steps``) or field names, checking every value."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                hint = RETIRED.get(key.replace("_", "-"), "`zk0 run --list-keys` lists them")
                raise bad_input(f"unknown run-config key '{key}'", hint=hint)
            kwargs[name] = _typed(key, value, known[name])
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            _check_range(key(f.name), getattr(self, f.name), f.metadata)
        if self.mu_min > self.mu_max:
            raise bad_input(
                f"run-config mu-min {self.mu_min} is above mu-max {self.mu_max}", hint="make mu-min <= mu-max"
            )
        if self.min_replies >= 1 and not float(self.min_replies).is_integer():
            raise bad_input(
                f"run-config min-replies {self.min_replies:g} is neither a fraction below 1 nor a whole count",
                hint="min-replies=0.8 (80% of the sampled nodes) or min-replies=3 (three nodes)",
            )
        krum_needs = 2 * self.byzantine_nodes + 3
        fewest = self.sampled(self.min_available_nodes)  # a round starts with at least min-available-nodes
        if self.aggregation in ("krum", "multi-krum") and fewest < krum_needs:
            enough = next(n for n in itertools.count(krum_needs) if self.sampled(n) >= krum_needs)
            raise bad_input(
                f"run-config aggregation {self.aggregation} with byzantine-nodes {self.byzantine_nodes} needs "
                f"{krum_needs} nodes a round; min-available-nodes {self.min_available_nodes} x fraction-train "
                f"{self.fraction_train:g} samples {fewest}",
                hint=f"set min-available-nodes={enough} (zk0 sim: --clients {enough}), lower byzantine-nodes, "
                "or use aggregation=median",
            )
        if self.int8_block_size & (self.int8_block_size - 1):
            raise bad_input(
                f"run-config int8-block-size {self.int8_block_size} is not a power of two",
                hint="blocks line up with tensor sizes when they are: int8-block-size=256 (the default) or 64",
            )
        if self.wire_encoding == "int8-delta" and self.keep_globals == 0:
            raise bad_input(
                "run-config wire-encoding int8-delta needs the server to keep earlier globals (keep-globals is 0)",
                hint="set keep-globals=3 (the default), or wire-encoding=bf16-delta for full fp32 downloads",
            )
        if self.eta_min >= self.lr:
            raise bad_input(
                f"run-config eta-min {self.eta_min} must be below lr {self.lr}", hint="lower eta-min or raise lr"
            )
        self.policy_spec()  # a malformed policy or vlm-model-name (<org>/<name>@<revision>) stops here

    def to_flwr(self) -> dict[str, Any]:
        """Flower run-config form: ``{"local-steps": 20, ...}``."""
        return {key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    def policy_spec(self) -> PolicySpec:
        """What every node and the server build: the same policy from the same seed."""
        from zk0cli.policy.build import PolicySpec, parse_hub_ref

        spec = functools.partial(
            PolicySpec, device=self.device, chunk_size=self.chunk_size or None, init_seed=self.seed
        )
        if self.policy == "tiny":
            return spec(tiny=True)
        if self.policy == "real-geometry":
            return spec(real_geometry=True)
        base, revision = parse_hub_ref(self.policy, key="policy")
        vlm, vlm_revision = parse_hub_ref(self.vlm_model_name, key="vlm-model-name")
        return spec(base=base, revision=revision, vlm=vlm or None, vlm_revision=vlm_revision)

    def sampled(self, nodes: int) -> int:
        """Nodes a round samples for training when ``nodes`` may be sampled: Flower's rule (the
        fraction, at least one); ``Zk0FedProx._sample`` draws this many."""
        return min(nodes, max(int(nodes * self.fraction_train), 1))

    def quorum(self, sampled: int) -> int:
        """Replies a round of ``sampled`` nodes needs before its straggler grace starts. A count
        above ``sampled`` was refused before round 1 (:meth:`check_sampling`); capping it here is
        for rounds that quarantine leaves smaller."""
        if self.min_replies == 0:
            return sampled
        if self.min_replies < 1:
            return max(1, math.ceil(self.min_replies * sampled))
        return min(int(self.min_replies), sampled)

    def round_sample(self, nodes: int, what: str) -> tuple[int, str]:
        """(nodes round 1 samples, how that count comes about) when ``nodes`` ``what`` are known
        before it (3, "online nodes"): it samples from them, or from the min-available-nodes it waits for."""
        if nodes >= self.min_available_nodes:
            counted = f"{nodes} {what}"
        else:
            nodes, counted = self.min_available_nodes, f"min-available-nodes {self.min_available_nodes}"
        return self.sampled(nodes), f"{counted} x fraction-train {self.fraction_train:g}"

    def check_sampling(self, nodes: int, what: str) -> tuple[str, str] | None:
        """Before round 1 (see :meth:`round_sample`): refuse a min-replies count the round cannot
        reach; (warning, hint) when the trimmed mean would cut no node, so it is the plain mean."""
        sampled, how = self.round_sample(nodes, what)
        if self.min_replies >= 1 and int(self.min_replies) > sampled:
            raise bad_input(
                f"run-config min-replies {int(self.min_replies)} is above the {sampled} node(s) a round samples "
                f"({how})",
                hint=f"min-replies={sampled} or fewer, or a fraction: min-replies=0.8 waits for 80% of the sampled",
            )
        if self.aggregation != "trimmed-mean" or int(self.trim_fraction * sampled) > 0:
            return None  # Flower's trimmed mean cuts int(trim-fraction x n) from each end
        warning = (
            f"trimmed-mean with trim-fraction {self.trim_fraction:g} cuts no node of the {sampled} a round "
            f"samples ({how}): it is the plain mean"
        )
        if sampled < 3:
            return warning, f"with {sampled} node(s) nothing can be cut: aggregation=median, or more nodes"
        return warning, f"trim-fraction={math.ceil(100 / sampled) / 100:g} cuts one node from each end"

    def dataset_uris(self) -> list[str]:
        return self.datasets.split()

    def eval_dataset_uris(self) -> list[str]:
        return self.eval_datasets.split()

    def server_evaluates(self) -> bool:
        """Whether the server has held-out data: eval datasets, or (simulation) the clients'
        held-out episodes. Without, it builds the policy from the nodes' features and evaluates nothing."""
        return bool(self.eval_dataset_uris() or (self.dataset_uris() and self.client_eval_episodes > 0))


def key(name: str) -> str:
    return name.replace("_", "-")


def documentation() -> list[tuple[str, Any, str]]:
    """(key, default, doc) for every tunable, in declaration order."""
    return [(key(f.name), f.default, f.metadata["doc"]) for f in dataclasses.fields(RunConfig)]


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["local-steps=5", "lr-schedule=cosine"]`` into typed values (TOML literals; bare words as strings)."""
    from zk0cli.core.config import parse_literal

    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise bad_input(f"run-config '{pair}' is not KEY=VALUE", hint="for example --set local-steps=5")
        parsed[name.strip()] = parse_literal(raw)
    return parsed


PER_RUN_KEYS = ("resume", "run-name")  # name one run: never a default for every run


def check_defaults(table: Mapping[str, Any]) -> None:
    """The ``[run]`` table of config.toml: run-config keys and values a run would accept."""
    for name in table:
        if key(name) in PER_RUN_KEYS:
            raise bad_input(
                f"run.{name} names one run and cannot be a default",
                hint="zk0 run --set run-name=NAME, or zk0 run --resume RUN_ID",
            )
    RunConfig.from_mapping(table)


def _typed(key_: str, value: Any, f: dataclasses.Field[Any]) -> Any:
    kind = type(f.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise bad_input(
        f"run-config {key_} must be {kind.__name__}, got {value!r}",
        hint=f"{key_}: {f.metadata['doc']} (default {f.default!r})",
    )


def _check_range(key_: str, value: Any, rules: Mapping[str, Any]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_input(f"run-config {key_} must be a finite number, got {value}")
    checks = (
        ("ge", operator.ge, ">="),
        ("gt", operator.gt, ">"),
        ("le", operator.le, "<="),
        ("lt", operator.lt, "<"),
    )
    for rule, holds, symbol in checks:
        bound = rules.get(rule)
        if bound is not None and not holds(value, bound):
            raise bad_input(f"run-config {key_} must be {symbol} {bound:g}, got {value}", hint=rules["doc"])
    if rules.get("choices") and value not in rules["choices"]:
        raise bad_input(f"run-config {key_} must be one of {', '.join(rules['choices'])}, got {value!r}")
