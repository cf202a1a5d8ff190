"""Bytes on the wire per client per round, for the real SmolVLA geometry.

    .venv/bin/python bench/wire_bytes.py

Builds SmolVLA with the SmolVLM2-500M geometry (random weights, no download; ~450M parameters),
makes one round's messages with zk0's own code (the strategy's train message to one client, the
client app's reply in both uplink encodings) and measures them serialised the way Flower pushes
them (:func:`zk0cli.fl.loopback.wire_bytes`: every unique deflated object, chunks included).
Also counts those objects: Flower moves each one in its own HTTP round trip.

Baselines, from the same policy:
  (a) the full fp32 state dict (what the upstream system sent each way): raw bytes, no headers;
  (b) the trainable parameters x 2 bytes (bf16, raw).
Targets for the client's upload (bf16-delta, zk0's default): >= 8x less than (a), <= 1.05x (b).
Exit code 1 when a target is missed.
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
    from flwr.app import ConfigRecord
    from loopback_grid import LoopbackGrid, serialise, wire_bytes  # tests/: test and bench code, not shipped

    from zk0cli.datasets.sample import write_sample
    from zk0cli.datasets.uri import open_metadata, parse_uri
    from zk0cli.fl import client_app, integrity
    from zk0cli.fl.node import Assignment, NodeRuntime
    from zk0cli.fl.run_config import RunConfig
    from zk0cli.fl.strategy import Zk0FedProx
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
    node = NodeRuntime(Assignment(str(uri)), uri, built, None, None, "0" * 64)
    grid = LoopbackGrid(client_app.app, [{}], config.to_flwr())  # only its node list is used here
    rows = []
    for bf16 in (True, False):
        strategy = Zk0FedProx(
            RunConfig(uplink_bf16_delta=bf16, min_available_nodes=1), global_weights, lambda *_: None, lambda *_: None
        )
        message = next(iter(strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), grid)))
        message.metadata.__dict__["_message_id"] = "bench"
        reply = client_app.train_reply(
            message, node, local, global_weights, strategy.encoding, {"loss": 1.0, "samples": 8}
        )
        rows.append(
            (strategy.encoding, wire_bytes(message), wire_bytes(reply), len(serialise(message)), len(serialise(reply)))
        )
        checked = integrity.check_update(
            reply.content["arrays"],
            str(reply.content["info"]["sha256"]),
            strategy.spec,
            strategy.encoding,
            global_weights,
        )
        assert checked.reason == "", checked.reason

    print(f"\n(a) full fp32 state dict:        {full_fp32 / 2**20:10.1f} MiB")
    print(f"(b) trainable parameters x 2 B:  {bf16_raw / 2**20:10.1f} MiB\n")
    print(f"{'uplink encoding':16} {'down MiB':>10} {'up MiB':>10} {'(a)/up':>8} {'up/(b)':>8} {'objects down/up':>16}")
    for encoding, down, up, objects_down, objects_up in rows:
        print(
            f"{encoding:16} {down / 2**20:10.1f} {up / 2**20:10.1f} {full_fp32 / up:8.2f} {up / bf16_raw:8.4f} "
            f"{objects_down:>8}/{objects_up}"
        )
    _, _, up, _, _ = rows[0]
    ok = full_fp32 / up >= TARGET_VS_FULL and up / bf16_raw <= TARGET_VS_BF16
    print(
        f"\nbf16-delta upload: {full_fp32 / up:.2f}x less than (a) (target >= {TARGET_VS_FULL:g}), "
        f"{up / bf16_raw:.4f}x (b) (target <= {TARGET_VS_BF16:g}): {'OK' if ok else 'MISSED'}"
    )
    print("download (server -> client) stays fp32: the server's master weights, exact on every node")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
