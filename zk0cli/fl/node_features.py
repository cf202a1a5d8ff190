"""The nodes' dataset features, for a server that has no held-out data of its own.

The server must build the same SmolVLA as the nodes (to start the trainable weights and to write
checkpoints), and SmolVLA's input and output layers follow the dataset's features. Without an
eval dataset, the server asks the nodes first: each answers a Flower query message with its
dataset's feature names, dtypes and shapes, and its fps. Never a value and never a statistic:
normalisation stays on each node, and the server's checkpoints carry no statistics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from zk0cli.core.errors import bad_input, unreachable
from zk0cli.fl.run_config import RunConfig

FEATURES = "features"  # ConfigRecord key of a query reply: the features as JSON
WAIT_POLL_S = 1.0


def public_features(features: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A dataset's features as the server may see them: dtype, shape and names of each, nothing
    more (LeRobot's video ``info`` and any statistics stay behind)."""
    return {
        key: {"dtype": str(spec["dtype"]), "shape": list(spec["shape"]), "names": spec.get("names")}
        for key, spec in features.items()
    }


def query_reply(msg: Message, features: dict[str, dict[str, Any]], fps: int, dataset: str) -> Message:
    info = ConfigRecord({FEATURES: json.dumps(public_features(features)), "fps": int(fps), "dataset": dataset})
    return Message(RecordDict({FEATURES: info}), reply_to=msg)


@dataclass
class FeaturesOnlyMeta:
    """What LeRobot's ``make_policy`` reads of a dataset's metadata, without the dataset."""

    features: dict[str, dict[str, Any]]
    fps: int
    stats: None = None
    datasets: list[str] = field(default_factory=list)  # the node datasets that described them

    @property
    def camera_keys(self) -> list[str]:
        return [key for key, spec in self.features.items() if spec["dtype"] in ("video", "image")]


def ask_nodes(grid: Grid, config: RunConfig) -> FeaturesOnlyMeta:
    """Wait for ``min-available-nodes`` nodes, ask each for its features, and insist they agree."""
    nodes = _wait_for_nodes(grid, config)
    messages = [
        Message(RecordDict({"config": ConfigRecord({"ask": FEATURES})}), dst_node_id=n, message_type=MessageType.QUERY)
        for n in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=config.round_timeout_s))
    answers: dict[str, tuple[str, str, int]] = {}  # node -> (dataset, features JSON, fps)
    errors = []
    for reply in replies:
        if reply.has_error():
            errors.append(str(reply.error.reason or "an error without a reason"))
            continue
        info = reply.content[FEATURES]
        fps = info["fps"]
        answers[str(reply.metadata.src_node_id)] = (str(info["dataset"]), str(info[FEATURES]), int(str(fps)))
    if not answers:
        why = f": {errors[0][:300]}" if errors else ""
        raise unreachable(
            f"no node described its dataset, so the server cannot build the policy{why}",
            hint=(
                "see `zk0 logs node NAME` on the nodes; or give the server held-out data: "
                "zk0 config set run.eval-datasets URI"
            ),
        )
    distinct = {(features, fps) for _, features, fps in answers.values()}
    if len(distinct) > 1:
        described = _differences([(dataset, json.loads(features), fps) for dataset, features, fps in answers.values()])
        raise bad_input(
            f"the nodes' datasets do not share one set of features, so one policy cannot serve them ({described})",
            hint="every node needs the same robot: the same joints, cameras and fps (`zk0 dataset validate`)",
        )
    features, fps = distinct.pop()
    return FeaturesOnlyMeta(json.loads(features), fps, datasets=sorted(d for d, _, _ in answers.values()))


def _wait_for_nodes(grid: Grid, config: RunConfig) -> list[int]:
    deadline = time.monotonic() + config.round_timeout_s
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= config.min_available_nodes:
            return nodes
        if time.monotonic() >= deadline:
            raise unreachable(
                f"only {len(nodes)} of the {config.min_available_nodes} nodes a run needs connected in "
                f"{config.round_timeout_s:g} s",
                hint="join more nodes, or lower min-available-nodes: zk0 run --set min-available-nodes=N",
            )
        time.sleep(WAIT_POLL_S)


def _differences(answers: list[tuple[str, dict[str, dict[str, Any]], int]]) -> str:
    """Each dataset's value of what differs between them: fps, or a feature's dtype and shape."""
    keys = sorted({key for _, features, _ in answers for key in features})
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for _, f, _ in answers}) > 1]
    parts = []
    for dataset, features, fps in answers:
        shown = [
            f"{k} {features[k]['dtype']} {features[k]['shape']}" if k in features else f"no {k}" for k in differing
        ]
        if len({fps for _, _, fps in answers}) > 1:
            shown.append(f"{fps} fps")
        parts.append(f"{dataset}: {', '.join(shown[:4])}")
    return "; ".join(parts)
