"""The one client of the SuperLink's Control API (list runs and nodes, stop runs, register nodes).

Flower 1.42 serves the Control API as ``POST /v1/control/<method>`` with protobuf bodies; zk0
calls it on loopback with the ``zk0-local`` connection it writes for the flwr CLI
(:func:`zk0cli.services.flower.write_cli_connection`). A ``flwr`` subprocess per call costs ~1 s
of Python start-up; a direct call costs milliseconds.

The messages are declared here as the subset of fields zk0 reads, built into a private
descriptor pool, rather than imported from ``flwr.proto``: importing Flower's generated classes
runs ``flwr/__init__`` (numpy and the whole app API, ~0.5 s), more than a whole ``zk0 status``
refresh. The field numbers are the wire contract; a test checks them against Flower's own
descriptors so the subset cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from zk0cli.core.paths import Paths
from zk0cli.services import flower

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
