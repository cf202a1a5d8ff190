"""What a status snapshot holds: plain dataclasses, rendered by ``zk0cli.ui.status`` and ``--json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OK, UNREACHABLE, STALE = "ok", "unreachable", "stale"
ACTIVE_RUN_STATES = ("pending", "starting", "running")  # Flower's and the run record's alike


@dataclass
class SourceState:
    name: str  # services | superlink | runs | gpu
    state: str = OK  # ok | unreachable | stale
    reason: str = ""  # for unreachable/stale: what is wrong, in one line
    seconds: float = 0.0  # how long fetching it took


@dataclass
class ProcessView:
    name: str  # superlink, fleet-proxy, supernode ...
    state: str  # starting | healthy | restarting | stopped | failed
    pid: int | None = None
    uptime_s: float | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    health: str = ""  # the last health check's detail
    ports: dict[str, int] = field(default_factory=dict)
    cpu_percent: float | None = None  # the process and its descendants; None when not measured
    cpu_window_s: float | None = None  # the time the CPU percentage is averaged over
    rss_bytes: int | None = None  # the process and its descendants
    gpu_percent: float | None = None  # only filled where a GPU exists
    gpu_memory_bytes: int | None = None


@dataclass
class ServiceView:
    service: str  # "server" or "node-<name>"
    kind: str = ""  # server | node
    state: str = "unknown"
    reason: str = ""
    source: SourceState = field(default_factory=lambda: SourceState("services"))
    heartbeat_age_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    processes: list[ProcessView] = field(default_factory=list)
    probes: dict[str, dict] = field(default_factory=dict)  # remote dependencies (a node's server)
    log_file: str = ""


@dataclass
class FederationNode:
    node_id: int
    name: str = ""
    status: str = ""  # online | offline | registered | unregistered
    last_seen_s: float | None = None  # seconds before the SuperLink's "now"


@dataclass
class FederationView:
    source: SourceState
    nodes: list[FederationNode] = field(default_factory=list)
    online: int = 0
    min_nodes: int | None = None  # auto-run starts a session at this many online nodes


@dataclass
class ClientRound:
    node: str
    dataset: str = ""
    loss: float | None = None
    fedprox_loss: float | None = None
    steps: int | None = None
    seconds: float | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    outcome: str = "accepted"  # accepted | flagged (accepted, far from the others) | rejected | failed | late
    reason: str = ""  # why it was flagged, rejected or failed


@dataclass
class RunView:
    run_id: str  # Flower's run id when the run has one, else the record's name
    flwr_run_id: int | None = None
    mode: str = "federated"  # or "centralized" (`zk0 train`), from the record
    server_eval: bool | None = None  # False: the server had no held-out data (federated evaluation judged)
    status: str = ""  # Flower's status (running, finished:completed ...) or the record's own
    record: str = ""  # the run record directory, "" when none was found
    started_at: float | None = None  # epoch seconds
    round: int = 0  # rounds completed
    rounds_total: int | None = None
    elapsed_s: float | None = None
    mean_round_s: float | None = None
    eta_s: float | None = None
    last_loss: float | None = None
    best_loss: float | None = None
    best_round: int | None = None
    loss_history: list[float] = field(default_factory=list)  # server eval loss by round
    clients_round: int | None = None  # the round `clients` describes (the latest completed one)
    clients: list[ClientRound] = field(default_factory=list)
    bytes_sent: int | None = None  # SuperLink traffic of the whole run
    bytes_recv: int | None = None
    problems: list[str] = field(default_factory=list)  # unreadable or half-written record files

    @property
    def running(self) -> bool:
        return self.status.split(":")[0] in ACTIVE_RUN_STATES


@dataclass
class NodeHostView:
    service: str
    server: str = ""
    connection: str = ""  # connected | connecting | reconnecting (attempt n) | stopped | failed
    dataset: str = ""
    dataset_verdict: str = ""  # the dataset validation result recorded at join time
    last_round: int | None = None  # the last round this node finished training
    last_round_loss: float | None = None
    training: str = ""  # the local training under way, if any
    problems: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    taken_at: str
    host: str
    role: str  # server | node | "" (not initialised; panels follow what exists)
    gpu: bool = False  # a GPU tool answered: GPU columns are shown
    sources: dict[str, SourceState] = field(default_factory=dict)
    services: list[ServiceView] = field(default_factory=list)
    federation: FederationView | None = None
    runs: list[RunView] = field(default_factory=list)
    node_hosts: list[NodeHostView] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "problems": self.problems}

    @property
    def problems(self) -> list[str]:
        """Every source that is not ok, one line each (also what `--json` consumers check)."""
        found = [f"{s.name}: {s.state}: {s.reason}" for s in self.sources.values() if s.state != OK]
        found += [f"{v.service}: {v.source.state}: {v.source.reason}" for v in self.services if v.source.state != OK]
        found += [f"run {r.run_id}: {p}" for r in self.runs for p in r.problems]
        return found


def number(value: Any) -> float | None:
    """A JSON number as float; None for anything else (booleans included)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def short_status(status: str) -> str:
    """Flower's 'finished:completed' reads as 'completed'; other states as they are."""
    head, _, sub = status.partition(":")
    return sub if head == "finished" and sub else status
