"""One snapshot of everything `zk0 status` shows, gathered from every source that applies here.

Sources, each fetched on a worker thread with a timeout so a slow one never holds up the others
(nor the `--watch` render loop, which only ever reads the latest snapshot):

- ``services``: the supervisor's state files (``<state_dir>/services/<service>.json``, schema in
  ``zk0cli.services.supervisor``), plus live CPU/RSS of each process tree from psutil. A state
  file whose heartbeat (``updated_at``, rewritten every 5 s) is older than ``stale_after_s``
  while the service claims to run is *stale*: its supervisor is gone or hung, so its numbers are
  not shown as live.
- ``superlink``: runs and nodes from the SuperLink's Control API on loopback, called directly over
  HTTP (protobuf bodies, the same requests the flwr CLI sends) with the ``zk0-local`` connection
  zk0 writes for the flwr CLI (``zk0cli.services.flower.write_cli_connection``). A ``flwr ls``
  subprocess costs ~1 s of Python start-up; this costs a few milliseconds.
- ``runs``: run records under ``<data_dir>/runs/<run>/`` (``zk0cli.fl.records``): rounds done,
  timings, the server eval loss history and the latest round's per-client results. Round files
  are the truth (the summaries are derived from them); parsed files are cached by mtime/size.
- ``gpu``: per-process GPU utilisation and memory from NVML (pynvml) or nvidia-smi; absent when
  the machine has neither, and then no GPU column is shown anywhere.

Every source ends as ``ok``, ``unreachable`` (with the reason) or ``stale``; a corrupted or
half-written file becomes a one-line problem on the item it belongs to and the rest goes on.

Modules: ``model`` (the snapshot's dataclasses), ``local`` (supervised services and node hosts on
this machine), ``superlink`` (runs and nodes from the Control API), ``runs`` (run records), ``gpu``,
``collector`` (one snapshot from all of them, each source on its own thread).
"""

from zk0cli.services.status.collector import SOURCE_TIMEOUT_S, StatusCollector, collect
from zk0cli.services.status.model import (
    OK,
    STALE,
    UNREACHABLE,
    ClientRound,
    FederationNode,
    FederationView,
    NodeHostView,
    ProcessView,
    RunView,
    ServiceView,
    Snapshot,
    SourceState,
)
from zk0cli.services.status.runs import RunRecordReader

__all__ = [
    "OK",
    "SOURCE_TIMEOUT_S",
    "STALE",
    "UNREACHABLE",
    "ClientRound",
    "FederationNode",
    "FederationView",
    "NodeHostView",
    "ProcessView",
    "RunRecordReader",
    "RunView",
    "ServiceView",
    "Snapshot",
    "SourceState",
    "StatusCollector",
    "collect",
]
