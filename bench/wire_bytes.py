"""Bytes on the wire per client per round, for the real SmolVLA geometry, in each wire encoding.

    .venv/bin/python bench/wire_bytes.py

Builds SmolVLA with the SmolVLM2-500M geometry (random weights, no download; ~450M parameters)
and makes two rounds' messages with zk0's own code: the strategy's train message to one node
(round 1 in full; round 2 the change since the global the node holds, when the encoding sends
changes), the node rebuilding the global from it (digest checked), and the node's reply. Each
is measured serialised the way Flower pushes it (:func:`loopback_grid.wire_bytes`: every unique
deflated object, chunks included); objects are counted too (one HTTP round trip each).

Baselines, from the same policy: (a) the full fp32 state dict (what the upstream system sent
each way, so 2 x (a) per client per round); (b) the trainable parameters x 2 bytes (bf16, raw).
Targets: the bf16-delta upload >= 8x less than (a) and <= 1.05x (b); int8-delta's steady round,
down + up, <= 200 MiB. Exit code 1 when a target is missed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # loopback_grid lives with the tests

TARGET_VS_FULL = 8.0
TARGET_VS_BF16 = 1.05
TARGET_TOTAL_MIB = 200.0


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="zk0-wire-") as tmp:
        os.environ.update(
            ZK0_HOME=str(Path(tmp) / "home"),
            HF_HUB_OFFLINE="1",
            HF_HOME=str(Path(tmp) / "hf"),
            HF_LEROBOT_HOME=str(Path(tmp) / "hf" / "lerobot"),
        )
        return measure(Path(tmp))


def measure(tmp: Path) -> int:
    import numpy as np
    from loopback_grid import LoopbackGrid  # tests/: test and bench code, not shipped

    from zk0cli.datasets.sample import write_sample
    from zk0cli.datasets.uri import open_metadata, parse_uri
    from zk0cli.fl import client_app, integrity
    from zk0cli.fl.node import Assignment, NodeRuntime
    from zk0cli.fl.run_config import RunConfig
    from zk0cli.fl.strategy import Zk0FedProx
    from zk0cli.fl.wire import NodeWire
    from zk0cli.policy.build import build_policy
    from zk0cli.policy.trainable import get_trainable

    started = time.perf_counter()
    dataset = write_sample(tmp / "pick", episodes=1, frames_per_episode=10, image_size=32)
    uri = parse_uri(f"local:{dataset}")
    config = RunConfig(policy="real-geometry", device="cpu", datasets=str(uri), eval_datasets=str(uri))
    built = build_policy(config.policy_spec(), open_metadata(uri))
    state = built.policy.state_dict()
    full_fp32 = sum(t.numel() * 4 for t in state.values())
    global_weights = {name: t.numpy() for name, t in get_trainable(built.policy).items()}
    trainable = sum(v.size for v in global_weights.values())
    bf16_raw = trainable * 2
    print(
        f"policy built in {time.perf_counter() - started:.0f} s: {sum(t.numel() for t in state.values()) / 1e6:.1f}M "
        f"parameters+buffers, {trainable / 1e6:.1f}M trainable in {len(global_weights)} tensors"
    )

    rng = np.random.default_rng(0)
    local = {
        name: value + rng.normal(0, 1e-4, value.shape).astype(np.float32) for name, value in global_weights.items()
    }
    aggregated = {  # the global after round 1: what a mean of such updates gives
        name: value + rng.normal(0, 3e-5, value.shape).astype(np.float32) for name, value in global_weights.items()
    }
    node = NodeRuntime(Assignment(str(uri)), uri, built, None, None, "0" * 64)
    grid = LoopbackGrid(client_app.app, [{}], config.to_flwr())  # only its node list is used here
    rows = []
    for encoding in integrity.ENCODINGS:
        strategy = Zk0FedProx(
            RunConfig(wire_encoding=encoding, min_available_nodes=1), global_weights, lambda *_: None, lambda *_: None
        )
        wire = NodeWire()
        first = round_trip(strategy, grid, 1, node, wire, local, client_app)
        strategy.global_weights = aggregated
        steady = round_trip(strategy, grid, 2, node, wire, local, client_app)
        rows.append((encoding, first, steady))

    print(f"\n(a) full fp32 state dict:        {full_fp32 / 2**20:10.1f} MiB  (upstream: each way, every round)")
    print(f"(b) trainable parameters x 2 B:  {bf16_raw / 2**20:10.1f} MiB\n")
    columns = ("down MiB", 9), ("up MiB", 8), ("total MiB", 10), ("/ 2x(a)", 8), ("objects", 8)
    print(f"{'wire encoding':14} {'round':>6} " + " ".join(f"{name:>{width}}" for name, width in columns))
    for encoding, *rounds in rows:
        for label, (down, up, objects) in zip(("first", "steady"), rounds, strict=True):
            total = down + up
            print(
                f"{encoding:14} {label:>6} {down / 2**20:9.1f} {up / 2**20:8.1f} {total / 2**20:10.1f} "
                f"{total / (2 * full_fp32):8.3f} {objects:>8}"
            )
    bf16_up = next(steady for encoding, _, steady in rows if encoding == integrity.BF16_DELTA)[1]
    int8_total = sum(next(steady for encoding, _, steady in rows if encoding == integrity.INT8_DELTA)[:2])
    ok_up = full_fp32 / bf16_up >= TARGET_VS_FULL and bf16_up / bf16_raw <= TARGET_VS_BF16
    ok_total = int8_total / 2**20 <= TARGET_TOTAL_MIB
    print(
        f"\nbf16-delta upload: {full_fp32 / bf16_up:.2f}x less than (a) (target >= {TARGET_VS_FULL:g}), "
        f"{bf16_up / bf16_raw:.4f}x (b) (target <= {TARGET_VS_BF16:g}): {'OK' if ok_up else 'MISSED'}"
    )
    print(
        f"int8-delta steady round, down + up: {int8_total / 2**20:.1f} MiB (target <= {TARGET_TOTAL_MIB:g}), "
        f"{2 * full_fp32 / int8_total:.1f}x less than upstream: {'OK' if ok_total else 'MISSED'}"
    )
    print("first round: every node gets the global in full (fp32); later ones the change since the one it holds")
    return 0 if ok_up and ok_total else 1


def round_trip(strategy, grid, server_round, node, wire, local, client_app) -> tuple[int, int, int]:
    """(bytes down, bytes up, objects down + up) of one train message to the node and its reply."""
    from flwr.app import ConfigRecord
    from loopback_grid import serialise, wire_bytes

    from zk0cli.fl import integrity

    if wire.held_digest:
        strategy._holds[str(grid.get_node_ids()[0])] = wire.held_digest  # the node's last reply said so
    message = next(iter(strategy.configure_train(server_round, strategy.initial_arrays(), ConfigRecord(), grid)))
    message.metadata.__dict__["_message_id"] = f"bench-{server_round}"
    config = message.content["config"]
    received = wire.receive(message.content["arrays"], config, strategy.config.int8_block_size)
    update = wire.encode_update(
        local, received, strategy.encoding, strategy.config.int8_block_size, error_feedback=True, run_id=1
    )
    reply = client_app.train_reply(message, node, wire, update, strategy.encoding, {"loss": 1.0, "samples": 8})
    checked = integrity.check_update(
        reply.content["arrays"],
        str(reply.content["info"]["sha256"]),
        strategy.spec,
        strategy.encoding,
        strategy.global_weights,
        strategy.config.int8_block_size,
    )
    assert checked.reason == "", checked.reason
    return wire_bytes(message), wire_bytes(reply), len(serialise(message)) + len(serialise(reply))


if __name__ == "__main__":
    sys.exit(main())
