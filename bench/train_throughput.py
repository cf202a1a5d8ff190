"""Training steps/s of zk0's local loop against LeRobot's own `update_policy`, in one run.

    .venv/bin/python bench/train_throughput.py [--steps 30] [--batch-size 8] [--repeats 3]
                                               [--threads 1] [--real-geometry]
                                               [--video --image-size 480x640 --cameras front,wrist]
                                               [--policy real-geometry --device cuda --json OUT]

Both loops train the real SmolVLAPolicy (tiny offline backbone by default) on the same generated
dataset, with the same config (SmolVLA's AdamW preset, grad clip 10) and seed, from identical
initial weights. The baseline is lerobot-train's own path: EpisodeAwareSampler DataLoader,
preprocessor, then `lerobot.scripts.lerobot_train.update_policy` under an Accelerator. After a
warm-up the loops run in adjacent pairs, the order flipping each pair, so a busy moment on a
shared CPU hits both alike; the ratio is the median of the pairs' zk0/lerobot ratios. Prints
both median rates and that ratio (target >= 0.95; exit 1 if missed), then trainable vs total
parameter counts (and the SmolVLM2-500M geometry's with --real-geometry, which builds that
450M-parameter policy on CPU: ~2 GB RAM, no training).

With --video the dataset's cameras are AV1 video written by LeRobot's encoder (at --image-size,
one stream per camera of --cameras), decoded by LeRobot's pyav backend in both loops: the
camera-size case. Every run also prints where a step's time goes, measured on its own pass:
loading (decode + LeRobot's dataset transforms), the preprocessor (normalise, resize and pad to
SmolVLA's image size, tokenise), and the forward/backward/optimizer step.

--policy real-geometry trains SmolVLM2-500M's geometry (450M parameters, random weights) in both
loops: the GPU check (bench/gpu_check.sh). On CUDA each run's peak memory is measured too
(torch.cuda.max_memory_allocated), with the target zk0/lerobot <= 1.05. --json writes the result.
"""

from __future__ import annotations

import argparse
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


def zk0_loop(built, dataset, steps: int, batch_size: int, seed: int) -> float:
    """Seconds for `steps` steps of zk0's loop (data loading included, as in the baseline)."""
    from zk0cli.policy.train import TrainConfig, train

    started = time.perf_counter()
    train(built, dataset, TrainConfig(steps=steps, batch_size=batch_size, seed=seed))
    return time.perf_counter() - started


def lerobot_loop(built, dataset, steps: int, batch_size: int, seed: int) -> float:
    """Seconds for `steps` steps of lerobot-train's loop around its `update_policy`."""
    from itertools import cycle

    import torch
    from accelerate import Accelerator
    from lerobot.scripts.lerobot_train import update_policy
    from lerobot.utils.logging_utils import AverageMeter, MetricsTracker
    from lerobot.utils.random_utils import set_seed

    from zk0cli.policy.train import make_loader

    started = time.perf_counter()
    policy, config = built.policy, built.config
    mixed_precision = "bf16" if built.autocast_dtype == torch.bfloat16 else "no"
    accelerator = Accelerator(
        step_scheduler_with_optimizer=False, mixed_precision=mixed_precision, cpu=built.device.type == "cpu"
    )
    set_seed(seed, accelerator=accelerator)
    optimizer = config.get_optimizer_preset().build(policy.get_optim_params())
    scheduler = config.get_scheduler_preset().build(optimizer, num_training_steps=steps)
    loader = make_loader(built, dataset, batch_size, seed=seed)  # the same DataLoader lerobot-train makes
    policy, optimizer, loader, scheduler = accelerator.prepare(policy, optimizer, loader, scheduler)
    meters = {name: AverageMeter(name, ":.3f") for name in ("loss", "grad_norm", "lr", "update_s", "dataloading_s")}
    tracker = MetricsTracker(batch_size, dataset.num_frames, dataset.num_episodes, meters, accelerator=accelerator)
    batches = cycle(loader)
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
    return time.perf_counter() - started


def breakdown(built, dataset, steps: int, batch_size: int) -> dict[str, float]:
    """Seconds per step in loading, preprocessing and the update, each measured over ``steps``."""
    from itertools import cycle

    import torch

    from zk0cli.policy.train import make_loader

    policy, config = built.policy, built.config
    optimizer = config.get_optimizer_preset().build(policy.get_optim_params())
    batches = cycle(make_loader(built, dataset, batch_size, seed=0))
    spent = {"loading": 0.0, "preprocessor": 0.0, "forward/backward/step": 0.0}
    policy.train()
    for _ in range(steps):
        started = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        batch = built.preprocessor(batch)
        processed = time.perf_counter()
        with built.autocast():
            loss, _ = policy.forward(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), config.optimizer_grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad()
        spent["loading"] += loaded - started
        spent["preprocessor"] += processed - loaded
        spent["forward/backward/step"] += time.perf_counter() - processed
    return {name: value / steps for name, value in spent.items()}


def parameter_counts(policy) -> tuple[int, int]:
    from zk0cli.policy.trainable import get_trainable

    trainable = sum(tensor.numel() for tensor in get_trainable(policy).values())
    return trainable, sum(param.numel() for param in policy.parameters())


def print_counts(label: str, trainable: int, total: int) -> None:
    print(
        f"{label:22} trainable {trainable:>13,} of {total:>13,} ({trainable / total:6.1%}); "
        f"on the wire fp32 {trainable * 4 / 2**20:8.1f} MiB, bf16 {trainable * 2 / 2**20:8.1f} MiB; "
        f"full fp32 state {total * 4 / 2**20:8.1f} MiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed run")
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

    with tempfile.TemporaryDirectory() as scratch:
        os.environ.update(
            HF_HUB_OFFLINE="1",
            HF_HOME=f"{scratch}/hf",
            HF_LEROBOT_HOME=f"{scratch}/hf/lerobot",
            ZK0_HOME=f"{scratch}/zk0",
        )
        import torch
        from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

        from zk0cli.datasets.sample import parse_cameras, parse_image_size, write_sample
        from zk0cli.policy.build import PolicySpec, build_policy

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
        # Same init seed: both policies start from identical weights.
        built = {name: build_policy(spec, meta) for name in loops}
        deltas = built["zk0"].delta_timestamps(meta)
        dataset = LeRobotDataset("local/pick", root=root, delta_timestamps=deltas, video_backend="pyav")
        device = built["zk0"].device
        media = f"{'video' if args.video else 'image'} {shape[0]}x{shape[1]} x {len(cameras)} camera(s)"
        print(
            f"device {device}, torch threads {torch.get_num_threads()}, {len(dataset)} frames ({media}), "
            f"batch {args.batch_size}, {args.steps} steps x {args.repeats} pairs of runs"
        )

        for name, loop in loops.items():  # warm-up: caches, allocator, lazy imports
            loop(built[name], dataset, 3, args.batch_size, seed=0)
        seconds: dict[str, list[float]] = {name: [] for name in loops}
        peaks: dict[str, list[float]] = {name: [] for name in loops}
        cuda = device.type == "cuda"
        for repeat in range(args.repeats):
            order = list(loops) if repeat % 2 == 0 else list(reversed(loops))
            for name in order:
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                seconds[name].append(loops[name](built[name], dataset, args.steps, args.batch_size, seed=repeat))
                if cuda:
                    peaks[name].append(torch.cuda.max_memory_allocated(device) / 2**20)
        for name, values in seconds.items():
            runs = ", ".join(f"{args.steps / value:.2f}" for value in values)
            print(f"{name:8} median {args.steps / statistics.median(values):7.2f} steps/s  (runs: {runs})")
        ratio = statistics.median(
            lerobot / zk0 for zk0, lerobot in zip(seconds["zk0"], seconds["lerobot"], strict=True)
        )
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        print(f"ratio zk0/lerobot (median of pairs): {ratio:.3f} (target >= {TARGET_RATIO}: {verdict})")
        result = {
            "policy": args.policy,
            "device": str(device),
            "steps_per_s": {name: args.steps / statistics.median(values) for name, values in seconds.items()},
            "ratio": ratio,
            "ratio_met": ratio >= TARGET_RATIO,
        }
        memory_ok = True
        if cuda:
            memory = statistics.median(peaks["zk0"]) / statistics.median(peaks["lerobot"])
            memory_ok = memory <= TARGET_MEMORY_RATIO
            result.update(peak_mib={n: statistics.median(v) for n, v in peaks.items()}, memory_ratio=memory)
            print(
                f"peak CUDA memory: zk0 {result['peak_mib']['zk0']:.0f} MiB, lerobot "
                f"{result['peak_mib']['lerobot']:.0f} MiB, ratio {memory:.3f} (target <= {TARGET_MEMORY_RATIO})"
            )
        parts = breakdown(built["zk0"], dataset, args.steps, args.batch_size)
        result["step_breakdown_s"] = parts
        total = sum(parts.values())
        print(
            "where a step's time goes: "
            + ", ".join(f"{k} {v * 1e3:.0f} ms ({v / total:.0%})" for k, v in parts.items())
        )

        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        print_counts(args.policy, *parameter_counts(built["zk0"].policy))
        if args.real_geometry and not real:
            started = time.perf_counter()
            real = build_policy(PolicySpec(real_geometry=True, device="cpu"), meta)
            print_counts("SmolVLM2-500M geometry", *parameter_counts(real.policy))
            print(f"(real-geometry policy built on CPU in {time.perf_counter() - started:.0f} s)")
    return 0 if ratio >= TARGET_RATIO and memory_ok else 1


if __name__ == "__main__":
    sys.exit(main())
