"""The federation's side of the snapshot: runs and nodes as the SuperLink's Control API reports them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from zk0cli.core.timefmt import epoch_from_iso
from zk0cli.services.flower_control import ControlConnection, control_call
from zk0cli.services.status.model import FederationNode

HEARTBEAT_PATIENCE = 2  # Flower's: a node is online until last heartbeat + 2 x its interval


@dataclass
class SuperLinkData:
    runs: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[FederationNode] = field(default_factory=list)
    now: float | None = None


def read_superlink(connection: ControlConnection, *, timeout_s: float) -> SuperLinkData:
    runs = control_call(connection, "list-runs", "ListRunsResponse", timeout_s=timeout_s)
    nodes = control_call(connection, "list-nodes", "ListNodesResponse", timeout_s=timeout_s)
    now = epoch_from_iso(nodes.now) or time.time()
    data = SuperLinkData(now=now)
    for entry in runs.run_dict:
        run = entry.value
        status = run.status.status + (f":{run.status.sub_status}" if run.status.sub_status else "")
        data.runs.append(
            {
                "run_id": run.run_id,
                "status": status,
                "pending_at": epoch_from_iso(run.pending_at),
                "running_at": epoch_from_iso(run.running_at),
                "finished_at": epoch_from_iso(run.finished_at),
                "details": run.status.details,
                "bytes_sent": run.bytes_sent,
                "bytes_recv": run.bytes_recv,
            }
        )
    data.runs.sort(key=lambda r: r["pending_at"] or 0, reverse=True)
    for info in nodes.nodes_info:
        data.nodes.append(
            FederationNode(info.node_id, name=info.name, status=info.status, last_seen_s=_last_seen(info, now))
        )
    data.nodes.sort(key=lambda n: (n.status != "online", n.node_id))
    return data


def _last_seen(info, now: float) -> float | None:
    """Seconds since the node's last heartbeat, from Flower's online_until bookkeeping."""
    if not info.online_until:
        return None
    if info.status == "online" or not info.last_deactivated_at:
        seen = info.online_until - HEARTBEAT_PATIENCE * info.heartbeat_interval
    else:  # a node that said goodbye: online_until was set to that moment
        seen = info.online_until
    return max(0.0, now - seen)
