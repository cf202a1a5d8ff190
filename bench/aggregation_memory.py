"""Server memory of one round's aggregation against the number of nodes.

    .venv/bin/python bench/aggregation_memory.py [--params 10_000_000] [--nodes 4 32]

Replies arrive one by one (each a full set of decoded fp32 trainable weights, as the strategy's
integrity check returns them). Two ways of averaging them, measured in the same run with
tracemalloc (numpy reports its buffers to it), peak bytes above the start:

  (a) baseline: keep every accepted update, then average them (what zk0 did before);
  (b) zk0's RunningMean: fold each update into a float64 running sum as it arrives, drop it.
  (c) zk0's SpilledUpdates for each robust rule (median, trimmed-mean, krum, multi-krum): every
      update is written to a memmap file in a temporary directory and aggregated tensor by tensor.

Measures the aggregation alone, not Flower's message buffers. Targets for (b): peak <= 3x the
trainable weights in fp32 (the float64 sums and the one update being folded) plus 1 MiB (the
multiply's fixed-size temporary) at every node count, and the same peak for the most and fewest
nodes (ratio <= 1.05). For (c): peak at the most nodes <= 1.5x the peak at the fewest (memory
holds the nodes' values of one tensor, never their models). Exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zk0cli.fl.aggregate import ROBUST_RULES, RunningMean, SpilledUpdates  # noqa: E402

TARGET_MODEL_MULTIPLE = 3.0
TARGET_FIXED_BYTES = 2**20
TARGET_GROWTH = 1.05
TARGET_ROBUST_GROWTH = 1.5
TENSORS = 20  # SmolVLA's trainable part is ~300 tensors; 20 keeps the largest at a realistic share


def replies(params: int, nodes: int) -> Iterator[tuple[dict[str, np.ndarray], float]]:
    """Each node's update, made only when it "arrives" (as a pulled reply is decoded)."""
    size = params // TENSORS
    for node in range(nodes):
        rng = np.random.default_rng(node)
        yield {f"t{i}": rng.standard_normal(size, dtype=np.float32) for i in range(TENSORS)}, float(100 + node)


def keep_then_average(updates: Iterator[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    kept = list(updates)
    total = sum(weight for _, weight in kept)
    averaged = {}
    for name in kept[0][0]:
        mixed = np.zeros(kept[0][0][name].shape, dtype=np.float64)
        for arrays, weight in kept:
            mixed += arrays[name].astype(np.float64) * (weight / total)
        averaged[name] = mixed.astype(np.float32)
    return averaged


def fold_as_they_arrive(updates: Iterator[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    mean = RunningMean()
    for arrays, weight in updates:
        mean.add(arrays, weight)
        del arrays  # as the strategy's fold returns: the update is gone before the next one is decoded
    return mean.result()


def spilled(rule: str) -> Callable[[Iterator], dict]:
    def aggregate(updates: Iterator[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="zk0-bench-spill-") as spill_dir:
            rounds = SpilledUpdates(Path(spill_dir) / "round", rule, 0.1, byzantine_nodes=1)
            for arrays, weight in updates:
                rounds.add(arrays, weight)
                del arrays
            return rounds.result()

    return aggregate


def peak_bytes(aggregate: Callable[[Iterator], dict], params: int, nodes: int) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = aggregate(replies(params, nodes))
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del result
    return peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000, help="trainable parameters (SmolVLA: ~100M)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 32])
    args = parser.parse_args()
    model = args.params * 4
    print(f"trainable weights: {args.params:,} parameters = {model / 2**20:.1f} MiB in fp32")
    folded = {}
    for nodes in args.nodes:
        kept = peak_bytes(keep_then_average, args.params, nodes)
        folded[nodes] = peak_bytes(fold_as_they_arrive, args.params, nodes)
        print(
            f"{nodes:>3} nodes: keep-then-average peak {kept / 2**20:8.1f} MiB ({kept / model:5.1f}x the model), "
            f"running mean {folded[nodes] / 2**20:7.1f} MiB ({folded[nodes] / model:4.2f}x)"
        )
    growth = folded[max(args.nodes)] / folded[min(args.nodes)]
    worst = max(folded.values())
    limit = TARGET_MODEL_MULTIPLE * model + TARGET_FIXED_BYTES
    print(
        f"running mean: worst peak {worst / 2**20:.1f} MiB ({worst / model:.3f}x the model; "
        f"target <= {TARGET_MODEL_MULTIPLE:g}x + 1 MiB = {limit / 2**20:.1f} MiB)"
    )
    print(
        f"running mean: peak at {max(args.nodes)} nodes / at {min(args.nodes)} nodes = {growth:.3f} "
        f"(target <= {TARGET_GROWTH:g})"
    )
    robust_ok = True
    for rule in ROBUST_RULES:
        peaks = {nodes: peak_bytes(spilled(rule), args.params, nodes) for nodes in (min(args.nodes), max(args.nodes))}
        ratio = peaks[max(args.nodes)] / peaks[min(args.nodes)]
        robust_ok &= ratio <= TARGET_ROBUST_GROWTH
        print(
            f"{rule:>12}: peak {peaks[min(args.nodes)] / 2**20:7.1f} MiB at {min(args.nodes)} nodes, "
            f"{peaks[max(args.nodes)] / 2**20:7.1f} MiB at {max(args.nodes)}: {ratio:.3f} "
            f"(target <= {TARGET_ROBUST_GROWTH:g})"
        )
    return 0 if worst <= limit and growth <= TARGET_GROWTH and robust_ok else 1


if __name__ == "__main__":
    sys.exit(main())
