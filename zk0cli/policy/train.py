"""The one local training loop (federated client and centralized baseline) and evaluation.

Training is LeRobot's step (preprocess, ``policy.forward``, backward, clip, AdamW with SmolVLA's
preset) plus FedProx's proximal term (mu/2)*||w - w_global||^2 over the trainable parameters,
with a cosine learning rate from ``lr`` down to ``eta_min`` inside each call (reset every round).

Evaluation is deterministic: the flow-matching loss uses noise and time drawn from a generator
seeded with ``seed``, so the same weights give the same numbers round after round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zk0cli.core.errors import bad_input
from zk0cli.policy.build import BuiltPolicy
from zk0cli.policy.trainable import check_matches, trainable_parameters

if TYPE_CHECKING:
    import numpy as np
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

ACTION = "action"
# SmolVLA samples flow-matching time as Beta(1.5, 1) * 0.999 + 0.001 (lerobot sample_time_beta).
TIME_BETA_ALPHA, TIME_SCALE, TIME_OFFSET = 1.5, 0.999, 0.001

Progress = Callable[[int, int, float], None]  # (step done, total steps, that step's loss)


@dataclass
class TrainConfig:
    """One call's local training. Optimizer defaults are SmolVLA's preset."""

    steps: int = 50  # optimizer steps in this call (one federated round's local work)
    epochs: int | None = None  # if set: this many full passes over the data, instead of `steps`
    batch_size: int = 8
    lr: float = 1e-4  # learning rate at the first step
    eta_min: float = 2.5e-6  # learning rate at the last step (cosine decay in between)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 1e-10
    grad_clip: float = 10.0  # max global gradient norm (after adding the proximal gradient)
    proximal_mu: float = 0.0  # FedProx strength; 0 is plain local training (FedAvg)
    seed: int = 0  # data order and flow-matching noise: same seed, same result on CPU
    num_workers: int = 0  # DataLoader worker processes; 0 loads in the training process

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "epochs": self.epochs is None or self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "eta_min": 0 <= self.eta_min <= self.lr,
            "betas": len(self.betas) == 2 and all(0 <= beta < 1 for beta in self.betas),
            "eps": self.eps > 0,
            "weight_decay": self.weight_decay >= 0,
            "grad_clip": self.grad_clip > 0,
            "proximal_mu": self.proximal_mu >= 0,
            "num_workers": self.num_workers >= 0,
        }
        for key, valid in checks.items():
            if not valid:
                raise bad_input(
                    f"invalid training setting {key}={getattr(self, key)!r}",
                    hint="steps/epochs/batch_size >= 1, lr > 0, 0 <= eta_min <= lr, mu >= 0, 0 <= betas < 1",
                )
        first, second = self.betas  # a list from a config file becomes the pair AdamW takes
        self.betas = (first, second)

    def lr_at(self, step: int, total: int) -> float:
        """Cosine from ``lr`` (first step) to ``eta_min`` (last step)."""
        if total <= 1:
            return self.lr
        progress = step / (total - 1)
        return self.eta_min + (self.lr - self.eta_min) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    """What one call did; ``metrics()`` is the flat dict a client reports."""

    loss: float  # mean over steps of policy_loss + fedprox_loss
    policy_loss: float  # mean flow-matching loss
    fedprox_loss: float  # mean (mu/2)*||w - w_global||^2
    grad_norm: float  # mean global gradient norm before clipping
    steps: int
    samples: int  # training samples seen (sum of batch sizes): the aggregation weight
    seconds: float
    lr_first: float
    lr_last: float
    update_norm: float  # ||w_end - w_start|| over the trainable parameters
    gpu_memory_mib: float | None = None  # CUDA only: memory allocated to tensors after the round (a leak grows it)
    gpu_reserved_mib: float | None = None  # CUDA only: what torch's caching allocator holds from the driver then
    gpu_peak_mib: float | None = None  # CUDA only: the round's peak allocation

    def metrics(self) -> dict[str, float | int]:
        """As a client reports it, federated or centralized: the round's first lr is ``lr``."""
        reported = dataclasses.asdict(self)
        return {("lr" if name == "lr_first" else name): v for name, v in reported.items() if v is not None}


def train(
    built: BuiltPolicy,
    dataset: LeRobotDataset,
    config: TrainConfig,
    *,
    global_params: Mapping[str, torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the trainable parameters of ``built.policy`` in place on ``dataset``.

    ``dataset`` must return action chunks: open it with ``built.delta_timestamps(meta)``.
    ``global_params`` anchors the FedProx term; by default the weights at the start of the call
    (which are the global weights once the client has loaded them).
    """
    import torch

    started = time.perf_counter()
    _check_dataset(built, dataset)
    policy = built.policy
    named = trainable_parameters(policy)
    params = [param for _, param in named]
    start = [param.detach().clone() for param in params]
    anchor = start if global_params is None else _anchor(named, global_params)
    optimizer = _optimizer(built, config, params)
    loader = make_loader(built, dataset, config.batch_size, seed=config.seed, num_workers=config.num_workers)
    total = config.epochs * len(loader) if config.epochs else config.steps
    sums = {"policy_loss": 0.0, "fedprox_loss": 0.0, "grad_norm": 0.0}
    samples = 0
    lrs = [config.lr_at(step, total) for step in range(total)]

    cuda = built.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(built.device)
    policy.train()
    with _seeded(config.seed, built.device):
        # Not strict: the loader's passes end before ``total`` only when epochs bound the run.
        for step, raw in zip(range(total), _passes(loader, config.epochs), strict=False):
            for group in optimizer.param_groups:
                group["lr"] = lrs[step]
            samples += len(raw[ACTION])
            batch = prepare_batch(built, raw, dataset.meta.camera_keys)
            with built.autocast():
                policy_loss, _ = policy.forward(batch)
            policy_loss.backward()
            fedprox_loss = add_proximal_gradient(params, anchor, config.proximal_mu)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_values = {
                "policy_loss": policy_loss.item(),
                "fedprox_loss": fedprox_loss,
                "grad_norm": grad_norm.item(),
            }
            for key, value in step_values.items():
                sums[key] += value
            if progress is not None:
                progress(step + 1, total, step_values["policy_loss"] + fedprox_loss)

    means = {key: value / total for key, value in sums.items()}
    return TrainResult(
        loss=means["policy_loss"] + means["fedprox_loss"],
        policy_loss=means["policy_loss"],
        fedprox_loss=means["fedprox_loss"],
        grad_norm=means["grad_norm"],
        steps=total,
        samples=samples,
        seconds=time.perf_counter() - started,
        lr_first=lrs[0],
        lr_last=lrs[-1],
        update_norm=_distance(params, start),
        gpu_memory_mib=torch.cuda.memory_allocated(built.device) / 2**20 if cuda else None,
        gpu_reserved_mib=torch.cuda.memory_reserved(built.device) / 2**20 if cuda else None,
        gpu_peak_mib=torch.cuda.max_memory_allocated(built.device) / 2**20 if cuda else None,
    )


def add_proximal_gradient(params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], mu: float) -> float:
    """FedProx: add the gradient of (mu/2)*||w - w_global||^2, mu*(w - w_global), to each
    parameter's gradient and return the term's value.

    The same as back-propagating the term, without an autograd graph over ~100M weights.
    """
    import torch

    if mu == 0:
        return 0.0
    squares = []
    with torch.no_grad():
        for param, ref in zip(params, anchor, strict=True):
            difference = param - ref
            squares.append(difference.pow(2).sum())
            if param.grad is None:
                param.grad = mu * difference
            else:
                param.grad.add_(difference, alpha=mu)
    return 0.5 * mu * float(torch.stack(squares).sum())


def evaluate(
    built: BuiltPolicy,
    dataset: LeRobotDataset,
    *,
    seed: int = 0,
    max_batches: int | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
) -> dict[str, float | int]:
    """Deterministic policy loss and action error on ``dataset`` (same weights + seed, same numbers).

    - ``policy_loss``: flow-matching loss with fixed noise and time, mean over samples;
    - ``action_mae``: mean |select_action - recorded action| in the dataset's units
      (``action_mae.<joint>`` per action dimension); ``samples``: frames evaluated.
    ``max_batches`` bounds the cost; the frames are then a fixed random subset (by ``seed``).
    """
    import torch

    _check_dataset(built, dataset)
    policy = built.policy
    names = action_names(dataset)
    loader = make_loader(built, dataset, batch_size, seed=seed, num_workers=num_workers)
    generator = torch.Generator().manual_seed(seed)
    loss_sum, error_sum, count = 0.0, torch.zeros(len(names), dtype=torch.float64), 0
    policy.eval()
    try:
        with torch.no_grad():
            for index, raw in enumerate(loader):
                if max_batches is not None and index >= max_batches:
                    break
                recorded = raw[ACTION][:, 0].to(torch.float64)
                batch = prepare_batch(built, raw, dataset.meta.camera_keys)
                noise, flow_time = _flow_inputs(len(recorded), built, generator)
                with built.autocast():
                    losses, _ = policy.forward(batch, noise=noise, time=flow_time, reduction="none")
                predicted = _first_actions(built, batch, _flow_inputs(len(recorded), built, generator)[0])
                loss_sum += float(losses.double().sum())
                error_sum += (predicted - recorded).abs().sum(dim=0)
                count += len(recorded)
    finally:
        policy.reset()
        policy.train()
    if count == 0:
        raise bad_input("nothing to evaluate: the dataset has no frames", hint="evaluate on a dataset with episodes")
    per_joint = error_sum / count
    metrics: dict[str, float | int] = {
        "policy_loss": loss_sum / count,
        "action_mae": float(per_joint.mean()),
        "samples": count,
    }
    metrics.update({f"action_mae.{name}": float(value) for name, value in zip(names, per_joint, strict=True)})
    return metrics


@dataclass
class EpisodeActions:
    """Predicted next to recorded actions for every frame of one episode (dataset units)."""

    episode_index: int
    frame_indices: list[int]  # positions in the dataset: dataset[i] is the frame (cameras included)
    predicted: np.ndarray  # (frames, action_dim)
    recorded: np.ndarray  # (frames, action_dim)
    action_names: list[str]
    fps: int

    @property
    def action_mae(self) -> float:
        return float(abs(self.predicted - self.recorded).mean())


def predict_episode(
    built: BuiltPolicy,
    dataset: LeRobotDataset,
    episode_index: int,
    *,
    seed: int = 0,
    max_frames: int | None = None,
) -> EpisodeActions:
    """Run ``select_action`` through one episode as on the robot: a new chunk every
    ``n_action_steps`` frames, from that frame's observation. Deterministic given ``seed``."""
    import numpy as np
    import torch
    from torch.utils.data import default_collate

    _check_dataset(built, dataset)
    positions = episode_positions(dataset, episode_index)[:max_frames]
    if not positions:
        raise bad_input(
            f"episode {episode_index} is not in this dataset",
            hint=f"choose one of its episodes: {sorted(set(_episode_column(dataset)))[:10]}",
        )
    policy = built.policy
    generator = torch.Generator().manual_seed(seed)
    predicted, recorded = [], []
    policy.reset()
    policy.eval()
    try:
        with torch.no_grad():
            for position in positions:
                raw = default_collate([dataset[position]])
                recorded.append(raw[ACTION][0, 0].numpy())
                batch = prepare_batch(built, raw, dataset.meta.camera_keys)
                noise, _ = _flow_inputs(1, built, generator)
                with built.autocast():
                    action = policy.select_action(batch, noise=noise)
                predicted.append(built.postprocessor(action)[0].float().numpy())
    finally:
        policy.reset()
        policy.train()
    return EpisodeActions(
        episode_index=episode_index,
        frame_indices=positions,
        predicted=np.stack(predicted),
        recorded=np.stack(recorded),
        action_names=action_names(dataset),
        fps=int(dataset.meta.fps),
    )


def action_names(dataset: LeRobotDataset) -> list[str]:
    feature = dataset.meta.features[ACTION]
    names = feature.get("names")
    if isinstance(names, dict):  # some datasets nest them: {"motors": [...]}
        names = next(iter(names.values()), None)
    size = int(feature["shape"][0])
    return list(names) if names and len(names) == size else [f"joint_{index}" for index in range(size)]


def episode_positions(dataset: LeRobotDataset, episode_index: int) -> list[int]:
    """Positions in ``dataset`` (which may hold a subset of episodes) of one episode's frames."""
    return [position for position, episode in enumerate(_episode_column(dataset)) if episode == episode_index]


def _episode_column(dataset: LeRobotDataset) -> list[int]:
    return [int(value) for value in dataset.hf_dataset.with_format(None)["episode_index"]]


def _first_actions(built: BuiltPolicy, batch: dict, noise: torch.Tensor) -> torch.Tensor:
    """What ``select_action`` returns for each sample of a fresh episode, in dataset units."""
    import torch

    built.policy.reset()
    with built.autocast():
        action = built.policy.select_action(batch, noise=noise)
    built.policy.reset()
    return built.postprocessor(action).to(torch.float64)


def _flow_inputs(size: int, built: BuiltPolicy, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and time for the flow-matching loss, drawn like SmolVLA does but from ``generator``."""
    import torch

    config = built.config
    noise = torch.randn(size, config.chunk_size, config.max_action_dim, generator=generator)
    # Beta(a, 1) by inverse CDF: u ** (1 / a); the same distribution as sample_time_beta.
    flow_time = torch.rand(size, generator=generator).pow(1 / TIME_BETA_ALPHA) * TIME_SCALE + TIME_OFFSET
    return noise.to(built.device), flow_time.to(built.device)


def _check_dataset(built: BuiltPolicy, dataset: LeRobotDataset) -> None:
    chunk = len((getattr(dataset, "delta_timestamps", None) or {}).get(ACTION, []))
    if chunk != built.config.chunk_size:
        raise bad_input(
            f"the dataset returns {chunk or 1} action(s) per frame; "
            f"the policy needs chunks of {built.config.chunk_size}",
            hint="open the dataset with delta_timestamps=built.delta_timestamps(meta)",
        )
    if len(dataset) == 0:
        raise bad_input("the dataset has no frames", hint="choose a dataset (or episodes) with recorded frames")


def _optimizer(built: BuiltPolicy, config: TrainConfig, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    """SmolVLA's optimizer preset (AdamW) with this call's settings."""
    preset = built.config.get_optimizer_preset()
    preset = dataclasses.replace(
        preset,
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
        grad_clip_norm=config.grad_clip,
    )
    return preset.build(params)


def make_loader(built: BuiltPolicy, dataset, batch_size: int, *, seed: int, num_workers: int = 0):
    """LeRobot's training data path (as lerobot-train builds it): an EpisodeAwareSampler whose
    order is a pure function of (seed, epoch), reshuffled each pass, and LeRobot's collate."""
    import torch
    from lerobot.datasets import EpisodeAwareSampler
    from lerobot.utils.collate import lerobot_collate_fn

    sampler = EpisodeAwareSampler(
        dataset.meta.episodes["dataset_from_index"],
        dataset.meta.episodes["dataset_to_index"],
        episode_indices_to_use=dataset.episodes,
        shuffle=True,
        seed=seed,
        absolute_to_relative_idx=dataset.absolute_to_relative_idx,
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=built.device.type == "cuda",
        drop_last=False,
        collate_fn=lerobot_collate_fn if dataset.meta.has_language_columns else None,
    )


def prepare_batch(built: BuiltPolicy, raw: dict, camera_keys: list[str]) -> dict:
    """lerobot-train's per-batch step: uint8 camera frames to [0, 1] floats, then the preprocessor."""
    import torch

    for key in camera_keys:
        if key in raw and raw[key].dtype == torch.uint8:
            raw[key] = raw[key].to(dtype=torch.float32) / 255.0
    return built.preprocessor(raw)


def _passes(loader, epochs: int | None) -> Iterator[dict]:
    """``epochs`` passes over the loader, or endless passes (reshuffled each time) if None."""
    completed = 0
    while epochs is None or completed < epochs:
        yield from loader
        completed += 1


def _anchor(named: Sequence[tuple[str, torch.Tensor]], global_params: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    import torch

    check_matches(named, global_params)
    return [torch.as_tensor(global_params[name]).to(device=param.device, dtype=param.dtype) for name, param in named]


def _distance(params: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> float:
    import torch

    with torch.no_grad():
        squares = [(param - ref).pow(2).sum() for param, ref in zip(params, reference, strict=True)]
        return math.sqrt(float(torch.stack(squares).sum()))


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch (CPU and the training GPU) for the block; the caller's RNG state is restored."""
    import torch

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
