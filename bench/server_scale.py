"""One training round of the real server path against the number of nodes: peak RSS and time.

    .venv/bin/python bench/server_scale.py [--nodes 2 8 32 64] [--rules mean median ...]
        [--params-scale 1.0] [--geometry FILE] [--spill-dir DIR]

The strategy (:class:`zk0cli.fl.strategy.Zk0FedProx`) runs one steady round (round 2: every
node holds round 1's global and is sent the change since) as its loop does: configure_train,
the replies folded as they arrive (``_send_and_receive`` with ``_fold_train_reply``: digest,
names, shapes, dtype, decode, NaN/Inf, change norm, fold), then aggregate_train. N synthetic
nodes answer with a client's real reply (``client_app.train_reply``) in bf16-delta at SmolVLA's
trainable geometry: 99.9M parameters in 155 tensors, read once from a real-geometry build in a
child process (~3 GB, a minute) and cached in ``--geometry``; ``--params-scale`` shrinks every
tensor's first dimension for a quick run.

Every reply is ready at once, the server's worst case. The grid keeps none: it makes a reply
only when the strategy pulls it (Flower inflates every message a pull returns), each a distinct
rotation of one change encoded beforehand by the client's own ``encode_update``; making them is
timed and left out of the round's seconds.

Each (rule, N) runs in a process of its own. Peak RSS is its VmHWM, reset once the global weights,
their record (the one the strategy's loop holds between rounds), round 1's downlink and the
encoded change are made, so it is the round's peak plus what the process holds before the round
(printed as its start); RssAnon / RssFile are their largest values seen after each reply and
after the aggregate. Each fold is timed against only hashing and decoding the same reply
(``integrity.digest`` and ``integrity.decode_array``) right before it; that decode's 400 MB are
the bench's, not the server's, so the peak is read before it and reset after it.

Rules: ``mean`` (streamed); ``trimmed-mean``, ``median``, ``krum``, ``multi-krum`` (each update
spilled to ``--spill-dir``: N x 400 MB of disk at full size, removed after the round; krum needs
2 x byzantine-nodes + 3 nodes, so its smallest N is raised to that); and the baseline
``keep-then-average`` (``bench/aggregation_memory.py``: every decoded update kept until the round
ends, as zk0 averaged before streaming), run only where the kept updates fit in half the memory
available.

Targets: mean's peak RSS at the most nodes <= 1.2x at the fewest, and at every node count at
most 3x the trainable weights in fp32 above the round's start; its fold time per reply <= 1.5x
hashing + decoding the reply; each robust rule's peak RSS at the most nodes <= 1.5x at the
fewest. Exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]  # zk0cli, loopback_grid, aggregation_memory

import numpy as np  # noqa: E402
from aggregation_memory import decoded, keep_then_average  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Message  # noqa: E402
from loopback_grid import LoopbackGrid  # noqa: E402

from zk0cli.fl import client_app, integrity  # noqa: E402
from zk0cli.fl import strategy as strategy_module  # noqa: E402
from zk0cli.fl.aggregate import ROBUST_RULES  # noqa: E402
from zk0cli.fl.integrity import WireChange  # noqa: E402
from zk0cli.fl.run_config import RunConfig  # noqa: E402
from zk0cli.fl.wire import NodeWire  # noqa: E402

BASELINE = "keep-then-average"
RULES = (BASELINE, "mean", *ROBUST_RULES)
TARGET_MEAN_GROWTH = 1.2
TARGET_MEAN_ABOVE_START = 3.0  # x the trainable weights in fp32
TARGET_FOLD_VS_READ = 1.5
TARGET_ROBUST_GROWTH = 1.5
BASELINE_MEMORY_SHARE = 0.5  # of MemAvailable: the baseline's kept updates must fit in it
GiB = 2**30

Layout = list[tuple[str, tuple[int, ...]]]


# ---------------------------------------------------------------- geometry


def geometry(path: Path, scale: float) -> Layout:
    """Names and shapes of real-geometry SmolVLA's trainable tensors, first dimensions x ``scale``."""
    if not path.exists():
        with fresh_processes() as pool:
            pool.submit(dump_geometry, path).result()
    return [(name, (max(1, round(shape[0] * scale)), *shape[1:])) for name, shape in json.loads(path.read_text())]


def dump_geometry(path: Path) -> None:
    """Build real-geometry SmolVLA (random weights, no download) and write its trainable names and shapes."""
    with tempfile.TemporaryDirectory(prefix="zk0-geometry-") as tmp:
        os.environ.update(ZK0_HOME=f"{tmp}/home", HF_HUB_OFFLINE="1", HF_HOME=f"{tmp}/hf")
        from zk0cli.datasets.sample import write_sample
        from zk0cli.datasets.uri import open_metadata, parse_uri
        from zk0cli.policy.build import build_policy
        from zk0cli.policy.trainable import trainable_parameters

        uri = parse_uri(f"local:{write_sample(Path(tmp) / 'pick', episodes=1, frames_per_episode=10, image_size=32)}")
        config = RunConfig(policy="real-geometry", device="cpu", datasets=str(uri))
        built = build_policy(config.policy_spec(), open_metadata(uri))
        layout = [[name, list(param.shape)] for name, param in trainable_parameters(built.policy)]
    path.write_text(json.dumps(layout))


def fresh_processes() -> ProcessPoolExecutor:
    """Each task in a new process: its peak RSS is its own."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)


# ---------------------------------------------------------------- the nodes


@dataclass
class SyntheticGrid(LoopbackGrid):
    """N nodes whose replies are all ready, made only when pulled (see the module docstring)."""

    change: ArrayRecord | None = None  # the one encoded change every reply is a rotation of
    making_s: float = 0.0  # spent making replies: not the server's time
    _pending: dict[str, Message] = field(default_factory=dict)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message_id = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            message.metadata.__dict__["_run_id"] = self.run_id
            self._pending[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids):
        started = time.perf_counter()
        replies = [self._reply(self._pending.pop(m)) for m in message_ids if m in self._pending]
        self.making_s += time.perf_counter() - started
        return replies

    def _reply(self, message: Message) -> Message:
        node = int(message.metadata.dst_node_id)
        bits = np.frombuffer(self.change[integrity.VALUES].data, dtype="<u2")
        values = integrity.raw_bf16(np.roll(bits, node * 7919))  # distinct per node, the same magnitudes
        update = ArrayRecord({integrity.LAYOUT: self.change[integrity.LAYOUT], integrity.VALUES: values})
        metrics = {"loss": 1.0 + node % 7 / 100, "samples": 64 + node % 5}
        synthetic = SimpleNamespace(dataset_name=f"synthetic-{node}", fingerprint="0" * 64)
        return client_app.train_reply(message, synthetic, NodeWire(), update, integrity.BF16_DELTA, metrics)


# ---------------------------------------------------------------- one case, in its own process


class KeepEveryUpdate:
    """The baseline as the strategy's round aggregate: every accepted change decoded in full and
    kept, averaged at the end."""

    def __init__(self) -> None:
        self.kept: list[tuple[dict[str, np.ndarray], float]] = []

    @property
    def count(self) -> int:
        return len(self.kept)

    def add(self, change: WireChange, weight: float) -> None:
        self.kept.append((decoded(change), weight))

    def result(self) -> dict[str, np.ndarray]:
        return keep_then_average(iter(self.kept))


class TimedFolds:
    """``on_reply`` for the round: the reply only hashed and decoded, then the strategy's fold of it
    (which releases its arrays), each timed."""

    def __init__(self, fold: Callable[[Message], None]) -> None:
        self.fold, self.fold_s, self.read_s = fold, 0.0, 0.0
        self.most = memory()

    def __call__(self, reply: Message) -> None:
        self.note_memory()  # the server's peak so far; the read below is the bench's own
        started = time.perf_counter()
        values = reply.content[strategy_module.ARRAYS]
        integrity.digest(values)
        integrity.decode_array(values[integrity.VALUES])
        del values
        read = time.perf_counter()
        reset_peak()
        self.fold(reply)
        self.read_s += read - started
        self.fold_s += time.perf_counter() - read
        self.note_memory()

    def note_memory(self) -> None:
        self.most = {key: max(value, self.most[key]) for key, value in memory().items()}


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def memory() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process, in bytes."""
    wanted = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
    lines = Path("/proc/self/status").read_text().splitlines()
    return {key: int(value.split()[0]) * 1024 for key, value in (line.split(":", 1) for line in lines) if key in wanted}


def run_case(rule: str, nodes: int, layout: Layout, spill_dir: Path) -> dict[str, Any]:
    from zk0cli.fl.strategy import Zk0FedProx

    strategy_module.REPLY_POLL_S = 0.0  # every reply is ready: no pause between polls
    rng = np.random.default_rng(0)
    global_weights = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in layout}
    config = RunConfig(
        aggregation="mean" if rule == BASELINE else rule, min_available_nodes=nodes, wire_encoding=integrity.BF16_DELTA
    )
    strategy = Zk0FedProx(config, global_weights, lambda *_: None, lambda *_: None, spill_dir=spill_dir)
    grid = SyntheticGrid(client_app.app, [{}] * nodes, config.to_flwr(), change=encoded_change(global_weights, rng))
    hold_last_global(strategy, grid, rng)
    arrays = strategy.initial_arrays()
    reset_peak()  # VmHWM from here: the round's peak
    base = memory()["VmRSS"]
    timed = TimedFolds(strategy._fold_train_reply)
    started = time.perf_counter()
    messages = strategy.configure_train(2, arrays, ConfigRecord(), grid)
    if rule == BASELINE:
        strategy._mean = KeepEveryUpdate()
    strategy._send_and_receive(grid, messages, on_reply=timed)
    strategy.aggregate_train(2, [])
    round_s = time.perf_counter() - started - grid.making_s - timed.read_s
    timed.note_memory()
    accepted = len(strategy.entry["clients"]["each"])
    return {
        "base": base,
        **timed.most,
        "round_s": round_s,
        "fold_s": timed.fold_s,
        "read_s": timed.read_s,
        "accepted": accepted,
    }


def hold_last_global(strategy: Any, grid: SyntheticGrid, rng: np.random.Generator) -> None:
    """A steady round (round 2): every node holds round 1's global and is sent only the change since."""
    strategy.downlink.publish(strategy.global_weights)
    strategy._holds = {str(node): strategy.downlink.digest for node in grid.get_node_ids()}
    strategy.global_weights = {
        name: value + rng.normal(0, 1e-5, value.shape).astype(np.float32)
        for name, value in strategy.global_weights.items()
    }


def encoded_change(global_weights: dict[str, np.ndarray], rng: np.random.Generator) -> ArrayRecord:
    """A client's bf16 update of ~1e-4 per weight, encoded by the client's own code."""
    local = {
        name: value + rng.normal(0, 1e-4, value.shape).astype(np.float32) for name, value in global_weights.items()
    }
    return integrity.encode_update(local, global_weights, integrity.BF16_DELTA)


# ---------------------------------------------------------------- the runs and the targets


def case_nodes(rule: str, nodes: int) -> int:
    """krum needs 2 x byzantine-nodes + 3 nodes a round (RunConfig refuses fewer)."""
    return max(nodes, 2 * RunConfig().byzantine_nodes + 3) if rule in ("krum", "multi-krum") else nodes


def why_not(rule: str, nodes: int, model_bytes: int, spill_dir: Path) -> str:
    """Why this case cannot run on this machine ('' when it can)."""
    if rule == BASELINE:
        available = memory_available()
        if nodes * model_bytes > BASELINE_MEMORY_SHARE * available:
            return f"{nodes} kept updates need {nodes * model_bytes / GiB:.1f} GiB, {available / GiB:.1f} GiB available"
    if rule in ROBUST_RULES:
        free = shutil.disk_usage(spill_dir).free
        if nodes * model_bytes * 1.05 > free:
            return f"the spill needs {nodes * model_bytes / GiB:.1f} GiB of disk, {free / GiB:.1f} GiB free"
    return ""


def memory_available() -> int:
    line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable"))
    return int(line.split()[1]) * 1024


def run_all(rules: list[str], node_counts: list[int], layout: Layout, spill_root: Path) -> dict[tuple[str, int], dict]:
    model_bytes = 4 * sum(math.prod(shape) for _, shape in layout)
    results: dict[tuple[str, int], dict] = {}
    print(
        "GiB: peak RSS (VmHWM), RSS at the round's start, the peak's growth over it, RssAnon and RssFile "
        "(most seen after a reply or the aggregate); s/reply: a fold; fold/read: folds / hashing + decoding"
    )
    print(
        f"{'rule':>17} {'nodes':>5} {'peak RSS':>9} {'start':>6} {'growth':>6} {'RssAnon':>8} {'RssFile':>8} "
        f"{'round s':>8} {'s/reply':>8} {'fold/read':>9}"
    )
    for rule in rules:
        for nodes in dict.fromkeys(case_nodes(rule, n) for n in node_counts):
            reason = why_not(rule, nodes, model_bytes, spill_root)
            if reason:
                print(f"{rule:>17} {nodes:>5}  not run: {reason}")
                continue
            with fresh_processes() as pool:
                result = pool.submit(run_case, rule, nodes, layout, spill_root / f"spill-{rule}-{nodes}").result()
            results[rule, nodes] = result
            print(row(rule, nodes, result), flush=True)
    return results


def row(rule: str, nodes: int, r: dict[str, Any]) -> str:
    assert r["accepted"] == nodes, f"{rule} at {nodes} nodes accepted {r['accepted']} replies"
    peak, start = r["VmHWM"] / GiB, r["base"] / GiB
    return (
        f"{rule:>17} {nodes:>5} {peak:9.2f} {start:6.2f} {peak - start:6.2f} {r['RssAnon'] / GiB:8.2f} "
        f"{r['RssFile'] / GiB:8.2f} {r['round_s']:8.1f} {r['fold_s'] / nodes:8.2f} {r['fold_s'] / r['read_s']:9.2f}"
    )


def check_targets(results: dict[tuple[str, int], dict], model_bytes: int) -> bool:
    ok = True
    for rule in dict.fromkeys(rule for rule, _ in results):
        counts = sorted(nodes for r, nodes in results if r == rule)
        fewest, most = results[rule, counts[0]], results[rule, counts[-1]]
        growth = most["VmHWM"] / fewest["VmHWM"]
        target = {"mean": TARGET_MEAN_GROWTH, **dict.fromkeys(ROBUST_RULES, TARGET_ROBUST_GROWTH)}.get(rule)
        met = target is None or growth <= target
        ok &= met
        verdict = "(baseline: no target)" if target is None else f"(target <= {target:g}): {_ok(met)}"
        print(f"{rule:>17}: peak RSS at {counts[-1]} nodes / at {counts[0]} = {growth:.2f} {verdict}")
        if rule == "mean":
            for nodes in counts:
                above = (results[rule, nodes]["VmHWM"] - results[rule, nodes]["base"]) / model_bytes
                ok &= above <= TARGET_MEAN_ABOVE_START
                print(
                    f"{rule:>17}: at {nodes} nodes the peak is {above:.2f}x the weights above the round's start "
                    f"(target <= {TARGET_MEAN_ABOVE_START:g}): {_ok(above <= TARGET_MEAN_ABOVE_START)}"
                )
                ratio = results[rule, nodes]["fold_s"] / results[rule, nodes]["read_s"]
                ok &= ratio <= TARGET_FOLD_VS_READ
                print(
                    f"{rule:>17}: at {nodes} nodes a reply's fold takes {ratio:.2f}x hashing + decoding it "
                    f"(target <= {TARGET_FOLD_VS_READ:g}): {_ok(ratio <= TARGET_FOLD_VS_READ)}"
                )
    return ok


def _ok(met: bool) -> str:
    return "OK" if met else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 8, 32, 64])
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--params-scale", type=float, default=1.0, help="x every tensor's first dimension")
    parser.add_argument("--geometry", type=Path, default=Path(tempfile.gettempdir()) / "zk0-smolvla-trainable.json")
    parser.add_argument("--spill-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    layout = geometry(args.geometry, args.params_scale)
    params = sum(math.prod(shape) for _, shape in layout)
    print(
        f"{os.cpu_count()} CPUs, {memory_available() / GiB:.1f} GiB available, "
        f"{shutil.disk_usage(args.spill_dir).free / GiB:.0f} GiB free in {args.spill_dir}; trainable: "
        f"{params / 1e6:.1f}M parameters in {len(layout)} tensors ({4 * params / 2**20:.0f} MiB fp32); "
        "replies in bf16-delta"
    )
    with tempfile.TemporaryDirectory(prefix="zk0-server-scale-", dir=args.spill_dir) as spill_root:
        results = run_all(args.rules, args.nodes, layout, Path(spill_root))
    return 0 if check_targets(results, 4 * params) else 1


if __name__ == "__main__":
    sys.exit(main())
