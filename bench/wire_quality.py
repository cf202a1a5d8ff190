"""Does a smaller wire cost learning? The same federation in each wire encoding, paired by seed.

    .venv/bin/python bench/wire_quality.py [--clients 3] [--rounds 4] [--local-steps 20] [--seeds 3]
        [--set KEY=VALUE ...]

For each seed, three federated runs of zk0's real ServerApp strategy and ClientApp on the tiny
policy, with generated pick / stack / sort datasets: ``bf16-delta`` (the default), ``int8-delta``
with error feedback and ``int8-delta`` without it. They run on the in-process loopback grid
(tests/loopback_grid.py: every message serialised as Flower does) rather than the Simulation
Engine, because there, as in a deployment's resident ClientApp host, each node keeps its cached
global and its rounding residual between rounds; Ray actors in `zk0 sim` do not keep a node's
state (a node whose message lands on another actor gets full weights, correctly but not cheaply).
Prints each arm's final server eval loss per seed, the paired relative gaps with 95% intervals,
and the bytes per client per round. Target: int8-delta (error feedback on) within 1% of
bf16-delta in final server eval loss (mean over seeds). Exit code 1 when it is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # loopback_grid lives with the tests

TARGET_GAP = 0.01
ARMS = {
    "bf16-delta": {"wire-encoding": "bf16-delta"},
    "int8-delta": {"wire-encoding": "int8-delta"},
    "int8, no feedback": {"wire-encoding": "int8-delta", "error-feedback": False},
}
TASKS = ("pick", "stack", "sort")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", action="append", default=[], dest="settings", help="run-config KEY=VALUE; repeatable")
    return parser.parse_args(argv)


def federation(tmp: Path, datasets: list[Path], settings: dict) -> tuple[float, dict[str, float]]:
    """(final server eval loss, mean MiB down/up per client per round) of one loopback run."""
    from loopback_grid import LoopbackGrid

    from zk0cli.fl import client_app
    from zk0cli.fl.records import RunRecord
    from zk0cli.fl.run_config import RunConfig
    from zk0cli.fl.server_app import run_federation

    config = RunConfig.from_mapping(
        {
            "policy": "tiny",
            "device": "cpu",
            "chunk-size": 10,
            "batch-size": 4,
            "eval-batches": 2,
            "video-frequency": 1000,
            "checkpoint-interval": 1000,
            "fraction-evaluate": 0.0,
            "min-available-nodes": len(datasets),
            "datasets": " ".join(f"local:{d}" for d in datasets),
            "runs-dir": str(tmp / "runs"),
            **settings,
        }
    )
    nodes = [{"partition-id": i, "num-partitions": len(datasets)} for i in range(len(datasets))]
    record = RunRecord.create(Path(config.runs_dir), config.run_name)
    run_federation(LoopbackGrid(client_app.app, nodes, config.to_flwr()), config, record)
    rounds = [entry for entry in record.rounds() if entry["round"] > 0]
    clients = [client for entry in rounds for client in entry["clients"]["each"]]
    traffic = {
        direction: statistics.fmean(c[f"bytes_{direction}"] for c in clients) / 2**20 for direction in ("down", "up")
    }
    return float(rounds[-1]["server_eval"]["composite"]["policy_loss"]), traffic


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="zk0-wire-quality-") as tmp_dir:
        tmp = Path(tmp_dir)
        os.environ.update(
            ZK0_HOME=str(tmp / "home"),
            HF_HUB_OFFLINE="1",
            HF_HOME=str(tmp / "hf"),
            HF_LEROBOT_HOME=str(tmp / "hf" / "lerobot"),
        )
        import torch

        from zk0cli.datasets.sample import write_sample
        from zk0cli.fl.run_config import parse_overrides

        torch.set_num_threads(1)
        datasets = [
            write_sample(tmp / f"{TASKS[i % 3]}-{i}", task=TASKS[i % 3], episodes=4, frames_per_episode=50, seed=i)
            for i in range(args.clients)
        ]
        common = {"num-server-rounds": args.rounds, "local-steps": args.local_steps, **parse_overrides(args.settings)}
        losses: dict[str, list[float]] = {arm: [] for arm in ARMS}
        traffic: dict[str, dict[str, float]] = {}
        started = time.perf_counter()
        for seed in range(args.seed, args.seed + args.seeds):
            for arm, settings in ARMS.items():
                name = f"{arm.replace(' ', '').replace(',', '-')}-{seed}"
                loss, traffic[arm] = federation(tmp, datasets, {**common, **settings, "seed": seed, "run-name": name})
                losses[arm].append(loss)
                print(f"seed {seed} {arm:18} final server eval loss {loss:.6f}", file=sys.stderr)
        elapsed = time.perf_counter() - started
    return report(args, losses, traffic, elapsed)


def report(args, losses: dict[str, list[float]], traffic: dict[str, dict[str, float]], elapsed: float) -> int:
    from zk0cli.services.compare import relative_gap

    print(
        f"{args.clients} clients x {args.rounds} rounds x {args.local_steps} local steps, tiny policy, "
        f"{args.seeds} seeds, {elapsed:.0f} s"
    )
    print(f"{'arm':18} {'final loss (mean)':>18} {'MiB down':>9} {'MiB up':>8}  per seed")
    for arm, values in losses.items():
        each = ", ".join(f"{v:.6f}" for v in values)
        down, up = traffic[arm]["down"], traffic[arm]["up"]
        print(f"{arm:18} {statistics.fmean(values):18.6f} {down:9.3f} {up:8.3f}  {each}")
    print("(MiB per client per round, tiny policy, the first round's full download included)")
    ok = True
    for arm, reference in (("int8-delta", "bf16-delta"), ("int8, no feedback", "int8-delta")):
        percent, low, high = relative_gap(losses[arm], losses[reference], paired=True)
        interval = f" (95% CI {low:+.4f}%..{high:+.4f}%, paired by seed)" if low is not None else ""
        print(f"{arm} vs {reference}: {percent:+.4f}%{interval}")
        if arm == "int8-delta":
            ok = abs(percent) <= 100 * TARGET_GAP
    print(f"target: int8-delta within {TARGET_GAP:.0%} of bf16-delta: {'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
