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
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zk0cli.core.paths import Paths
from zk0cli.services import flower, supervisor

SOURCE_TIMEOUT_S = 2.0  # each source must answer within this, or it is shown as unreachable
STALE_AFTER_S = 15.0  # three missed supervisor heartbeats (written every 5 s)
RECENT_RUNS = 5  # run records shown besides the ones still running
HEARTBEAT_PATIENCE = 2  # Flower's: a node is online until last heartbeat + 2 x its interval
ROUND_FILE = re.compile(r"round_(\d+)_server_eval\.json")  # zk0cli.fl.records.ROUND_FILE
STATUS_FILE = "status.json"  # zk0cli.fl.records.STATUS_FILE (not imported: records loads hashlib, ~20 ms)

OK, UNREACHABLE, STALE = "ok", "unreachable", "stale"
ACTIVE_RUN_STATES = ("pending", "starting", "running")  # Flower's and the run record's alike


# --------------------------------------------------------------------------- snapshot


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
    outcome: str = "accepted"  # accepted | rejected | failed
    reason: str = ""  # why it was rejected or failed


@dataclass
class RunView:
    run_id: str  # Flower's run id when the run has one, else the record's name
    flwr_run_id: int | None = None
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


# --------------------------------------------------------------------------- small helpers


def parse_time(text: str | None) -> float | None:
    """Epoch seconds of an ISO-8601 time ('...Z' or with an offset); None when absent or invalid."""
    if not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _read_json(path: Path) -> tuple[Any, str]:
    """(document, "") or (None, what is wrong with the file in one line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except OSError as exc:
        return None, f"{path.name} cannot be read: {exc.strerror}"
    try:
        return json.loads(text), ""
    except ValueError as exc:
        what = "empty" if not text.strip() else f"not valid JSON ({exc})"
        return None, f"{path.name} is {what}"


# --------------------------------------------------------------------------- services


class CpuMeter:
    """CPU % of process trees between two refreshes (the first look averages over the lifetime)."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, float], tuple[float, float]] = {}  # (pid, create_time) -> (cpu s, monotonic)

    def measure(self, pid: int, created: float | None) -> tuple[float | None, float | None, int | None]:
        """(cpu %, window s, rss bytes) of ``pid`` and its descendants; Nones if it is gone."""
        import psutil

        try:
            leader = psutil.Process(pid)
            if created is not None and abs(leader.create_time() - created) > 1:
                return None, None, None  # the pid now belongs to another process
            tree = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return None, None, None
        cpu_s, rss = 0.0, 0
        for proc in tree:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    cpu_s += times.user + times.system + times.children_user + times.children_system
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue  # a descendant that just ended
        now = time.monotonic()
        key = (pid, leader.create_time())
        previous = self._last.get(key)
        self._last[key] = (cpu_s, now)
        if previous is not None and now > previous[1]:
            window = now - previous[1]
            return max(0.0, (cpu_s - previous[0]) / window * 100), window, rss
        window = max(time.time() - key[1], 1e-3)
        return cpu_s / window * 100, window, rss


def process_tree_pids(pid: int) -> list[int]:
    import psutil

    try:
        leader = psutil.Process(pid)
        return [pid, *(child.pid for child in leader.children(recursive=True))]
    except psutil.Error:
        return []


def read_services(paths: Paths, cpu: CpuMeter, *, stale_after_s: float = STALE_AFTER_S) -> list[ServiceView]:
    """Every service's state file, checked for staleness, with live CPU/RSS of its processes."""
    now = time.time()
    views = []
    for name in supervisor.service_names(paths):
        state = supervisor.read_state(paths, name)
        if state is None:  # the supervisor's reader refuses it: say why
            _, problem = _read_json(supervisor.ServiceFiles.of(paths, name).state)
            if problem and not problem.endswith("is missing"):  # missing: removed since it was listed
                views.append(ServiceView(name, source=SourceState("services", UNREACHABLE, f"state file: {problem}")))
            continue
        views.append(_service_view(name, state, now, cpu, stale_after_s))
    return sorted(views, key=lambda v: (v.kind != "server", v.service))


def _service_view(name: str, state: dict, now: float, cpu: CpuMeter, stale_after_s: float) -> ServiceView:
    updated = parse_time(state.get("updated_at"))
    age = None if updated is None else max(0.0, now - updated)
    view = ServiceView(
        name,
        kind=str(state.get("kind", "")),
        state=str(state.get("state", "unknown")),
        reason=str(state.get("reason", "")),
        heartbeat_age_s=age,
        info=dict(state.get("info") or {}),
        probes=dict(state.get("probes") or {}),
        log_file=str(state.get("log_file", "")),
    )
    claims_to_run = view.state not in ("stopped", "failed")
    if claims_to_run and (age is None or age > stale_after_s):
        view.source = SourceState(
            "services", STALE, f"no supervisor heartbeat for {_age_text(age)}: its supervisor is gone or hung"
        )
    live = claims_to_run and view.source.state == OK
    for proc_name, proc in (state.get("processes") or {}).items():
        view.processes.append(_process_view(proc_name, proc, now, cpu if live else None))
    return view


def _process_view(name: str, proc: dict, now: float, cpu: CpuMeter | None) -> ProcessView:
    started = parse_time(proc.get("started_at"))
    pid = proc.get("pid") if isinstance(proc.get("pid"), int) else None
    view = ProcessView(
        name,
        state=str(proc.get("state", "unknown")),
        restarts=int(proc.get("restarts") or 0),
        last_exit_code=proc.get("last_exit_code"),
        health=str((proc.get("health") or {}).get("detail", "")),
        ports=dict(proc.get("ports") or {}),
    )
    # the pid is shown only once seen alive: a stopped or stale state file may name a dead one
    if pid is not None and cpu is not None:
        view.cpu_percent, view.cpu_window_s, view.rss_bytes = cpu.measure(pid, proc.get("create_time"))
        if view.rss_bytes is not None:
            view.pid, view.uptime_s = pid, None if started is None else max(0.0, now - started)
    return view


def _age_text(age: float | None) -> str:
    return "an unknown time" if age is None else f"{age:.0f} s"


# --------------------------------------------------------------------------- SuperLink (Control API)


# The fields zk0 reads from Flower's Control API responses (flwr/proto/control.proto, run.proto,
# node.proto). Field numbers are the wire contract; fields left out are skipped by the parser.
# A map<k, v> is on the wire a repeated entry message {1: key, 2: value}.
_CONTROL_SCHEMA: dict[str, list[tuple[int, str, str, bool]]] = {  # message -> (number, name, type, repeated)
    "RunStatus": [(1, "status", "string", False), (2, "sub_status", "string", False), (3, "details", "string", False)],
    "Run": [
        (1, "run_id", "uint64", False),
        (6, "pending_at", "string", False),
        (7, "starting_at", "string", False),
        (8, "running_at", "string", False),
        (9, "finished_at", "string", False),
        (10, "status", "RunStatus", False),
        (13, "bytes_sent", "uint64", False),
        (14, "bytes_recv", "uint64", False),
    ],
    "RunDictEntry": [(1, "key", "uint64", False), (2, "value", "Run", False)],
    "ListRunsResponse": [(1, "run_dict", "RunDictEntry", True), (2, "now", "string", False)],
    "NodeInfo": [
        (1, "node_id", "uint64", False),
        (4, "status", "string", False),
        (6, "last_activated_at", "string", False),
        (7, "last_deactivated_at", "string", False),
        (9, "online_until", "double", False),
        (10, "heartbeat_interval", "double", False),
        (13, "name", "string", False),
    ],
    "ListNodesResponse": [(1, "nodes_info", "NodeInfo", True), (2, "now", "string", False)],
}
_control_classes: dict[str, type] = {}


def _control_message(message_name: str):
    """A protobuf class for one response message of ``_CONTROL_SCHEMA`` (built once, own pool)."""
    if not _control_classes:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        scalar = {
            "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
            "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
        }
        file = descriptor_pb2.FileDescriptorProto(
            name="zk0_control_subset.proto", package="zk0.control", syntax="proto3"
        )
        for message, fields in _CONTROL_SCHEMA.items():
            proto = file.message_type.add(name=message)
            for number, field_name, kind, repeated in fields:
                f = proto.field.add(name=field_name, number=number)
                f.label = f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL
                if kind in scalar:
                    f.type = scalar[kind]
                else:
                    f.type, f.type_name = f.TYPE_MESSAGE, f".zk0.control.{kind}"
        pool = descriptor_pool.DescriptorPool()  # private: never clashes with flwr's own classes
        pool.Add(file)
        for message in _CONTROL_SCHEMA:
            _control_classes[message] = message_factory.GetMessageClass(
                pool.FindMessageTypeByName(f"zk0.control.{message}")
            )
    return _control_classes[message_name]


@dataclass(frozen=True)
class ControlConnection:
    host: str
    port: int
    root_ca: str | None  # None: plain HTTP (`--insecure`)

    @classmethod
    def load(cls, paths: Paths) -> ControlConnection | None:
        """The ``zk0-local`` connection zk0 wrote for the flwr CLI; None when there is none."""
        import tomllib

        path = flower.cli_home(paths) / "config.toml"
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        connection = (document.get("superlink") or {}).get(flower.CLI_CONNECTION) or {}
        host, _, port = str(connection.get("address", "")).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{path} has no usable address for {flower.CLI_CONNECTION}")
        return cls(
            host.strip("[]"), int(port), None if connection.get("insecure") else connection.get("root-certificates")
        )


def control_call(connection: ControlConnection, method: str, response_type: str, *, timeout_s: float):
    """POST an empty request to ``/v1/control/<method>`` and parse the protobuf response."""
    import http.client

    if connection.root_ca is None:
        conn = http.client.HTTPConnection(connection.host, connection.port, timeout=timeout_s)
    else:
        import ssl

        context = ssl.create_default_context(cafile=connection.root_ca)
        conn = http.client.HTTPSConnection(connection.host, connection.port, timeout=timeout_s, context=context)
    try:
        conn.request(
            "POST",
            f"/v1/control/{method}",
            body=b"",
            headers={"content-type": "application/protobuf", "accept": "application/protobuf"},
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        detail = body.decode("utf-8", errors="replace").strip().splitlines()
        raise ConnectionError(f"HTTP {response.status} from {method}" + (f": {detail[0][:200]}" if detail else ""))
    message = _control_message(response_type)()
    message.ParseFromString(body)
    return message


def control_failure(exc: BaseException) -> str:
    """One line saying why the Control API could not be asked."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running? `zk0 server serve`)"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if exc.__class__.__name__.startswith("SSL"):
        return f"TLS failed: {exc}"
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


@dataclass
class SuperLinkData:
    runs: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[FederationNode] = field(default_factory=list)
    now: float | None = None


def read_superlink(connection: ControlConnection, *, timeout_s: float = SOURCE_TIMEOUT_S) -> SuperLinkData:
    runs = control_call(connection, "list-runs", "ListRunsResponse", timeout_s=timeout_s)
    nodes = control_call(connection, "list-nodes", "ListNodesResponse", timeout_s=timeout_s)
    now = parse_time(nodes.now) or time.time()
    data = SuperLinkData(now=now)
    for entry in runs.run_dict:
        run = entry.value
        status = run.status.status + (f":{run.status.sub_status}" if run.status.sub_status else "")
        data.runs.append(
            {
                "run_id": run.run_id,
                "status": status,
                "pending_at": parse_time(run.pending_at),
                "running_at": parse_time(run.running_at),
                "finished_at": parse_time(run.finished_at),
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


# --------------------------------------------------------------------------- run records


class RunRecordReader:
    """Reads run records, re-parsing only the files that changed since the last refresh."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[tuple[int, int], Any, str]] = {}

    def read_json(self, path: Path) -> tuple[Any, str]:
        try:
            stat = path.stat()
        except OSError:
            self._cache.pop(path, None)
            return _read_json(path)
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        document, problem = _read_json(path)
        self._cache[path] = (key, document, problem)
        return document, problem

    def recent(self, runs_dir: Path, *, limit: int = RECENT_RUNS) -> list[Path]:
        """Record directories, newest first: the ``limit`` newest plus any still running."""
        try:
            dirs = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            return []
        dirs.sort(key=_record_mtime, reverse=True)
        return [d for i, d in enumerate(dirs) if i < limit or self._running(d)]

    def _running(self, root: Path) -> bool:
        status, _ = self.read_json(root / STATUS_FILE)
        return isinstance(status, dict) and status.get("state") in ACTIVE_RUN_STATES

    def read(self, root: Path, *, now: float) -> RunView:
        view = RunView(run_id=root.name, record=str(root))
        status, problem = self.read_json(root / STATUS_FILE)
        if problem and not problem.endswith("is missing"):  # missing: the run is being set up
            view.problems.append(problem)
        status = status if isinstance(status, dict) else {}
        view.status = str(status.get("state", "")) or "unknown"
        if status.get("error"):
            view.problems.append(f"run failed: {status['error']}")
        rounds = self._rounds(root, view)
        config, problem = self.read_json(root / "config.json")
        if problem and (rounds or view.status in ("running", "completed")):
            view.problems.append(problem)  # written before round 0: missing by now means lost or damaged
        config = config if isinstance(config, dict) else {}
        run_config = config.get("run_config") if isinstance(config.get("run_config"), dict) else {}
        total = run_config.get("num-server-rounds", status.get("rounds"))
        view.rounds_total = total if isinstance(total, int) else None
        resumes = config.get("resumes") if isinstance(config.get("resumes"), list) else []
        latest = resumes[-1].get("flwr_run_id") if resumes and isinstance(resumes[-1], dict) else None
        flwr_run_id = latest or config.get("flwr_run_id", status.get("flwr_run_id"))  # a resume writes it now
        view.flwr_run_id = flwr_run_id if isinstance(flwr_run_id, int) and flwr_run_id > 0 else None
        if view.flwr_run_id is not None:
            view.run_id = str(view.flwr_run_id)
        _fill_progress(view, rounds)
        started = view.started_at = _record_started(root)
        ended = _number(status.get("time")) if not view.running else None
        if started is not None:
            view.elapsed_s = max(0.0, (ended or now) - started)
        return view

    def _rounds(self, root: Path, view: RunView) -> list[dict[str, Any]]:
        found = []
        for path in root.iterdir():
            match = ROUND_FILE.fullmatch(path.name)
            if not match:
                continue
            entry, problem = self.read_json(path)
            if problem or not isinstance(entry, dict) or entry.get("round") != int(match.group(1)):
                view.problems.append(problem or f"{path.name} does not describe round {match.group(1)}")
                continue
            found.append(entry)
        return sorted(found, key=lambda e: e["round"])


def _record_mtime(root: Path) -> float:
    try:
        return max(p.stat().st_mtime for p in (root, root / "config.json", root / STATUS_FILE) if p.exists())
    except (OSError, ValueError):
        return 0.0


def _record_started(root: Path) -> float | None:
    """When the run began: the ServerApp writes config.json before round 0."""
    try:
        return (root / "config.json").stat().st_mtime
    except OSError:
        return None


def _fill_progress(view: RunView, rounds: list[dict[str, Any]]) -> None:
    """Rounds done, mean round time, loss history, and the latest round's clients."""
    trained = [e for e in rounds if e["round"] >= 1]
    view.round = max((e["round"] for e in trained), default=0)
    seconds = [s for s in (_number(e.get("seconds")) for e in trained) if s is not None]
    view.mean_round_s = sum(seconds) / len(seconds) if seconds else None
    history = []
    for entry in rounds:
        loss = _number(((entry.get("server_eval") or {}).get("composite") or {}).get("policy_loss"))
        if loss is not None:
            history.append((entry["round"], loss))
    view.loss_history = [loss for _, loss in history]
    if history:
        view.last_loss = history[-1][1]
        view.best_round, view.best_loss = min(history, key=lambda item: item[1])
    if trained:
        latest = trained[-1]
        view.clients_round = latest["round"]
        view.clients = client_rounds(latest)


def client_rounds(entry: dict[str, Any]) -> list[ClientRound]:
    """Each client of one round record: accepted ones with their metrics, then rejected and failed."""
    rows = []
    for client in (entry.get("clients") or {}).get("each") or []:
        metrics = client.get("metrics") or {}
        rows.append(
            ClientRound(
                node=str(client.get("node", "?")),
                dataset=str(client.get("dataset", "")),
                loss=_number(metrics.get("loss")),
                fedprox_loss=_number(metrics.get("fedprox_loss")),
                steps=_int(metrics.get("steps")),
                seconds=_number(metrics.get("seconds")),
                bytes_up=_int(client.get("bytes_up", metrics.get("bytes_up"))),
                bytes_down=_int(client.get("bytes_down", metrics.get("bytes_down"))),
            )
        )
    for outcome in ("rejected", "failed"):
        for item in entry.get(outcome) or []:
            rows.append(
                ClientRound(
                    node=str(item.get("node", "?")),
                    dataset=str(item.get("dataset", "")),
                    outcome=outcome,
                    reason=str(item.get("reason", "")),
                )
            )
    return rows


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def merge_runs(records_views: list[RunView], link: SuperLinkData | None, now: float) -> list[RunView]:
    """One row per run: SuperLink runs (status and timing from Flower) joined to their records.

    A record belongs to a Flower run when its config.json or status.json names it
    (``flwr_run_id``); records of runs this SuperLink does not know (``zk0 sim`` runs on their
    own local SuperLink) and all records while it is unreachable keep their own status.
    """
    if link is None:
        return records_views
    by_id = {view.flwr_run_id: view for view in records_views if view.flwr_run_id is not None}
    merged = []
    for run in link.runs:
        view = by_id.pop(run["run_id"], None) or RunView(run_id=str(run["run_id"]), flwr_run_id=run["run_id"])
        view.status = run["status"]
        started = run["running_at"] or run["pending_at"]
        view.started_at = run["pending_at"] or view.started_at
        if started is not None:
            view.elapsed_s = max(0.0, (run["finished_at"] or link.now or now) - started)
        view.bytes_sent, view.bytes_recv = run["bytes_sent"], run["bytes_recv"]
        if run["details"] and run["status"].endswith("failed"):
            view.problems.append(f"run failed: {run['details']}")
        merged.append(view)
    linked = {id(view) for view in merged}
    return merged + [view for view in records_views if id(view) not in linked]


def _eta(view: RunView) -> float | None:
    if not view.running or view.mean_round_s is None or view.rounds_total is None:
        return None
    return max(0, view.rounds_total - view.round) * view.mean_round_s


# --------------------------------------------------------------------------- GPU


@dataclass
class GpuUse:
    percent: float | None = None
    memory_bytes: int | None = None


def gpu_tool() -> str:
    """'nvml' when pynvml is installed, 'nvidia-smi' when that is on PATH, '' when neither."""
    import importlib.util

    if importlib.util.find_spec("pynvml") is not None:
        return "nvml"
    return "nvidia-smi" if shutil.which("nvidia-smi") else ""


def read_gpu(tool: str, *, timeout_s: float = SOURCE_TIMEOUT_S) -> dict[int, GpuUse]:
    """GPU use per pid from every GPU on the machine."""
    return _read_nvml() if tool == "nvml" else _read_nvidia_smi(timeout_s)


def _read_nvml() -> dict[int, GpuUse]:
    import pynvml

    pynvml.nvmlInit()
    try:
        usage: dict[int, GpuUse] = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                use = usage.setdefault(proc.pid, GpuUse())
                use.memory_bytes = (use.memory_bytes or 0) + int(proc.usedGpuMemory or 0)
            try:
                samples = pynvml.nvmlDeviceGetProcessUtilization(handle, 0)
            except pynvml.NVMLError:
                samples = []  # no samples yet, or not supported on this GPU
            for sample in samples:
                use = usage.setdefault(sample.pid, GpuUse())
                use.percent = (use.percent or 0.0) + float(sample.smUtil)
        return usage
    finally:
        pynvml.nvmlShutdown()


def _read_nvidia_smi(timeout_s: float) -> dict[int, GpuUse]:
    apps = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=True,
    ).stdout
    pmon = subprocess.run(
        ["nvidia-smi", "pmon", "-c", "1", "-s", "u"], capture_output=True, text=True, timeout=timeout_s, check=True
    ).stdout
    return parse_smi_usage(apps, pmon)


def parse_smi_usage(compute_apps_csv: str, pmon_text: str) -> dict[int, GpuUse]:
    """Per-pid memory (``--query-compute-apps=pid,used_memory``, MiB) and SM % (``pmon -s u``)."""
    usage: dict[int, GpuUse] = {}
    for line in compute_apps_csv.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == 2 and cells[0].isdigit() and cells[1].isdigit():
            use = usage.setdefault(int(cells[0]), GpuUse())
            use.memory_bytes = (use.memory_bytes or 0) + int(cells[1]) * 1024 * 1024
    for line in pmon_text.splitlines():
        cells = line.split()
        if line.startswith("#") or len(cells) < 4 or not cells[1].isdigit():
            continue
        if re.fullmatch(r"\d+(\.\d+)?", cells[3]):  # '-' when the process had no sample
            use = usage.setdefault(int(cells[1]), GpuUse())
            use.percent = (use.percent or 0.0) + float(cells[3])
    return usage


def _apply_gpu(services: list[ServiceView], usage: dict[int, GpuUse]) -> None:
    for service in services:
        for proc in service.processes:
            if proc.pid is None:
                continue
            tree = [usage[pid] for pid in process_tree_pids(proc.pid) if pid in usage]
            proc.gpu_percent = sum(u.percent or 0.0 for u in tree) if tree else 0.0
            proc.gpu_memory_bytes = sum(u.memory_bytes or 0 for u in tree) if tree else 0


# --------------------------------------------------------------------------- node hosts


# A node's training progress line, written by the ClientApp (zk0cli.fl.node.ProgressLog) to the
# SuperNode's output, which the supervisor copies into the node's log.
TRAINING_LINE = re.compile(
    r"round (?P<round>\d+) (?P<dataset>.*?) \[[#.]*\] (?P<step>\d+)/(?P<total>\d+) loss (?P<loss>\S+)"
)
LOG_TAIL_BYTES = 64 * 1024


def node_host(view: ServiceView) -> NodeHostView:
    """What a node operator wants to know about one joined node: its service state and log."""
    info = view.info
    host = NodeHostView(
        view.service,
        server=str(info.get("server", "")),
        dataset=str(info.get("dataset", "")),
        dataset_verdict=str(info.get("dataset_validation", "")),
        connection=_connection(view),
    )
    if view.source.state != OK:
        host.problems.append(view.source.reason)
    if view.log_file:
        finished, current = last_training(Path(view.log_file))
        if finished is not None:
            host.last_round, host.last_round_loss = finished
        if current is not None:
            host.training = current
    return host


def _connection(view: ServiceView) -> str:
    if view.source.state == STALE:
        return "unknown (supervisor gone)"
    if view.state == "restarting":
        attempt = max((p.restarts for p in view.processes), default=0) + 1
        return f"reconnecting (restart {attempt})"
    server = view.probes.get("server") or {}
    if view.state in ("healthy", "starting") and server.get("ok") is False:
        return f"reconnecting (attempt {server.get('consecutive_failures', '?')}): {server.get('detail', '')}".rstrip(
            ": "
        )
    if view.state == "starting":
        return "connecting"
    return "connected" if view.state == "healthy" else view.state


def last_training(log: Path) -> tuple[tuple[int, float | None] | None, str | None]:
    """((round, loss) of the last finished local training, 'round r: step s/t' if one is under way)."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None, None
    finished, current = None, None
    for match in TRAINING_LINE.finditer(tail):
        step, total = int(match["step"]), int(match["total"])
        if step >= total:
            finished, current = (int(match["round"]), _float_text(match["loss"])), None
        else:
            current = f"round {match['round']}: step {step}/{total}, loss {match['loss']}"
    return finished, current


def _float_text(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- the collector


class StatusCollector:
    """Takes snapshots; keeps what makes the next one cheaper (CPU samples, parsed records).

    Each source runs on its own thread and gets ``timeout_s``; one that has not answered is shown
    as unreachable and is not asked again until its earlier call has returned.
    """

    def __init__(
        self,
        paths: Paths,
        *,
        role: str = "",
        timeout_s: float = SOURCE_TIMEOUT_S,
        stale_after_s: float = STALE_AFTER_S,
        recent_runs: int = RECENT_RUNS,
    ) -> None:
        self.paths = paths
        self.role = role
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.recent_runs = recent_runs
        self._busy: dict[str, _Fetch] = {}
        self._cpu = CpuMeter()
        self._records = RunRecordReader()
        self._gpu_tool = gpu_tool()

    def snapshot(self) -> Snapshot:
        now = time.time()
        connection, connection_problem = self._connection()
        jobs: dict[str, Callable[[], Any]] = {
            "services": self._services,
            "runs": lambda: [
                self._records.read(root, now=now)
                for root in self._records.recent(self.paths.runs_dir, limit=self.recent_runs)
            ],
        }
        if connection is not None:
            jobs["superlink"] = lambda: read_superlink(connection, timeout_s=self.timeout_s)
        if self._gpu_tool:
            jobs["gpu"] = lambda: read_gpu(self._gpu_tool, timeout_s=self.timeout_s)
        results, sources = self._gather(jobs)
        if connection_problem:
            sources["superlink"] = SourceState("superlink", UNREACHABLE, connection_problem)
        return self._assemble(now, results, sources)

    def _services(self) -> tuple[list[ServiceView], list[NodeHostView]]:
        services = read_services(self.paths, self._cpu, stale_after_s=self.stale_after_s)
        return services, [node_host(s) for s in services if s.kind == "node"]

    def _connection(self) -> tuple[ControlConnection | None, str]:
        try:
            connection = ControlConnection.load(self.paths)
        except (OSError, ValueError) as exc:
            return None, f"cannot read the flwr CLI connection: {exc}"
        if connection is None and (
            self.role == "server" or supervisor.ServiceFiles.of(self.paths, "server").state.exists()
        ):
            return None, "no local SuperLink connection configured (start the server: `zk0 server serve`)"
        return connection, ""

    def _gather(self, jobs: dict[str, Callable[[], Any]]) -> tuple[dict[str, Any], dict[str, SourceState]]:
        deadline = time.monotonic() + self.timeout_s
        fetches: dict[str, _Fetch] = {}
        sources: dict[str, SourceState] = {}
        for name, job in jobs.items():
            busy = self._busy.get(name)
            if busy is not None and not busy.done.is_set():
                waited = time.monotonic() - busy.started
                sources[name] = SourceState(name, UNREACHABLE, f"no answer for {waited:.0f} s (still waiting)")
                continue
            fetches[name] = self._busy[name] = _Fetch(name, job)
        results: dict[str, Any] = {}
        for name, fetch in fetches.items():
            if not fetch.done.wait(max(0.0, deadline - time.monotonic())):
                sources[name] = SourceState(name, UNREACHABLE, f"no answer within {self.timeout_s:g} s")
            elif fetch.error is not None:
                error = fetch.error
                reason = control_failure(error) if name == "superlink" else f"{type(error).__name__}: {error}"
                sources[name] = SourceState(name, UNREACHABLE, reason, seconds=fetch.seconds)
            else:
                results[name] = fetch.result
                sources[name] = SourceState(name, OK, seconds=fetch.seconds)
        return results, sources

    def _assemble(self, now: float, results: dict[str, Any], sources: dict[str, SourceState]) -> Snapshot:
        services, node_hosts = results.get("services", ([], []))
        usage = results.get("gpu")
        if usage is not None:
            _apply_gpu(services, usage)
        link: SuperLinkData | None = results.get("superlink")
        runs = merge_runs(results.get("runs", []), link, now)
        for view in runs:
            view.eta_s = _eta(view)
        runs.sort(key=lambda v: (not v.running, -(v.started_at or 0.0)))
        federation = None
        if "superlink" in sources:
            server = next((s for s in services if s.kind == "server"), None)
            federation = FederationView(
                sources["superlink"],
                nodes=link.nodes if link else [],
                online=sum(n.status == "online" for n in link.nodes) if link else 0,
                min_nodes=_min_nodes(server),
            )
        return Snapshot(
            taken_at=_now_iso(),
            host=os.uname().nodename,
            role=self.role,
            gpu=usage is not None,
            sources=sources,
            services=services,
            federation=federation,
            runs=runs,
            node_hosts=node_hosts,
        )


class _Fetch:
    """One source read on its own daemon thread: a hung one is left behind, never waited for at exit."""

    def __init__(self, name: str, job: Callable[[], Any]) -> None:
        self.started = time.monotonic()
        self.seconds = 0.0
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(job,), name=f"zk0-status-{name}", daemon=True).start()

    def _run(self, job: Callable[[], Any]) -> None:
        try:
            self.result = job()
        except Exception as exc:  # noqa: BLE001 - any failure of one source is shown, never raised
            self.error = exc
        finally:
            self.seconds = round(time.monotonic() - self.started, 3)
            self.done.set()


def _min_nodes(server: ServiceView | None) -> int | None:
    """The online-node threshold of the server's auto-run, when it has one."""
    value = server.info.get("min_nodes") if server is not None else None
    return value if isinstance(value, int) else None


def collect(paths: Paths, *, role: str = "", timeout_s: float = SOURCE_TIMEOUT_S) -> Snapshot:
    """One snapshot, for `zk0 status` and `zk0 status --json`."""
    return StatusCollector(paths, role=role, timeout_s=timeout_s).snapshot()
