"""`zk0 server serve` and `zk0 node join` with real Flower processes, real TLS from `zk0 init`, on
loopback: 127.0.0.2 plays the public address. One federation per module keeps this bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from zk0cli.core.errors import ExitCode
from zk0cli.core.paths import Paths
from zk0cli.services import flower, supervisor

pytestmark = pytest.mark.slow

PUBLIC_HOST = "127.0.0.2"
TINY_APP = Path(__file__).parent / "fixtures" / "tiny_app"
SHARED_DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "so101-record-test"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def zk0(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "ZK0_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_HOME": str(home / "hf"), "NO_COLOR": "1",
           "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "zk0cli", *args], env=env, capture_output=True, text=True, timeout=timeout)


def recorded_pids(home: Path, service: str) -> list[int]:
    state = supervisor.read_state(Paths.resolve(home), service) or {}
    pids = [state.get("supervisor", {}).get("pid")]
    for process in state.get("processes", {}).values():
        pids += [process.get("pid"), *process.get("descendants", [])]
    return [pid for pid in pids if pid]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Federation:
    def __init__(self, root: Path):
        self.root = root
        self.server = root / "server"
        self.port = free_port(PUBLIC_HOST)
        self.control_port = free_port()
        self.address = f"{PUBLIC_HOST}:{self.port}"
        self.ca = self.server / "config" / "pki" / "ca.pem"

    def node_home(self, name: str, ca: Path | None = None) -> Path:
        home = self.root / name
        result = zk0(home, "init", "--role", "node", "--ca-cert", str(ca or self.ca), "-y")
        assert result.returncode == 0, result.stderr
        return home


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("federation"))
    assert zk0(fed.server, "init", "--role", "server", "--public-address", PUBLIC_HOST, "-y").returncode == 0
    started = zk0(fed.server, "server", "serve", "--host", PUBLIC_HOST, "--port", str(fed.port),
                  "--control-port", str(fed.control_port), "--detach", "--json")
    assert started.returncode == 0, started.stderr
    state = json.loads(started.stdout)
    assert state["state"] == "healthy" and state["info"]["tls"] and state["info"]["node_auth"]
    yield fed
    pids = recorded_pids(fed.server, "server")
    for home in [fed.root / name for name in ("alice",)]:
        if home.exists():
            zk0(home, "stop", "--all")
    stopped = zk0(fed.server, "stop", "server")
    assert stopped.returncode == 0, stopped.stderr
    assert not [pid for pid in pids if alive(pid)], "processes left after `zk0 stop server`"


def test_public_address_serves_fleet_and_health_but_refuses_control_and_runtime(federation):
    public = f"https://{federation.address}"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(federation.ca)), timeout=10) as client:
        assert client.get(f"{public}/health").status_code == 200
        assert client.post(f"{public}/v1/control/list-runs", content=b"").status_code == 403
        assert client.post(f"{public}/v1/runtime/pull-task", content=b"").status_code == 403
        assert client.post(f"{public}/v1/fleet/../control/list-runs", content=b"").status_code == 403
        assert client.post(f"{public}/v1/fleet/pull-messages", content=b"").status_code not in (403, 404)
    # The flwr CLI itself, pointed at the public address, is refused ...
    home = federation.root / "outsider-flwr"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "pub"\n[superlink.pub]\naddress = "{federation.address}"\n'
        f'root-certificates = "{federation.ca}"\n')
    outsider = subprocess.run(["flwr", "ls", "pub", "--format", "json"], capture_output=True, text=True, timeout=60,
                              env={**flower.flwr_env(Paths.resolve(federation.server)), "FLWR_HOME": str(home)})
    refused = json.loads(outsider.stdout[outsider.stdout.find("{"):])
    assert refused["success"] is False and "403" in refused["error-message"]
    # ... while the admin on the server host reaches the Control API on loopback.
    assert flower.run_flwr(Paths.resolve(federation.server), ["ls", flower.CLI_CONNECTION])["success"] is True


def test_second_serve_and_a_taken_port_are_one_line_errors(federation):
    again = zk0(federation.server, "server", "serve", "--host", PUBLIC_HOST, "--port", str(free_port(PUBLIC_HOST)),
                "--control-port", str(free_port()))
    pid = supervisor.read_state(Paths.resolve(federation.server), "server")["supervisor"]["pid"]
    assert again.returncode == ExitCode.BAD_INPUT
    assert f"server is already running (pid {pid})" in again.stderr and "zk0 stop server" in again.stderr

    other = federation.root / "other-server"
    taken = zk0(other, "server", "serve", "--insecure", "--no-require-node-auth", "--host", PUBLIC_HOST,
                "--port", str(federation.port))
    assert taken.returncode == ExitCode.ENV_NOT_READY
    assert f"port {federation.port} on {PUBLIC_HOST} is already in use" in taken.stderr and "--port N" in taken.stderr
    assert "Traceback" not in taken.stderr + again.stderr


def test_join_errors_say_what_is_wrong(federation, tmp_path):
    alice = federation.node_home("alice")
    down = zk0(alice, "node", "join", "--server", f"{PUBLIC_HOST}:{free_port(PUBLIC_HOST)}", "--dataset", str(SHARED_DATASET),
               "--skip-validation")
    assert down.returncode == ExitCode.UNREACHABLE and "connection refused" in down.stderr and "hint:" in down.stderr

    other_ca = federation.root / "other-federation"
    assert zk0(other_ca, "init", "--role", "server", "-y").returncode == 0
    eve = federation.node_home("eve", ca=other_ca / "config" / "pki" / "ca.pem")
    wrong_ca = zk0(eve, "node", "join", "--server", federation.address, "--dataset", str(SHARED_DATASET), "--skip-validation")
    assert wrong_ca.returncode == ExitCode.BAD_INPUT
    assert "not signed by this node's pinned CA" in wrong_ca.stderr and "zk0 init --role node" in wrong_ca.stderr

    dataset = tmp_path / "so101-record-test"
    shutil.copytree(SHARED_DATASET, dataset)  # its camera videos are missing on purpose: validation fails
    invalid = zk0(alice, "node", "join", "--server", federation.address, "--dataset", str(dataset))
    assert invalid.returncode == ExitCode.FAILED
    assert "failed validation" in invalid.stderr and "--skip-validation" in invalid.stderr
    for result in (down, wrong_ca, invalid):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 3


def test_unregistered_node_is_refused_with_the_registration_command(federation):
    mallory = federation.node_home("mallory")
    refused = zk0(mallory, "node", "join", "--server", federation.address, "--dataset", str(SHARED_DATASET),
                  "--skip-validation", "--name", "mallory", "--detach")
    assert refused.returncode == ExitCode.FAILED
    assert "its key is not registered there" in refused.stderr and "zk0 server nodes add" in refused.stderr
    assert supervisor.read_state(Paths.resolve(mallory), "node-mallory")["state"] == "failed"


def test_registered_node_joins_through_the_proxy_and_trains_a_run(federation):
    alice = federation.node_home("alice") if not (federation.root / "alice").exists() else federation.root / "alice"
    added = zk0(federation.server, "server", "nodes", "add", str(alice / "config" / "pki" / "node_key.pub"), "--name", "alice", "--json")
    assert added.returncode == 0, added.stderr
    joined = zk0(alice, "node", "join", "--server", federation.address, "--dataset", str(SHARED_DATASET),
                 "--skip-validation", "--name", "alice", "--detach", "--json")
    assert joined.returncode == 0, joined.stderr
    node = json.loads(joined.stdout)
    assert node["processes"]["supernode"]["events"]["connected"]["groups"]["node_id"] == json.loads(added.stdout)["node_id"]

    server_paths = Paths.resolve(federation.server)
    run_id = flower.run_flwr(server_paths, ["run", str(TINY_APP), flower.CLI_CONNECTION, "--run-config", "num-server-rounds=1"])["run-id"]
    deadline = time.monotonic() + 150
    status = ""
    while time.monotonic() < deadline and not status.startswith("finished"):
        time.sleep(5)  # each flwr call costs ~1 s of CPU: poll gently
        status = flower.run_flwr(server_paths, ["ls", flower.CLI_CONNECTION, "--run-id", str(run_id)])["runs"][0]["status"]
    assert status == "finished:completed"

    listed = json.loads(zk0(federation.server, "server", "nodes", "list", "--json").stdout)["nodes"]
    assert [(n["name"], n["status"]) for n in listed] == [("alice", "online")]

    # kill -9 the SuperLink: the supervisor restarts it with its database, and the node rides it out
    node_paths = Paths.resolve(alice)
    supernode_pid = supervisor.read_state(node_paths, "node-alice")["processes"]["supernode"]["pid"]
    superlink_pid = supervisor.read_state(server_paths, "server")["processes"]["superlink"]["pid"]
    os.kill(superlink_pid, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        events = supervisor.read_state(node_paths, "node-alice")["processes"]["supernode"]["events"]
        if "reconnected" in events:
            break
        time.sleep(0.5)
    assert "reconnected" in events and "reconnecting" in events, events
    server_state = supervisor.read_state(server_paths, "server")
    assert server_state["processes"]["superlink"]["restarts"] == 1
    assert supervisor.read_state(node_paths, "node-alice")["processes"]["supernode"]["pid"] == supernode_pid
    assert flower.run_flwr(server_paths, ["ls", flower.CLI_CONNECTION, "--run-id", str(run_id)])["runs"][0]["status"] == status
    node_pids = recorded_pids(alice, "node-alice")
    stopped = zk0(alice, "stop", "node", "alice")
    assert stopped.returncode == 0, stopped.stderr
    assert not [pid for pid in node_pids if alive(pid)]
    log = zk0(alice, "logs", "node", "alice", "--since", "10m").stdout
    assert "supernode: connected" in log and "node-alice stopped" in log


def test_ctrl_c_on_a_foreground_serve_leaves_no_process(tmp_path):
    home = tmp_path / "fg"
    port = free_port()
    env = {**os.environ, "ZK0_HOME": str(home)}
    serve = subprocess.Popen([sys.executable, "-m", "zk0cli", "server", "serve", "--insecure", "--no-require-node-auth",
                              "--host", "127.0.0.1", "--port", str(port), "--control-port", str(free_port())],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = supervisor.read_state(Paths.resolve(home), "server")
            if state and state["state"] == "healthy":
                break
            assert serve.poll() is None, serve.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("the server did not become healthy")
        tree = [serve.pid] + [child.pid for child in psutil.Process(serve.pid).children(recursive=True)]
        assert len(tree) >= 4  # zk0, superlink, its SuperExec (own session), fleet proxy
        serve.send_signal(signal.SIGINT)
        output, _ = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert serve.returncode == 0, output
    assert "received SIGINT" in output and "Traceback" not in output
    assert not [pid for pid in tree if alive(pid)]


def test_run_commands_check_their_input_before_reaching_flower(tmp_path):
    home = tmp_path / "no-server"
    bad_key = zk0(home, "run", "--set", "no-such-key=1")
    assert bad_key.returncode == ExitCode.BAD_INPUT and "unknown run-config key 'no-such-key'" in bad_key.stderr
    no_server = zk0(home, "run", "--rounds", "2")
    assert no_server.returncode == ExitCode.UNREACHABLE and "zk0 server serve --detach" in no_server.stderr
    assert zk0(home, "runs").returncode == ExitCode.UNREACHABLE
    assert zk0(home, "run", "stop", "abc").returncode == ExitCode.BAD_INPUT
