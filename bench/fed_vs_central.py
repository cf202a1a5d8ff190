"""Federated against centralized and against each node alone, the same code, data and seeds.

    .venv/bin/python bench/fed_vs_central.py [--clients 3] [--rounds 15] [--local-steps 20]
        [--seeds 3] [--heterogeneity none|task|size|both] [--local-only]
        [--policy tiny|real-geometry|lerobot/smolvla_base] [--device auto]
        [--dataset URI ...] [--set KEY=VALUE ...] [--out DIR]

For each seed: a federated run on Flower's Simulation Engine (`zk0 sim`: the real ServerApp and
ClientApps, one client per dataset, generated SO-100 samples when no --dataset is given), then
the centralized run matched to it (`zk0 train --match-run`: the union of the clients' training
episodes, the same optimizer steps, the same evaluation rounds). Then `zk0 compare` of the two
arms prints its table: final and best server eval loss and action error, with 95% intervals
and the relative gap once there are two seeds or more. Last, the wall-clock time of each arm and
their ratio (federated / centralized), both measured in this run.

``--local-only`` adds, per seed, one run per client dataset trained on that dataset alone
(`zk0 train --match-run RUN --local-only`): the third arm, what each node gets without the
federation. ``--heterogeneity`` generates the clients' datasets (instead of --dataset):
``task``: pick / stack / sort, equal sizes; ``size``: one task (pick), 3 / 6 / 12 episodes;
``both``: the three tasks and the three sizes; ``none``: one task, one size. Every client holds
out one episode (client-eval-episodes 1); the server evaluates on those held-out episodes of
every client's dataset, so a model is judged on every task of the federation. A last table gives
each arm's final loss on each held-out dataset and the federated arm's paired gap to every other
arm on each: a node alone is expected to win on its own task and to pay on the others'.

The tiny policy's defaults (lr 3e-3, 15 rounds of 20 steps, eval-batches 8 every 5 rounds) are a
setting in which it learns: its expert starts from random weights, and at SmolVLA's fine-tuning
lr (1e-4) or after ~100 steps per node every arm is still near the loss of predicting zero
velocity (~2.0), where federated, centralized and each node alone tie and say nothing about
federation. Here each node alone fits its own task and pays on the others (--heterogeneity task
--local-only: bench/results/fed_vs_central_task_local_only_15x20_lr3e-3*.txt; 3 seeds leave two
of the three intervals reaching zero, 5 seeds do not). On a machine
shared with other jobs set OMP_NUM_THREADS=1: with two threads per process on two busy cores a
training step of the centralized and local-only arms ran 8x slower (the Ray clients use one).

On a GPU machine, e.g.:
    bench/fed_vs_central.py --policy lerobot/smolvla_base --clients 4 --rounds 30 --local-steps 50 \\
        --seeds 3 --dataset hf:lerobot/svla_so100_pickplace --set batch-size=16 --set eval-batches=16
(`--policy real-geometry` runs SmolVLM2-500M's sizes with random weights and no download.)
Everything is recorded under ZK0_HOME (or the default data dir); the records stay for `zk0 report`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (the first is --seed); paired by seed")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--policy", default="tiny", help="tiny, real-geometry, or a SmolVLA checkpoint (Hub id or dir)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dataset", action="append", default=[], help="dataset URI per client (cycled); repeatable")
    parser.add_argument("--set", action="append", default=[], dest="settings", help="run-config KEY=VALUE; repeatable")
    parser.add_argument("--out", type=Path, default=None, help="where the comparison plot and JSON go")
    parser.add_argument("--heterogeneity", choices=("none", "task", "size", "both"), default=None)
    parser.add_argument("--local-only", action="store_true", help="add each client's dataset trained alone")
    return parser.parse_args(argv)


def run_config(args: argparse.Namespace, seed: int) -> dict:
    from zk0cli.fl.run_config import parse_overrides

    # The tiny expert trains from random weights: a from-scratch lr, and more held-out frames per evaluation.
    tiny = (
        {"chunk-size": 10, "batch-size": 4, "lr": 3e-3, "eval-batches": 8, "eval-frequency": 5}
        if args.policy == "tiny"
        else {}
    )
    return {
        **tiny,
        "policy": args.policy,
        "device": args.device,
        "local-steps": args.local_steps,
        "video-frequency": 1000,
        **parse_overrides(args.settings),
        "seed": seed,
    }


def federated_run(args: argparse.Namespace, seed: int) -> Path:
    from zk0cli.core.paths import Paths
    from zk0cli.services import simulation

    request = simulation.SimRequest(
        clients=args.clients, rounds=args.rounds, run_config=run_config(args, seed), datasets=list(args.dataset)
    )
    result = simulation.run(
        request,
        Paths.resolve(),
        on_message=lambda m: print(f"  {m}", file=sys.stderr),
        on_round=lambda r: print(
            f"  federated round {r.round}/{r.rounds}: server loss {r.summary.get('server_policy_loss')}",
            file=sys.stderr,
        ),
    )
    return result.run_dir


def centralized_run(federated: Path) -> Path:
    from zk0cli.services import train

    plan = train.plan_centralized(match_run=federated)
    return train.run_centralized(plan, progress=lambda m: print(f"  {m}", file=sys.stderr)).root


HETEROGENEITY = {  # per client: (task, episodes)
    "none": [("pick", 6)] * 3,
    "task": [("pick", 6), ("stack", 6), ("sort", 6)],
    "size": [("pick", 3), ("pick", 6), ("pick", 12)],
    "both": [("pick", 3), ("stack", 6), ("sort", 12)],
}


def heterogeneous_datasets(kind: str, clients: int) -> list[str]:
    """The clients' generated datasets for one heterogeneity setting (written once, then reused)."""
    from zk0cli.core.paths import Paths
    from zk0cli.datasets.sample import SAMPLE_FORMAT, write_sample

    uris = []
    for client in range(clients):
        task, episodes = HETEROGENEITY[kind][client % len(HETEROGENEITY[kind])]
        folder = Paths.resolve().data_dir / "bench-samples" / f"format-{SAMPLE_FORMAT}"  # an older sample is not reused
        root = folder / f"{kind}-{client}-{task}-{episodes}ep"
        if not (root / "meta" / "info.json").is_file():
            write_sample(root, task=task, episodes=episodes, frames_per_episode=50, seed=client)
        uris.append(f"local:{root}")
    return uris


def local_only_runs(federated: Path) -> dict[str, Path]:
    from zk0cli.services import train

    plans = train.plan_local_only(federated, progress=lambda m: print(f"  {m}", file=sys.stderr))
    return {train.pooled_name(plan.training): train.run_centralized(plan).root for plan in plans}


def per_task(arms: dict[str, list[Path]]) -> list[str]:
    """Final server eval loss on each held-out dataset, per arm (mean over seeds, +- half the 95%
    interval), and the federated arm's paired gap to each other arm on each of them: where a node
    alone wins (its own task) and where it pays (the others)."""
    from zk0cli.services.compare import mean_ci, relative_gap
    from zk0cli.services.report import load_run

    def finals(root: Path) -> tuple[int | None, dict[str, float]]:
        run = load_run(root)
        last = [entry for entry in run.rounds if entry.get("server_eval")][-1]
        return run.seed, {name: m["policy_loss"] for name, m in last["server_eval"]["datasets"].items()}

    losses = {arm: dict(sorted(finals(root) for root in roots)) for arm, roots in arms.items()}  # arm -> seed -> ds
    datasets = sorted(next(iter(next(iter(losses.values())).values())))
    short = {name: name.removesuffix("-heldout") for name in datasets}
    lines = ["final server eval loss per held-out dataset (mean +- half the 95% interval over seeds)"]
    lines.append(f"{'arm':<24}" + "".join(f"{short[name]:>26}" for name in datasets))
    for arm, by_seed in losses.items():
        cells = []
        for name in datasets:
            estimate = mean_ci([values[name] for values in by_seed.values()])
            half = "" if estimate.high is None else f" +-{estimate.high - estimate.mean:.3f}"
            cells.append(f"{estimate.mean:.3f}{half}")
        lines.append(f"{arm:<24}" + "".join(f"{cell:>26}" for cell in cells))
    federated = losses.get("federated", {})
    for arm, by_seed in losses.items():
        if arm == "federated" or sorted(by_seed) != sorted(federated):
            continue
        for name in datasets:
            gap, low, high = relative_gap(
                [federated[s][name] for s in sorted(by_seed)], [by_seed[s][name] for s in sorted(by_seed)], paired=True
            )
            interval = "one seed: no CI" if low is None else f"CI {low:+.1f}%..{high:+.1f}%, paired by seed"
            lines.append(f"federated vs {arm} on {short[name]}: {gap:+.1f}% ({interval})")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from zk0cli.cli.app import main as zk0

    if args.heterogeneity:
        if args.dataset:
            raise SystemExit("--heterogeneity generates the clients' datasets: leave out --dataset")
        args.dataset = heterogeneous_datasets(args.heterogeneity, args.clients)
        args.settings = ["client-eval-episodes=1", *args.settings]
    arms: dict[str, list[Path]] = {"federated": [], "centralized": []}
    seconds = {"federated": 0.0, "centralized": 0.0, "local-only": 0.0}
    for seed in range(args.seed, args.seed + args.seeds):
        print(f"seed {seed}: federated, {args.clients} clients x {args.rounds} rounds", file=sys.stderr)
        started = time.perf_counter()
        arms["federated"].append(federated_run(args, seed))
        seconds["federated"] += time.perf_counter() - started
        print(f"seed {seed}: centralized, matched to {arms['federated'][-1].name}", file=sys.stderr)
        started = time.perf_counter()
        arms["centralized"].append(centralized_run(arms["federated"][-1]))
        seconds["centralized"] += time.perf_counter() - started
        if args.local_only:
            print(f"seed {seed}: each client's dataset alone", file=sys.stderr)
            started = time.perf_counter()
            for name, root in local_only_runs(arms["federated"][-1]).items():
                arms.setdefault(f"local {name}", []).append(root)
            seconds["local-only"] += time.perf_counter() - started
    compare_args = ["compare", *(",".join(map(str, runs)) for runs in arms.values())]
    if args.out:
        compare_args += ["--out", str(args.out)]
    try:
        zk0(compare_args)
    except SystemExit as exc:
        if exc.code:
            return int(exc.code)
    print("\n".join(per_task(arms)))
    ratio = seconds["federated"] / seconds["centralized"]
    print(
        f"wall clock: federated {seconds['federated']:.1f} s, centralized {seconds['centralized']:.1f} s "
        f"(federated / centralized = {ratio:.2f}) over {args.seeds} seed(s)"
        + (f"; local-only {seconds['local-only']:.1f} s" if args.local_only else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
