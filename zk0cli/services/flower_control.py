"""The one client of the SuperLink's Control API: list, stop and watch runs; register, list and
unregister nodes. Every zk0 command and loop that asks the SuperLink something goes through it.

Flower 1.42 serves the Control API as ``POST /v1/control/<method>`` with protobuf bodies and
answers refusals as JSON ``{"code": N, "detail": "..."}``. zk0 calls it on loopback with the
``zk0-local`` connection it writes for the flwr CLI (:func:`zk0cli.services.flower.write_cli_connection`).
A ``flwr`` subprocess per call costs ~1 s of Python start-up; a direct call costs milliseconds.

Submitting a run stays with ``flwr run`` (:func:`zk0cli.services.runs.submit_run`): it builds and
signs the FAB from the app directory, which is Flower's packaging code, not a wire call.

The messages are declared here as the subset of fields zk0 sends and reads, built into a private
descriptor pool, rather than imported from ``flwr.proto``: importing Flower's generated classes
runs ``flwr/__init__`` (numpy and the whole app API, ~0.5 s), more than a whole ``zk0 status``
refresh. The field numbers are the wire contract; a test checks every one against Flower's own
descriptors, so the subset cannot drift.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from zk0cli.core.errors import Zk0Error, unreachable
from zk0cli.core.paths import Paths
from zk0cli.core.timefmt import epoch_from_iso
from zk0cli.services import flower

CONTROL_TIMEOUT_S = 10.0

# message -> (number, name, type, repeated), after flwr/proto/control.proto, run.proto and node.proto.
# A map<k, v> is on the wire a repeated entry message {1: key, 2: value}. Declared as proto2, so
# an optional request field set to 0 is still sent (Flower tests HasField on them).
CONTROL_SCHEMA: dict[str, list[tuple[int, str, str, bool]]] = {
    "RunStatus": [(1, "status", "string", False), (2, "sub_status", "string", False), (3, "details", "string", False)],
    "Run": [
        (1, "run_id", "uint64", False),
        (2, "fab_id", "string", False),
        (3, "fab_version", "string", False),
        (6, "pending_at", "string", False),
        (7, "starting_at", "string", False),
        (8, "running_at", "string", False),
        (9, "finished_at", "string", False),
        (10, "status", "RunStatus", False),
        (13, "bytes_sent", "uint64", False),
        (14, "bytes_recv", "uint64", False),
    ],
    "ListRunsRequest": [(1, "run_id", "uint64", False)],
    "ListRunsResponse.RunDictEntry": [(1, "key", "uint64", False), (2, "value", "Run", False)],
    "ListRunsResponse": [(1, "run_dict", "ListRunsResponse.RunDictEntry", True), (2, "now", "string", False)],
    "StopRunRequest": [(1, "run_id", "uint64", False)],
    "StopRunResponse": [(1, "success", "bool", False)],
    "NodeInfo": [
        (1, "node_id", "uint64", False),
        (4, "status", "string", False),
        (5, "registered_at", "string", False),
        (6, "last_activated_at", "string", False),
        (7, "last_deactivated_at", "string", False),
        (9, "online_until", "double", False),
        (10, "heartbeat_interval", "double", False),
        (13, "name", "string", False),
    ],
    "ListNodesRequest": [],
    "ListNodesResponse": [(1, "nodes_info", "NodeInfo", True), (2, "now", "string", False)],
    "RegisterNodeRequest": [(1, "public_key", "bytes", False), (3, "name", "string", False)],
    "RegisterNodeResponse": [(1, "node_id", "uint64", False)],
    "UnregisterNodeRequest": [(1, "node_id", "uint64", False)],
    "UnregisterNodeResponse": [],
}
_classes: dict[str, type] = {}


def control_message(name: str) -> Any:
    """The protobuf class of one message of ``CONTROL_SCHEMA`` (all built once, in a private pool)."""
    if not _classes:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        kinds = descriptor_pb2.FieldDescriptorProto
        scalar = {
            "string": kinds.TYPE_STRING,
            "bytes": kinds.TYPE_BYTES,
            "uint64": kinds.TYPE_UINT64,
            "double": kinds.TYPE_DOUBLE,
            "bool": kinds.TYPE_BOOL,
        }
        file = descriptor_pb2.FileDescriptorProto(name="zk0_control_subset.proto", package="zk0", syntax="proto2")
        for message, fields in CONTROL_SCHEMA.items():
            proto = file.message_type.add(name=message.replace(".", "_"))
            for number, field_name, kind, repeated in fields:
                f = proto.field.add(name=field_name, number=number)
                f.label = f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL
                if kind in scalar:
                    f.type = scalar[kind]
                else:
                    f.type, f.type_name = f.TYPE_MESSAGE, f".zk0.{kind.replace('.', '_')}"
        pool = descriptor_pool.DescriptorPool()  # private: never clashes with flwr's own classes
        pool.Add(file)
        for message in CONTROL_SCHEMA:
            descriptor = pool.FindMessageTypeByName(f"zk0.{message.replace('.', '_')}")
            _classes[message] = message_factory.GetMessageClass(descriptor)
    return _classes[name]


class ControlRefusedError(Exception):
    """The SuperLink answered, and said no (Flower's error code and its public detail)."""

    def __init__(self, method: str, http_status: int, detail: str, flower_code: int | None = None):
        super().__init__(f"{method}: {detail}" + (f" [code: {flower_code}]" if flower_code else ""))
        self.method, self.http_status, self.detail, self.flower_code = method, http_status, detail, flower_code


@dataclass(frozen=True)
class FlowerRun:
    """A run as the SuperLink keeps it; times are epoch seconds (None: not reached yet)."""

    run_id: int
    status: str  # pending, starting, running, finished:completed|failed|stopped
    app: str  # the FAB's id, e.g. zk0/zk0
    pending_at: float | None
    starting_at: float | None
    running_at: float | None
    finished_at: float | None
    details: str  # Flower's reason for a failed run
    bytes_sent: int
    bytes_recv: int

    @property
    def finished(self) -> bool:
        return self.status.startswith("finished")

    def elapsed_s(self, now: float) -> float | None:
        """Seconds running so far (or in all, once finished)."""
        began = self.running_at or self.starting_at
        if began is None:
            return None
        return max(0.0, (self.finished_at or now) - began)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FlowerNode:
    """A node as the SuperLink keeps it; times are epoch seconds (None: never)."""

    node_id: int
    name: str
    status: str  # registered, online, offline, unregistered
    registered_at: float | None
    online_at: float | None  # last activation
    offline_at: float | None  # last deactivation
    online_until: float | None  # Flower's heartbeat deadline
    heartbeat_interval_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


class ControlClient:
    """Typed calls to one SuperLink's Control API. Network failures raise OSError (and
    ssl.SSLError), refusals raise ControlRefusedError: callers choose how to show them."""

    def __init__(self, connection: ControlConnection, *, timeout_s: float = CONTROL_TIMEOUT_S):
        self.connection = connection
        self.timeout_s = timeout_s
        self.now: float | None = None  # the SuperLink's clock at its last listing

    def list_runs(self, run_id: int | None = None) -> list[FlowerRun]:
        """The 20 most recent runs, newest first (Flower's default page), or the one asked for."""
        request = {} if run_id is None else {"run_id": run_id}
        response = self._call("list-runs", "ListRunsRequest", "ListRunsResponse", **request)
        self.now = epoch_from_iso(response.now)
        runs = [_run(entry.value) for entry in response.run_dict]
        return sorted(runs, key=lambda r: r.pending_at or 0.0, reverse=True)

    def run(self, run_id: int) -> FlowerRun | None:
        """One run; None when the SuperLink does not know it."""
        try:
            runs = self.list_runs(run_id)
        except ControlRefusedError as refused:
            if refused.http_status == 404:
                return None
            raise
        return runs[0] if runs else None

    def stop_run(self, run_id: int) -> bool:
        return bool(self._call("stop-run", "StopRunRequest", "StopRunResponse", run_id=run_id).success)

    def list_nodes(self) -> list[FlowerNode]:
        response = self._call("list-nodes", "ListNodesRequest", "ListNodesResponse")
        self.now = epoch_from_iso(response.now)
        return [_node(info) for info in response.nodes_info]

    def register_node(self, public_key_pem: bytes, name: str) -> int:
        response = self._call(
            "register-node", "RegisterNodeRequest", "RegisterNodeResponse", public_key=public_key_pem, name=name
        )
        return int(response.node_id)

    def unregister_node(self, node_id: int) -> None:
        self._call("unregister-node", "UnregisterNodeRequest", "UnregisterNodeResponse", node_id=node_id)

    def _call(self, method: str, request_type: str, response_type: str, **fields: Any) -> Any:
        import http.client

        body = control_message(request_type)(**fields).SerializeToString()
        connection = self.connection
        if connection.root_ca is None:
            conn = http.client.HTTPConnection(connection.host, connection.port, timeout=self.timeout_s)
        else:
            import ssl

            context = ssl.create_default_context(cafile=connection.root_ca)
            conn = http.client.HTTPSConnection(
                connection.host, connection.port, timeout=self.timeout_s, context=context
            )
        try:
            conn.request(
                "POST",
                f"/v1/control/{method}",
                body=body,
                headers={"content-type": "application/protobuf", "accept": "application/protobuf"},
            )
            response = conn.getresponse()
            payload = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise _refusal(method, response.status, payload)
        message = control_message(response_type)()
        message.ParseFromString(payload)
        return message


def _refusal(method: str, http_status: int, payload: bytes) -> ControlRefusedError:
    text = payload.decode("utf-8", errors="replace").strip()
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and "detail" in document:
        code = document.get("code")
        flower_code = code if isinstance(code, int) else None
        return ControlRefusedError(method, http_status, str(document["detail"]), flower_code)
    first_line = text.splitlines()[0][:200] if text else ""
    return ControlRefusedError(method, http_status, f"HTTP {http_status}" + (f": {first_line}" if first_line else ""))


def _run(run: Any) -> FlowerRun:
    return FlowerRun(
        run_id=int(run.run_id),
        status=run.status.status + (f":{run.status.sub_status}" if run.status.sub_status else ""),
        app=run.fab_id,
        pending_at=epoch_from_iso(run.pending_at),
        starting_at=epoch_from_iso(run.starting_at),
        running_at=epoch_from_iso(run.running_at),
        finished_at=epoch_from_iso(run.finished_at),
        details=run.status.details,
        bytes_sent=int(run.bytes_sent),
        bytes_recv=int(run.bytes_recv),
    )


def _node(info: Any) -> FlowerNode:
    return FlowerNode(
        node_id=int(info.node_id),
        name=info.name,
        status=info.status,
        registered_at=epoch_from_iso(info.registered_at),
        online_at=epoch_from_iso(info.last_activated_at),
        offline_at=epoch_from_iso(info.last_deactivated_at),
        online_until=info.online_until or None,
        heartbeat_interval_s=float(info.heartbeat_interval),
    )


def control_failure(exc: BaseException) -> str:
    """One line saying why the Control API could not be asked, or what it refused."""
    if isinstance(exc, ControlRefusedError):
        return f"the SuperLink refused {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running? `zk0 server serve`)"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if exc.__class__.__name__.startswith("SSL"):
        return f"TLS failed: {exc}"
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


class LocalControl:
    """The local SuperLink's Control API for zk0's commands: every failure is a Zk0Error with a hint.

    Use as ``with LocalControl(paths) as control: control.list_runs()``.
    """

    HINT = "check the server with `zk0 status` and `zk0 logs server`"

    def __init__(self, paths: Paths, *, timeout_s: float = CONTROL_TIMEOUT_S):
        try:
            connection = ControlConnection.load(paths)
        except (OSError, ValueError) as exc:
            raise Zk0Error(f"cannot read the local server connection: {exc}", hint=self.HINT) from None
        if connection is None:
            raise unreachable(
                "no local server connection is configured", hint="start the server first: zk0 server serve --detach"
            )
        self.client = ControlClient(connection, timeout_s=timeout_s)

    def __enter__(self) -> ControlClient:
        return self.client

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: Any) -> None:
        if isinstance(exc, ControlRefusedError):
            raise Zk0Error(control_failure(exc), hint=self.HINT) from None
        if isinstance(exc, OSError):
            raise unreachable(f"cannot reach the local SuperLink: {control_failure(exc)}", hint=self.HINT) from None
