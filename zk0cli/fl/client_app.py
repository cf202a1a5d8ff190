"""The ClientApp: train and evaluate the global trainable weights on this node's own data.

train: verify the digest of the global weights -> load them into the node's policy -> train
with zk0's one loop (FedProx mu and lr from the server) -> reply with ONLY the trainable
parameters (fp32, or their bf16 delta), the reply's digest and the metrics.
evaluate: verify -> load -> deterministic loss and action error on the held-out episodes.
query: the dataset's feature names and shapes, for a server without held-out data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from numpy.typing import NDArray

from zk0cli.core.errors import Zk0Error
from zk0cli.fl import integrity
from zk0cli.fl.node import NodeRuntime, ProgressLog, runtime
from zk0cli.fl.run_config import RunConfig
from zk0cli.fl.strategy import ARRAYS, CONFIG, INFO, METRICS, SAMPLES

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    from zk0cli.policy.train import TrainConfig
    from zk0cli.policy.train import train as train_policy

    config = RunConfig.from_mapping(context.run_config)
    node = runtime(context.node_config, config)
    round_config = _round_config(msg)
    global_weights = load_global(node, _global_arrays(msg), str(round_config["arrays-sha256"]))
    server_round = int(_number(round_config, "server-round"))
    settings = TrainConfig(
        steps=config.local_steps,
        epochs=config.local_epochs or None,
        batch_size=config.batch_size,
        lr=_number(round_config, "lr"),
        eta_min=min(config.eta_min, _number(round_config, "lr")),
        proximal_mu=_number(round_config, "proximal-mu"),
        seed=_seed(config, context, server_round),
    )
    result = train_policy(
        node.built,
        node.train_set,
        settings,
        global_params=_as_tensors(global_weights),
        progress=ProgressLog(server_round, node.dataset_name),
    )
    metrics = result.metrics()
    return train_reply(msg, node, _local_weights(node), global_weights, str(round_config["uplink"]), metrics)


def train_reply(
    msg: Message,
    node: NodeRuntime,
    local: Mapping[str, NDArray[np.float32]],
    global_weights: Mapping[str, NDArray[np.float32]],
    encoding: str,
    metrics: Mapping[str, float | int],
) -> Message:
    """The reply the server checks: update arrays, their digest and encoding, metrics, dataset."""
    update = integrity.encode_update(local, global_weights, encoding)
    info = ConfigRecord(
        {
            "sha256": integrity.digest(update),
            "uplink": encoding,
            "dataset": node.dataset_name,
            "dataset-fingerprint": node.fingerprint,
        }
    )
    return Message(RecordDict({ARRAYS: update, METRICS: MetricRecord(dict(metrics)), INFO: info}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from zk0cli.policy.train import evaluate as evaluate_policy

    config = RunConfig.from_mapping(context.run_config)
    node = runtime(context.node_config, config)
    load_global(node, _global_arrays(msg), str(_round_config(msg)["arrays-sha256"]))
    metrics: dict[str, Any] = {SAMPLES: 0, "policy_loss": float("nan"), "action_error": float("nan")}
    if node.heldout_set is not None:
        result = evaluate_policy(
            node.built,
            node.heldout_set,
            seed=config.seed,
            max_batches=config.eval_batches,
            batch_size=config.batch_size,
        )
        metrics = {
            SAMPLES: int(result["samples"]),
            "policy_loss": float(result["policy_loss"]),
            "action_error": float(result["action_mae"]),
        }
    info = ConfigRecord({"dataset": node.dataset_name})
    return Message(RecordDict({METRICS: MetricRecord(metrics), INFO: info}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The server, with no held-out data of its own, asks what the node's dataset looks like:
    feature names, dtypes, shapes and fps (:mod:`zk0cli.fl.node_features`), never its values."""
    from zk0cli.fl.node_features import query_reply

    node = runtime(context.node_config, RunConfig.from_mapping(context.run_config))
    meta = node.train_set.meta
    return query_reply(msg, meta.features, meta.fps, node.dataset_name)


def _global_arrays(msg: Message) -> ArrayRecord:
    record = msg.content[ARRAYS]
    if not isinstance(record, ArrayRecord):
        raise Zk0Error(f"the server's message holds no weights ('{ARRAYS}' is a {type(record).__name__})")
    return record


def _round_config(msg: Message) -> ConfigRecord:
    record = msg.content[CONFIG]
    if not isinstance(record, ConfigRecord):
        raise Zk0Error(f"the server's message holds no round config ('{CONFIG}' is a {type(record).__name__})")
    return record


def _number(round_config: ConfigRecord, key: str) -> float:
    value = round_config[key]
    if not isinstance(value, int | float):
        raise Zk0Error(f"the server's round config gives {key} = {value!r}, not a number")
    return float(value)


def load_global(node: NodeRuntime, arrays: ArrayRecord, claimed: str) -> dict[str, NDArray[np.float32]]:
    """Check the digest of the server's weights and load them into this node's policy."""
    from zk0cli.policy.trainable import set_trainable

    actual = integrity.digest(arrays)
    if actual != claimed:
        raise Zk0Error(
            f"global weights failed their digest check (expected {claimed[:12]}, got {actual[:12]})",
            hint="the message was corrupted or mixed up in transit; the server will retry next round",
        )
    weights = integrity.from_record(arrays)
    set_trainable(node.built.policy, _as_tensors(weights))
    return weights


def _local_weights(node: NodeRuntime) -> dict[str, NDArray[np.float32]]:
    from zk0cli.policy.trainable import get_trainable

    return {name: tensor.numpy() for name, tensor in get_trainable(node.built.policy).items()}


def _as_tensors(weights: Mapping[str, NDArray[np.float32]]) -> dict[str, Any]:
    import torch

    return {name: torch.from_numpy(value) for name, value in weights.items()}


def _seed(config: RunConfig, context: Context, server_round: int) -> int:
    """Different per client and round, reproducible across runs (simulation partitions are stable)."""
    client = int(context.node_config.get("partition-id", context.node_id))
    return (config.seed * 1_000_003 + server_round * 7919 + client) % (2**31)
