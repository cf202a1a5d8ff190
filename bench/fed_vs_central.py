"""Federated against centralized and against each node alone, the same code, data and seeds.

    .venv/bin/python bench/fed_vs_central.py [--clients 3] [--rounds 3] [--local-steps 20]
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
every client's dataset, so a model is judged on every task of the federation.

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
    parser.add_argument("--rounds", type=int, default=3)
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

    tiny = {"chunk-size": 10, "batch-size": 4, "eval-batches": 2} if args.policy == "tiny" else {}
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
    from zk0cli.datasets.sample import write_sample

    uris = []
    for client in range(clients):
        task, episodes = HETEROGENEITY[kind][client % len(HETEROGENEITY[kind])]
        root = Paths.resolve().data_dir / "bench-samples" / f"{kind}-{client}-{task}-{episodes}ep"
        if not (root / "meta" / "info.json").is_file():
            write_sample(root, task=task, episodes=episodes, frames_per_episode=50, seed=client)
        uris.append(f"local:{root}")
    return uris


def local_only_runs(federated: Path) -> dict[str, Path]:
    from zk0cli.services import train

    plans = train.plan_local_only(federated, progress=lambda m: print(f"  {m}", file=sys.stderr))
    return {train.pooled_name(plan.training): train.run_centralized(plan).root for plan in plans}


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
    ratio = seconds["federated"] / seconds["centralized"]
    print(
        f"wall clock: federated {seconds['federated']:.1f} s, centralized {seconds['centralized']:.1f} s "
        f"(federated / centralized = {ratio:.2f}) over {args.seeds} seed(s)"
        + (f"; local-only {seconds['local-only']:.1f} s" if args.local_only else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
