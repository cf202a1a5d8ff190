"""Does a smaller wire cost learning? The same federation in each wire encoding, paired by seed.

    .venv/bin/python bench/wire_quality.py [--clients 3] [--rounds 4] [--local-steps 20] [--seeds 3]
        [--policy tiny] [--set KEY=VALUE ...] [--out DIR]

For each seed, three federated runs on Flower's Simulation Engine (`zk0 sim`, as
bench/fed_vs_central.py makes them): ``bf16-delta`` (the default), ``int8-delta`` with error
feedback and ``int8-delta`` without it. `zk0 compare` then prints, paired by seed, the final and
best server eval loss of int8 against bf16 and of int8 without error feedback against with it,
with 95% intervals. Target: int8-delta (error feedback on) within 1% of bf16-delta in final server
eval loss (the mean over seeds). Exit code 1 when it is missed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fed_vs_central import federated_run, parse_args  # bench/: the same federation, the same seeds

TARGET_GAP = 0.01
ARMS = {
    "bf16-delta": ["wire-encoding=bf16-delta"],
    "int8-delta": ["wire-encoding=int8-delta"],
    "int8, no error feedback": ["wire-encoding=int8-delta", "error-feedback=false"],
}


def final_loss(run_dir: Path) -> float:
    rounds = json.loads((run_dir / "federated_metrics.json").read_text())  # one summary per round
    return float(rounds[-1]["server_policy_loss"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from zk0cli.cli.app import main as zk0

    runs: dict[str, list[Path]] = {arm: [] for arm in ARMS}
    base_settings = list(args.settings)
    for seed in range(args.seed, args.seed + args.seeds):
        for arm, settings in ARMS.items():
            print(f"seed {seed}: {arm}", file=sys.stderr)
            args.settings = [*base_settings, *settings]
            runs[arm].append(federated_run(args, seed))
    for a, b in (("int8-delta", "bf16-delta"), ("int8, no error feedback", "int8-delta")):
        print(f"\n{a} (A) against {b} (B):")
        try:
            zk0(["compare", ",".join(map(str, runs[a])), ",".join(map(str, runs[b]))])
        except SystemExit as exc:
            if exc.code:
                return int(exc.code)
    losses = {arm: [final_loss(run) for run in paths] for arm, paths in runs.items()}
    means = {arm: sum(values) / len(values) for arm, values in losses.items()}
    print(f"\nfinal server eval loss, mean of {args.seeds} seed(s):")
    for arm, mean in means.items():
        each = ", ".join(f"{value:.4f}" for value in losses[arm])
        print(f"  {arm:24} {mean:.4f}  ({each})")
    gap = means["int8-delta"] / means["bf16-delta"] - 1
    feedback = means["int8, no error feedback"] / means["int8-delta"] - 1
    ok = abs(gap) <= TARGET_GAP
    print(f"int8-delta vs bf16-delta: {gap:+.2%} (target within {TARGET_GAP:.0%}): {'OK' if ok else 'MISSED'}")
    print(f"error feedback off vs on (int8-delta): {feedback:+.2%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
