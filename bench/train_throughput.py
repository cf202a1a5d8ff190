"""Training steps/s of zk0's local loop against LeRobot's own training path, in one run.

    .venv/bin/python bench/train_throughput.py [--steps 30] [--batch-size 8] [--repeats 6]
                                               [--threads 1] [--real-geometry]
                                               [--video --image-size 480x640 --cameras front,wrist]
                                               [--policy real-geometry --device cuda --json OUT]

`--video --image-size 480x640 --cameras front,wrist` is the camera-size video bench (what the
issue called video_train_throughput): two 480x640 cameras stored as AV1 video written by LeRobot's
encoder, decoded by LeRobot's pyav backend in both loops.

Both loops train the real SmolVLAPolicy (tiny offline backbone by default) on the same generated
dataset, from identical initial weights, with the same batch size, decoder, worker count (0),
optimizer preset (SmolVLA's AdamW, grad clip 10) and seed in each pair of runs:
- zk0: the dataset as zk0 opens it (`zk0cli.datasets.uri.open_dataset`) and the loop every node
  runs (`zk0cli.policy.train.train`);
- LeRobot: what lerobot-train does: the dataset from LeRobot's own factory
  (`lerobot.datasets.factory.make_dataset`, which asks for uint8 video frames), the
  EpisodeAwareSampler DataLoader as `lerobot_train` builds it, LeRobot's `cycle`, uint8 frames to
  [0, 1] floats, the preprocessor, then `update_policy` under an Accelerator (the policy prepared
  once, as lerobot-train prepares it once; a fresh Accelerator, optimizer and scheduler per run).
Each run's clock covers its steps 2..N (set-up and the first step are left out of both), read
after a CUDA synchronize. After a warm-up the loops run in adjacent pairs, the order flipping each
pair, so a busy moment on a shared CPU hits both alike; the ratio is the median of the pairs'
zk0/lerobot ratios (target >= 0.95; exit 1 if missed). Then trainable vs total parameter counts
(and the SmolVLM2-500M geometry's with --real-geometry, which builds that 450M-parameter policy
on CPU: ~2 GB RAM, no training).

Where a step's time goes is measured on a pass of its own per data path (zk0's dataset and
LeRobot's), each clock read after a CUDA synchronize: decode + collate (the DataLoader: LeRobot's
video decoding and dataset transforms), to float + preprocessor (uint8 frames to [0, 1],
normalise, tokenise, to the device), forward/backward/step (SmolVLAPolicy.prepare_images resizes
and pads each camera to SmolVLA's image size inside forward; then the flow-matching loss, backward,
clip, AdamW).

--policy real-geometry trains SmolVLM2-500M's geometry (450M parameters, random weights) in both
loops: the GPU check (bench/gpu_check.sh). On CUDA each run's peak memory is measured like for
like: only the policy being trained is on the GPU (the other waits on the CPU); LeRobot's
update_policy resets the peak statistics at the start of every step, so both loops are read (and
reset) after every step; a run's peak is its largest step peak above what was allocated before
the run (the policy alone). Target zk0/lerobot <= 1.05. --json writes the result.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 0.95
TARGET_MEMORY_RATIO = 1.05
CHUNK = 10  # the tiny setup's action chunk: 60-frame episodes
MIB = 2**20


class StepClock:
    """Called at the end of every step by both loops: the time, and on CUDA the step's peak memory
    (the peak statistics are reset after each read, as update_policy resets them)."""

    def __init__(self, device):
        import torch

        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize(device)
            gc.collect()
            torch.cuda.empty_cache()
            self.base = torch.cuda.memory_allocated(device)  # the policy (and nothing else of a run)
            torch.cuda.reset_peak_memory_stats(device)
        self.times: list[float] = []
        self.peaks: list[int] = []

    def __call__(self, *_progress: object) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peaks.append(torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
        self.times.append(time.perf_counter())

    def seconds(self) -> float:
        """Steps 2..N: set-up and the first step left out."""
        return self.times[-1] - self.times[0]

    def peak_mib(self) -> float | None:
        return (max(self.peaks) - self.base) / MIB if self.cuda else None


def zk0_loop(built, dataset, steps: int, batch_size: int, seed: int) -> StepClock:
    """zk0's loop, as a node runs it."""
    from zk0cli.policy.train import TrainConfig, train

    clock = StepClock(built.device)
    train(built, dataset, TrainConfig(steps=steps, batch_size=batch_size, seed=seed), progress=clock)
    return clock


def lerobot_dataset(built, root: Path):
    """The dataset as lerobot-train opens it: LeRobot's factory (return_uint8=True), pyav."""
    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.datasets.factory import make_dataset

    settings = TrainPipelineConfig(
        dataset=DatasetConfig(repo_id="local/pick", root=str(root), video_backend="pyav"),
        policy=built.config,
        num_workers=0,
    )
    return make_dataset(settings)


def lerobot_loader(built, dataset, batch_size: int, seed: int):
    """The DataLoader lerobot_train builds for a map-style dataset (num_workers 0, like zk0's)."""
    import torch
    from lerobot.datasets import EpisodeAwareSampler
    from lerobot.utils.collate import lerobot_collate_fn

    sampler = EpisodeAwareSampler(
        dataset.meta.episodes["dataset_from_index"],
        dataset.meta.episodes["dataset_to_index"],
        episode_indices_to_use=dataset.episodes,
        drop_n_last_frames=getattr(built.config, "drop_n_last_frames", 0),
        shuffle=True,
        seed=seed,
        absolute_to_relative_idx=dataset.absolute_to_relative_idx,
    )
    return torch.utils.data.DataLoader(
        dataset,
        num_workers=0,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        pin_memory=built.device.type == "cuda",
        drop_last=False,
        collate_fn=lerobot_collate_fn if dataset.meta.has_language_columns else None,
    )


def accelerator_for(built):
    from accelerate import Accelerator

    mixed_precision = "bf16" if built.autocast_dtype is not None else "no"
    return Accelerator(
        step_scheduler_with_optimizer=False, mixed_precision=mixed_precision, cpu=built.device.type == "cpu"
    )


def lerobot_loop(built, dataset, steps: int, batch_size: int, seed: int) -> StepClock:
    """lerobot-train's loop around its `update_policy` (the policy was prepared once before)."""
    import torch
    from lerobot.scripts.lerobot_train import update_policy
    from lerobot.utils.logging_utils import AverageMeter, MetricsTracker
    from lerobot.utils.random_utils import set_seed
    from lerobot.utils.utils import cycle

    policy, config = built.policy, built.config
    accelerator = accelerator_for(built)
    set_seed(seed, accelerator=accelerator)
    optimizer = config.get_optimizer_preset().build(policy.get_optim_params())
    scheduler = config.get_scheduler_preset().build(optimizer, num_training_steps=steps)
    loader = lerobot_loader(built, dataset, batch_size, seed)
    optimizer, loader, scheduler = accelerator.prepare(optimizer, loader, scheduler)
    meters = {  # lerobot_train's own set: update_policy writes gpu_mem_gb on CUDA and fails without its meter
        "loss": AverageMeter("loss", ":.3f", reduction="mean"),
        "grad_norm": AverageMeter("grdn", ":.3f"),
        "lr": AverageMeter("lr", ":0.1e"),
        "update_s": AverageMeter("updt_s", ":.3f", reduction="max"),
        "dataloading_s": AverageMeter("data_s", ":.3f", reduction="max"),
        "samples_per_s": AverageMeter("smp/s", ":.0f"),
    }
    if torch.cuda.is_available():
        meters["gpu_mem_gb"] = AverageMeter("mem_gb", ":.2f", reduction="max")
    tracker = MetricsTracker(batch_size, dataset.num_frames, dataset.num_episodes, meters, accelerator=accelerator)
    batches = cycle(loader)
    clock = StepClock(built.device)
    policy.train()
    for _ in range(steps):
        batch = next(batches)
        for key in dataset.meta.camera_keys:
            if key in batch and batch[key].dtype == torch.uint8:
                batch[key] = batch[key].to(dtype=torch.float32) / 255.0
        batch = built.preprocessor(batch)
        tracker, _ = update_policy(
            tracker,
            policy,
            batch,
            optimizer,
            config.optimizer_grad_clip_norm,
            accelerator=accelerator,
            lr_scheduler=scheduler,
        )
        tracker.step()
        clock()
    del optimizer, scheduler, loader, batches, accelerator
    return clock


def breakdown(built, loader, camera_keys: list[str], steps: int) -> dict[str, float]:
    """Seconds per step in each part, on ``loader``'s data path, with zk0's policy."""
    import torch
    from lerobot.utils.utils import cycle

    from zk0cli.policy.train import prepare_batch

    def now() -> float:
        if built.device.type == "cuda":
            torch.cuda.synchronize(built.device)
        return time.perf_counter()

    policy, config = built.policy, built.config
    optimizer = config.get_optimizer_preset().build(policy.get_optim_params())
    batches = cycle(loader)
    parts = ("decode + collate", "to float + preprocessor", "forward/backward/step")
    spent = dict.fromkeys(parts, 0.0)
    policy.train()
    for _ in range(steps):
        started = now()
        raw = next(batches)
        loaded = now()
        batch = prepare_batch(built, raw, camera_keys)
        processed = now()
        with built.autocast():
            loss, _ = policy.forward(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), config.optimizer_grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad()
        done = now()
        for part, seconds in zip(parts, (loaded - started, processed - loaded, done - processed), strict=True):
            spent[part] += seconds
    return {part: value / steps for part, value in spent.items()}


def parameter_counts(policy) -> tuple[int, int]:
    from zk0cli.policy.trainable import get_trainable

    trainable = sum(tensor.numel() for tensor in get_trainable(policy).values())
    return trainable, sum(param.numel() for param in policy.parameters())


def print_counts(label: str, trainable: int, total: int) -> None:
    print(
        f"{label:22} trainable {trainable:>13,} of {total:>13,} ({trainable / total:6.1%}); "
        f"on the wire fp32 {trainable * 4 / MIB:8.1f} MiB, bf16 {trainable * 2 / MIB:8.1f} MiB; "
        f"full fp32 state {total * 4 / MIB:8.1f} MiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed run (timed: 2..N)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6, help="timed pairs of runs (one run of each loop)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--real-geometry", action="store_true", help="also count SmolVLM2-500M-geometry parameters")
    parser.add_argument("--video", action="store_true", help="cameras as AV1 video (LeRobot's encoder and decoder)")
    parser.add_argument("--image-size", default="64", help="camera frame size, HxW (e.g. 480x640) or one side")
    parser.add_argument("--cameras", default="front", help="comma-separated: front, wrist")
    parser.add_argument("--policy", choices=("tiny", "real-geometry"), default="tiny", help="what both loops train")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3 (the clock covers steps 2..N)")

    with tempfile.TemporaryDirectory() as scratch:
        os.environ.update(
            HF_HUB_OFFLINE="1",
            HF_HOME=f"{scratch}/hf",
            HF_LEROBOT_HOME=f"{scratch}/hf/lerobot",
            ZK0_HOME=f"{scratch}/zk0",
        )
        import torch
        from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

        from zk0cli.datasets.sample import parse_cameras, parse_image_size, write_sample
        from zk0cli.datasets.uri import open_dataset, parse_uri
        from zk0cli.policy.build import PolicySpec, build_policy
        from zk0cli.policy.train import make_loader

        torch.set_num_threads(args.threads)
        shape, cameras = parse_image_size(args.image_size), parse_cameras(args.cameras)
        root = write_sample(
            Path(scratch) / "pick",
            task="pick",
            episodes=4,
            frames_per_episode=60,
            image_size=shape,
            cameras=cameras,
            video=args.video,
            seed=0,
        )
        meta = LeRobotDatasetMetadata("local/pick", root=root)
        real = args.policy == "real-geometry"
        spec = PolicySpec(tiny=not real, real_geometry=real, chunk_size=CHUNK, device=args.device)
        loops = {"zk0": zk0_loop, "lerobot": lerobot_loop}
        built = {name: build_policy(spec, meta) for name in loops}  # same init seed: identical weights
        device = built["zk0"].device
        built["lerobot"].policy = accelerator_for(built["lerobot"]).prepare_model(built["lerobot"].policy)
        datasets = {
            "zk0": open_dataset(parse_uri(f"local:{root}"), delta_timestamps=built["zk0"].delta_timestamps(meta)),
            "lerobot": lerobot_dataset(built["lerobot"], root),
        }

        def run(name: str, steps: int, seed: int) -> StepClock:
            """One run with only ``name``'s policy on the device."""
            for other in loops:
                built[other].policy.to(device if other == name else "cpu")
            return loops[name](built[name], datasets[name], steps, args.batch_size, seed)

        media = f"{'video' if args.video else 'image'} {shape[0]}x{shape[1]} x {len(cameras)} camera(s)"
        frames = {name: str(dataset[0][meta.camera_keys[0]].dtype) for name, dataset in datasets.items()}
        print(
            f"device {device}, torch threads {torch.get_num_threads()}, {len(datasets['zk0'])} frames ({media}), "
            f"batch {args.batch_size}, {args.steps} steps (timed 2..{args.steps}) x {args.repeats} pairs of runs; "
            f"camera frames as read: zk0 {frames['zk0']}, lerobot {frames['lerobot']}"
        )

        for name in loops:  # warm-up: caches, allocator, lazy imports
            run(name, 3, seed=0)
        clocks: dict[str, list[StepClock]] = {name: [] for name in loops}
        for repeat in range(args.repeats):
            order = list(loops) if repeat % 2 == 0 else list(reversed(loops))
            for name in order:
                clocks[name].append(run(name, args.steps, seed=repeat))
        timed = args.steps - 1
        seconds = {name: [clock.seconds() for clock in values] for name, values in clocks.items()}
        for name, values in seconds.items():
            runs = ", ".join(f"{timed / value:.2f}" for value in values)
            print(f"{name:8} median {timed / statistics.median(values):7.2f} steps/s  (runs: {runs})")
        ratio = statistics.median(
            lerobot / zk0 for zk0, lerobot in zip(seconds["zk0"], seconds["lerobot"], strict=True)
        )
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        print(f"ratio zk0/lerobot (median of pairs): {ratio:.3f} (target >= {TARGET_RATIO}: {verdict})")
        result: dict[str, object] = {
            "policy": args.policy,
            "device": str(device),
            "steps": args.steps,
            "timed_steps": timed,
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "camera_frames_as_read": frames,
            "steps_per_s": {name: timed / statistics.median(values) for name, values in seconds.items()},
            "ratio": ratio,
            "ratio_met": ratio >= TARGET_RATIO,
        }
        memory_ok = True
        if device.type == "cuda":
            peak = {
                name: statistics.median(clock.peak_mib() or 0.0 for clock in values) for name, values in clocks.items()
            }
            base = {name: clocks[name][-1].base / MIB for name in loops}
            memory = peak["zk0"] / peak["lerobot"]
            memory_ok = memory <= TARGET_MEMORY_RATIO
            result.update(peak_above_base_mib=peak, base_mib=base, memory_ratio=memory, memory_met=memory_ok)
            print(
                f"peak CUDA memory above the policy's own ({base['zk0']:.0f} MiB): zk0 {peak['zk0']:.0f} MiB, "
                f"lerobot {peak['lerobot']:.0f} MiB, ratio {memory:.3f} (target <= {TARGET_MEMORY_RATIO})"
            )
        for name in loops:  # the breakdown trains zk0's policy: put it back on the device
            built[name].policy.to(device if name == "zk0" else "cpu")
        loaders = {
            "zk0": make_loader(built["zk0"], datasets["zk0"], args.batch_size, seed=0),
            "lerobot": lerobot_loader(built["zk0"], datasets["lerobot"], args.batch_size, seed=0),
        }
        breakdowns = {
            name: breakdown(built["zk0"], loader, meta.camera_keys, args.steps) for name, loader in loaders.items()
        }
        result["step_breakdown_s"] = breakdowns
        for name, parts in breakdowns.items():
            total = sum(parts.values())
            print(
                f"where a step's time goes ({name} data): "
                + ", ".join(f"{k} {v * 1e3:.0f} ms ({v / total:.0%})" for k, v in parts.items())
            )

        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        print_counts(args.policy, *parameter_counts(built["zk0"].policy))
        if args.real_geometry and not real:
            started = time.perf_counter()
            geometry = build_policy(PolicySpec(real_geometry=True, device="cpu"), meta)
            print_counts("SmolVLM2-500M geometry", *parameter_counts(geometry.policy))
            print(f"(real-geometry policy built on CPU in {time.perf_counter() - started:.0f} s)")
    return 0 if ratio >= TARGET_RATIO and memory_ok else 1


if __name__ == "__main__":
    sys.exit(main())
