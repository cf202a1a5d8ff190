"""The Control-API client against Flower's own message definitions and a real SuperLink on loopback."""

import subprocess
import time

import httpx
import pytest

from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.core.paths import Paths
from zk0cli.services import flower
from zk0cli.services.flower_control import (
    CONTROL_SCHEMA,
    ControlClient,
    ControlConnection,
    ControlRefusedError,
    LocalControl,
    control_message,
)
from zk0cli.services.supervisor import child_env, terminate_processes


def flower_descriptor(name: str):
    from flwr.proto import control_pb2, node_pb2, run_pb2

    outer, _, nested = name.partition(".")
    for module in (control_pb2, run_pb2, node_pb2):
        if outer in module.DESCRIPTOR.message_types_by_name:
            descriptor = module.DESCRIPTOR.message_types_by_name[outer]
            return descriptor.nested_types_by_name[nested] if nested else descriptor
    raise AssertionError(f"Flower 1.42 has no message {name}")


@pytest.mark.parametrize("name", list(CONTROL_SCHEMA))
def test_every_declared_field_is_flowers_own_number_name_and_type(name):
    from google.protobuf.descriptor import FieldDescriptor

    theirs = {f.number: f for f in flower_descriptor(name).fields}
    for number, field_name, kind, repeated in CONTROL_SCHEMA[name]:
        field = theirs[number]
        assert field.name == field_name, (name, number)
        assert field.is_repeated == repeated, (name, field_name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            assert field.message_type.full_name == flower_descriptor(kind).full_name, (name, field_name)
        else:
            assert field.type == control_message(name).DESCRIPTOR.fields_by_name[field_name].type, (name, field_name)


def test_a_request_zk0_builds_is_what_flower_parses():
    from flwr.proto.control_pb2 import ListRunsRequest, RegisterNodeRequest

    theirs = ListRunsRequest.FromString(control_message("ListRunsRequest")(run_id=0).SerializeToString())
    assert theirs.HasField("run_id") and theirs.run_id == 0  # "run 0", not "every run"
    assert not ListRunsRequest.FromString(control_message("ListRunsRequest")().SerializeToString()).HasField("run_id")
    node = RegisterNodeRequest.FromString(
        control_message("RegisterNodeRequest")(public_key=b"PEM", name="a").SerializeToString()
    )
    assert (node.public_key, node.name, node.HasField("location")) == (b"PEM", "a", False)


def test_no_connection_and_a_closed_port_are_unreachable_with_a_hint(tmp_path):
    paths = Paths.resolve(tmp_path / "home")
    with pytest.raises(Zk0Error) as missing:
        LocalControl(paths)
    assert missing.value.code == ExitCode.UNREACHABLE and "zk0 server serve" in missing.value.hint
    flower.write_cli_connection(paths, address=f"127.0.0.1:{flower.free_port()}", root_ca=None)
    with pytest.raises(Zk0Error) as closed, LocalControl(paths, timeout_s=2) as control:
        control.list_runs()
    assert closed.value.code == ExitCode.UNREACHABLE and "connection refused" in closed.value.message
    assert "zk0 logs server" in closed.value.hint


@pytest.fixture
def superlink(tmp_path):
    """A bare insecure SuperLink on loopback (no nodes, no runs), stopped after the test."""
    port = flower.free_port()
    argv = flower.superlink_argv(host="127.0.0.1", port=port, database=":flwr-in-memory:", tls=None, node_auth=False)
    env = child_env(tmp_path / "flwr-home")
    with open(tmp_path / "superlink.log", "wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "superlink.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the SuperLink did not come up in 60 s"
            time.sleep(0.2)
        yield ControlClient(ControlConnection("127.0.0.1", port, None), timeout_s=10)
    finally:
        import psutil

        terminate_processes([psutil.Process(process.pid)], grace_s=10)


@pytest.mark.slow
def test_nodes_and_runs_through_a_real_superlink(superlink, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    assert superlink.list_runs() == [] and superlink.list_nodes() == []
    assert superlink.now is not None and abs(superlink.now - time.time()) < 60  # the SuperLink's clock, parsed
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    node_id = superlink.register_node(pem, "alice")
    [node] = superlink.list_nodes()
    assert (node.node_id, node.name, node.status, node.online_at) == (node_id, "alice", "registered", None)
    assert node.registered_at is not None and abs(node.registered_at - time.time()) < 60

    with pytest.raises(ControlRefusedError) as again:
        superlink.register_node(pem, "alice-again")
    assert again.value.http_status == 412 and "already in use" in again.value.detail
    with pytest.raises(ControlRefusedError) as garbage:
        superlink.register_node(b"not a key", "bob")
    assert garbage.value.http_status == 412 and "not valid" in garbage.value.detail

    superlink.unregister_node(node_id)
    assert [n.status for n in superlink.list_nodes()] in ([], ["unregistered"])
    with pytest.raises(ControlRefusedError) as unknown_node:
        superlink.unregister_node(node_id + 1)
    assert unknown_node.value.http_status == 404
    assert superlink.run(424242) is None
    with pytest.raises(ControlRefusedError) as unknown_run:
        superlink.stop_run(424242)
    assert unknown_run.value.http_status == 404 and unknown_run.value.flower_code
