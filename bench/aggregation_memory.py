"""Server memory of one round's aggregation against the number of nodes.

    .venv/bin/python bench/aggregation_memory.py [--params 10_000_000] [--nodes 4 32]

Replies arrive one by one, each a bf16 change as the strategy's integrity check hands it over
(:class:`zk0cli.fl.integrity.WireChange`: the wire's values, decoded a piece at a time when
read). Ways of aggregating them, measured in the same run with tracemalloc (numpy reports its
buffers to it), peak bytes above the start (the global weights exist before it):

  (a) baseline: decode every accepted change in full and keep it, then average (zk0 before
      streaming);
  (b) zk0's RunningMean: fold each change into a float32 running sum as it arrives, drop it.
  (c) zk0's SpilledUpdates for each robust rule (median, trimmed-mean, krum, multi-krum): every
      change is written to a file in a temporary directory and aggregated piece by piece.

Measures the aggregation alone, not Flower's message buffers. Targets for (b): peak <= 2x the
trainable weights in fp32 (the float32 sums, the bf16 reply being folded and the making of it)
plus 1 MiB at every node count, and the same peak for the most and fewest nodes (ratio <=
1.05). For (c): peak at the most nodes <= 1.5x the peak at the fewest (memory holds the nodes'
values of one piece, never their models). Exit code 1 when a target is missed.
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

from zk0cli.fl import integrity  # noqa: E402
from zk0cli.fl.aggregate import ROBUST_RULES, RunningMean, SpilledUpdates  # noqa: E402
from zk0cli.fl.integrity import WireChange  # noqa: E402

TARGET_MODEL_MULTIPLE = 2.0
TARGET_FIXED_BYTES = 2**20
TARGET_GROWTH = 1.05
TARGET_ROBUST_GROWTH = 1.5
TENSORS = 20  # SmolVLA's trainable part is ~150 tensors; 20 keeps the largest at a realistic share

Replies = Iterator[tuple[WireChange, float]]


def global_weights(params: int) -> dict[str, np.ndarray]:
    return {f"t{i}": np.zeros(params // TENSORS, dtype=np.float32) for i in range(TENSORS)}


def replies(global_: dict[str, np.ndarray], nodes: int) -> Replies:
    """Each node's change, made only when it "arrives" (as a reply is pulled)."""
    for node in range(nodes):
        yield reply(global_, node), float(100 + node)


def reply(global_: dict[str, np.ndarray], node: int) -> WireChange:
    """A change of N(0, 1) values in bf16, made tensor by tensor into the one wire buffer."""
    rng = np.random.default_rng(node)
    bits = np.empty(sum(value.size for value in global_.values()), dtype=np.uint16)
    offset = 0
    for value in global_.values():
        bits[offset : offset + value.size] = integrity.to_bf16_bits(rng.standard_normal(value.size, dtype=np.float32))
        offset += value.size
    return WireChange(integrity.layout_of(global_), integrity.BF16_DELTA, bits, global_)


def decoded(change: WireChange) -> dict[str, np.ndarray]:
    """The whole change in float32, as zk0 decoded every update before it read them in pieces."""
    arrays = {name: np.empty(shape, dtype=np.float32) for name, shape in change.layout}
    for name, lo, hi, piece in change.pieces():
        arrays[name].reshape(-1)[lo:hi] = piece
    return arrays


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


def keep_decoded(updates: Replies) -> dict[str, np.ndarray]:
    return keep_then_average((decoded(change), weight) for change, weight in updates)


def fold_as_they_arrive(updates: Replies) -> dict[str, np.ndarray]:
    mean: RunningMean | None = None
    for change, weight in updates:
        mean = mean or RunningMean(change.layout)
        mean.add(change, weight)
        del change  # as the strategy's fold returns: the reply is gone before the next one is pulled
    assert mean is not None
    return mean.result()


def spilled(rule: str) -> Callable[[Replies], dict]:
    def aggregate(updates: Replies) -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="zk0-bench-spill-") as spill_dir:
            rounds = SpilledUpdates(Path(spill_dir) / "round", rule, 0.1, byzantine_nodes=1)
            for change, weight in updates:
                rounds.add(change, weight)
                del change
            return rounds.result()

    return aggregate


def peak_bytes(aggregate: Callable[[Replies], dict], params: int, nodes: int) -> int:
    global_ = global_weights(params)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = aggregate(replies(global_, nodes))
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
        kept = peak_bytes(keep_decoded, args.params, nodes)
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
