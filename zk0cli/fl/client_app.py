"""The ClientApp: train and evaluate the global trainable weights on this node's own data.

train: verify the digest of what the server sent -> the global weights (sent in full, or rebuilt
from the changes since the global this node holds: :mod:`zk0cli.fl.wire`) -> load them into the
node's policy -> train with zk0's one loop (FedProx mu and lr from the server) -> reply with ONLY
the trainable parameters (fp32, or their change in bf16/int8), the reply's digest and metrics.
A node that cannot rebuild the global replies ``need-full`` and gets full weights.
evaluate: verify -> load -> deterministic loss and action error on the held-out episodes.
query: the dataset's feature names and shapes, for a server without held-out data.
Every global loaded is also kept on the node's disk for ``zk0 export`` (:mod:`zk0cli.fl.received`).
"""

from __future__ import annotations

import logging
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
from zk0cli.fl.wire import HOLDS, NEED_FULL, NodeWire, RebuildError, node_wire

app = ClientApp()
log = logging.getLogger("zk0.node")


@app.train()
def train(msg: Message, context: Context) -> Message:
    from zk0cli.policy.train import TrainConfig
    from zk0cli.policy.train import train as train_policy

    config = RunConfig.from_mapping(context.run_config)
    node = runtime(context.node_config, config)
    round_config = _round_config(msg)
    wire = node_wire(context.node_id)
    try:
        global_weights = load_global(node, wire, _global_arrays(msg), round_config, config.int8_block_size)
    except RebuildError as exc:
        return need_full_reply(msg, str(exc))
    keep_global(msg, context, node, global_weights, wire, after_round=int(_number(round_config, "server-round")) - 1)
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
    encoding = str(round_config["uplink"])
    update = wire.encode_update(
        _local_weights(node),
        global_weights,
        encoding,
        config.int8_block_size,
        error_feedback=config.error_feedback,
        run_id=msg.metadata.run_id,
    )
    return train_reply(msg, node, wire, update, encoding, metrics)


def train_reply(
    msg: Message, node: NodeRuntime, wire: NodeWire, update: ArrayRecord, encoding: str, metrics: Mapping[str, Any]
) -> Message:
    """The reply the server checks: update arrays, their digest and encoding, metrics, dataset."""
    info = ConfigRecord(
        {
            "sha256": integrity.digest(update),
            "uplink": encoding,
            "dataset": node.dataset_name,
            "dataset-fingerprint": node.fingerprint,
            HOLDS: wire.held_digest,
        }
    )
    return Message(RecordDict({ARRAYS: update, METRICS: MetricRecord(dict(metrics)), INFO: info}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from zk0cli.policy.train import evaluate as evaluate_policy

    config = RunConfig.from_mapping(context.run_config)
    node = runtime(context.node_config, config)
    wire = node_wire(context.node_id)
    try:
        global_weights = load_global(node, wire, _global_arrays(msg), _round_config(msg), config.int8_block_size)
    except RebuildError as exc:
        return need_full_reply(msg, str(exc))
    keep_global(msg, context, node, global_weights, wire, after_round=int(_number(_round_config(msg), "server-round")))
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
    info = ConfigRecord({"dataset": node.dataset_name, HOLDS: wire.held_digest})
    return Message(RecordDict({METRICS: MetricRecord(metrics), INFO: info}), reply_to=msg)


def need_full_reply(msg: Message, reason: str) -> Message:
    """This node could not rebuild the global from the changes sent: the server sends it in full."""
    return Message(RecordDict({METRICS: MetricRecord({}), INFO: ConfigRecord({NEED_FULL: reason})}), reply_to=msg)


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


def load_global(
    node: NodeRuntime, wire: NodeWire, arrays: ArrayRecord, round_config: ConfigRecord, block: int
) -> dict[str, NDArray[np.float32]]:
    """Check the digest of what the server sent, rebuild the global weights and load them into
    this node's policy. RebuildError when the changes sent do not apply to the global this node holds."""
    from zk0cli.policy.trainable import set_trainable

    claimed, actual = str(round_config["arrays-sha256"]), integrity.digest(arrays)
    if actual != claimed:
        raise Zk0Error(
            f"global weights failed their digest check (expected {claimed[:12]}, got {actual[:12]})",
            hint="the message was corrupted or mixed up in transit; the server will retry next round",
        )
    weights = wire.receive(arrays, round_config, block)
    set_trainable(node.built.policy, _as_tensors(weights))
    return weights


def keep_global(
    msg: Message,
    context: Context,
    node: NodeRuntime,
    weights: Mapping[str, NDArray[np.float32]],
    wire: NodeWire,
    *,
    after_round: int,
) -> None:
    """Keep the global just loaded for ``zk0 export`` (:mod:`zk0cli.fl.received`), as the global
    after round ``after_round``: round N's train message carries round N-1's result, its evaluate
    message round N's. A disk that refuses it costs the export, not the round: logged, and
    training goes on."""
    from zk0cli.core.paths import Paths
    from zk0cli.fl import received
    from zk0cli.policy.build import policy_features

    try:
        received.keep(
            Paths.resolve(),
            msg.metadata.run_id,
            after_round,
            weights,
            sha256=wire.held_digest,  # rebuilding checked it: no second pass over the weights
            run_config=dict(context.run_config),
            dataset_uri=node.assignment.uri,
            dataset_fingerprint=node.fingerprint,
            features=policy_features(node.built.config),
        )
    except (OSError, Zk0Error) as exc:
        log.warning("could not keep the global weights for `zk0 export`: %s", exc)


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
