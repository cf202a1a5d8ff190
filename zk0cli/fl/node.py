"""A node's side of a run: which data it trains on, and the policy built for it (cached).

Which dataset a node uses:
- deployment: its own ``--node-config "dataset-uri='hf:me/set'"``, all of it (minus held-out);
- simulation: the run config's ``datasets`` list and the engine's ``partition-id`` /
  ``num-partitions``: client ``i`` takes URI ``i % len(datasets)``, and clients sharing a URI
  split its training episodes between them (``episode % n``).

Each node normalises with its own dataset's statistics (they are in the processors built here
and never travel). The built policy and datasets stay cached in the process: in the Simulation
Engine a client process serves many rounds; in a deployment the node's resident ClientApp host
(:mod:`zk0cli.fl.clientapp_host`) serves them all.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zk0cli.core.errors import bad_input
from zk0cli.fl.run_config import RunConfig

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from zk0cli.datasets.uri import DatasetUri
    from zk0cli.policy.build import BuiltPolicy

log = logging.getLogger("zk0.node")


@dataclass(frozen=True)
class Assignment:
    uri: str
    partition_id: int = 0
    num_partitions: int = 1

    @property
    def label(self) -> str:
        return self.uri if self.num_partitions == 1 else f"{self.uri} [{self.partition_id}/{self.num_partitions}]"


def assign(node_config: Mapping[str, Any], config: RunConfig) -> Assignment:
    if node_config.get("dataset-uri"):
        return Assignment(str(node_config["dataset-uri"]))
    uris = config.dataset_uris()
    if "partition-id" not in node_config or not uris:
        raise bad_input(
            "this node has no dataset: neither node config 'dataset-uri' nor run config 'datasets' is set",
            hint="start the node with `zk0 node join --dataset URI` (or give `zk0 sim --dataset URI`)",
        )
    client, clients = int(node_config["partition-id"]), int(node_config.get("num-partitions", 1))
    index = client % len(uris)
    sharing = [c for c in range(clients) if c % len(uris) == index]
    return Assignment(uris[index], sharing.index(client), len(sharing))


@dataclass
class NodeRuntime:
    assignment: Assignment
    uri: DatasetUri
    built: BuiltPolicy
    train_set: LeRobotDataset
    heldout_set: LeRobotDataset | None
    fingerprint: str

    @property
    def dataset_name(self) -> str:
        suffix = f"-p{self.assignment.partition_id}" if self.assignment.num_partitions > 1 else ""
        return self.uri.name + suffix


# A Simulation Engine actor may serve several clients in turn; keep a couple of them built, not
# all (a real SmolVLA is ~2 GB each).
CACHE_SIZE = 2
_cache: dict[tuple[tuple[object, ...], Assignment], NodeRuntime] = {}


def runtime(node_config: Mapping[str, Any], config: RunConfig) -> NodeRuntime:
    """The node's policy and data for this run config, built once per process."""
    assignment = assign(node_config, config)
    setup = (
        config.policy,
        config.vlm_model_name,
        config.device,
        config.chunk_size,
        config.seed,
        config.client_eval_episodes,
    )
    key = (setup, assignment)
    if key not in _cache:
        for stale in [k for k in _cache if k[0] != setup]:
            del _cache[stale]  # another run's policy: free its memory
        while len(_cache) >= CACHE_SIZE:
            del _cache[next(iter(_cache))]  # the least recently used
        _cache[key] = _build(assignment, config)
    _cache[key] = _cache.pop(key)  # most recently used last
    return _cache[key]


def _build(assignment: Assignment, config: RunConfig) -> NodeRuntime:
    from zk0cli.datasets.partition import open_partition
    from zk0cli.datasets.uri import dataset_fingerprint, open_metadata, parse_uri
    from zk0cli.policy.build import build_policy

    uri = parse_uri(assignment.uri)
    meta = open_metadata(uri)
    built = build_policy(config.policy_spec(), meta)
    delta = built.delta_timestamps(meta)
    partition = functools.partial(
        open_partition,
        uri,
        num_partitions=assignment.num_partitions,
        partition_id=assignment.partition_id,
        heldout=config.client_eval_episodes,
        delta_timestamps=delta,
    )
    train_set = partition(split="train")
    heldout_set = partition(split="heldout") if config.client_eval_episodes else None
    log.info(
        "node dataset %s: %d training frames, %d held-out frames",
        assignment.label,
        len(train_set),
        len(heldout_set) if heldout_set is not None else 0,
    )
    return NodeRuntime(assignment, uri, built, train_set, heldout_set, dataset_fingerprint(uri))


class ProgressLog:
    """A text progress bar in the node's log, one line per tenth of the local steps."""

    WIDTH = 20

    def __init__(self, server_round: int, dataset: str):
        self.prefix = f"round {server_round} {dataset}"
        self.last_tenth = -1

    def __call__(self, step: int, total: int, loss: float) -> None:
        tenth = step * 10 // total
        if tenth == self.last_tenth and step != total:
            return
        self.last_tenth = tenth
        filled = step * self.WIDTH // total
        print(
            f"{self.prefix} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {step}/{total} loss {loss:.4f}",
            file=sys.stderr,
            flush=True,
        )
