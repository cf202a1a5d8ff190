"""The federation's side of the snapshot: runs and nodes as the SuperLink's Control API reports them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from zk0cli.services.flower_control import ControlClient, ControlConnection, FlowerNode
from zk0cli.services.status.model import FederationNode

HEARTBEAT_PATIENCE = 2  # Flower's: a node is online until last heartbeat + 2 x its interval


@dataclass
class SuperLinkData:
    runs: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[FederationNode] = field(default_factory=list)
    now: float | None = None


def read_superlink(connection: ControlConnection, *, timeout_s: float) -> SuperLinkData:
    control = ControlClient(connection, timeout_s=timeout_s)
    runs = control.list_runs()
    nodes = control.list_nodes()
    now = control.now or time.time()
    data = SuperLinkData(runs=[run.to_dict() for run in runs], now=now)
    for node in nodes:
        data.nodes.append(
            FederationNode(node.node_id, name=node.name, status=node.status, last_seen_s=_last_seen(node, now))
        )
    data.nodes.sort(key=lambda n: (n.status != "online", n.node_id))
    return data


def _last_seen(node: FlowerNode, now: float) -> float | None:
    """Seconds since the node's last heartbeat, from Flower's online_until bookkeeping."""
    if not node.online_until:
        return None
    if node.status == "online" or node.offline_at is None:
        seen = node.online_until - HEARTBEAT_PATIENCE * node.heartbeat_interval_s
    else:  # a node that said goodbye: online_until was set to that moment
        seen = node.online_until
    return max(0.0, now - seen)
