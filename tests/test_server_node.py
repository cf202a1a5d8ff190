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
from serve_args import insecure_loopback_serve

from zk0cli.core import config as config_mod
from zk0cli.core.errors import ExitCode
from zk0cli.core.paths import Paths
from zk0cli.datasets.sample import write_sample
from zk0cli.fl.records import RunRecord
from zk0cli.services import demo, flower, preflight, supervisor
from zk0cli.services import runs as runs_service

pytestmark = pytest.mark.slow

PUBLIC_HOST = "127.0.0.2"
TINY_APP = Path(__file__).parent / "fixtures" / "tiny_app"
SHARED_DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "so101-record-test"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def zk0(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zk0cli", *args], env=zk0_env(home), capture_output=True, text=True, timeout=timeout
    )


def zk0_env(home: Path) -> dict[str, str]:
    """A party's environment: its own ZK0_HOME, offline, one compute thread (the detached
    supervisors and every process under them inherit it: two nodes on two cores must not fight)."""
    return {
        **os.environ,
        "ZK0_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home / "hf"),
        "NO_COLOR": "1",
        "COLUMNS": "250",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


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
        self.eval_dataset = root / "datasets" / "eval-sort"

    def node_home(self, name: str, ca: Path | None = None) -> Path:
        home = self.root / name
        if (home / "config" / "pki" / "node_key.pub").exists() and ca is None:
            return home
        result = zk0(home, "init", "--role", "node", "--ca-cert", str(ca or self.ca), "-y")
        assert result.returncode == 0, result.stderr
        return home

    def join(self, name: str, task: str) -> Path:
        """Register ``name``'s key and join it with its own generated dataset (detached)."""
        home = self.node_home(name)
        dataset = self.root / "datasets" / f"{name}-{task}"
        if not dataset.exists():
            write_sample(dataset, task=task, seed=len(name), **demo.SAMPLE)
        added = zk0(
            self.server, "server", "nodes", "add", str(home / "config" / "pki" / "node_key.pub"), "--name", name
        )
        assert added.returncode == 0, added.stderr
        joined = zk0(
            home, "node", "join", "--server", self.address, "--dataset", f"local:{dataset}", "--name", name, "--detach"
        )
        assert joined.returncode == 0, joined.stderr
        return home

    def run_settings(self, *, heldout: bool = True, **overrides) -> list[str]:
        """`--set` pairs for a small zk0 run on the tiny policy (the demo's workload), evaluated by
        the server on a held-out dataset unless ``heldout`` is False."""
        if heldout and not self.eval_dataset.exists():
            write_sample(self.eval_dataset, task="sort", seed=9, **demo.EVAL_SAMPLE)
        values = {**demo.DEMO_RUN_CONFIG, **overrides}
        if heldout:
            values["eval-datasets"] = f"local:{self.eval_dataset}"
        return [arg for key, value in values.items() for arg in ("--set", f"{key}={json.dumps(value)}")]

    def node_log(self, name: str) -> str:
        return (self.root / name / "state" / "logs" / f"node-{name}.log").read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    fed = Federation(tmp_path_factory.mktemp("federation"))
    assert zk0(fed.server, "init", "--role", "server", "--public-address", PUBLIC_HOST, "-y").returncode == 0
    started = zk0(
        fed.server,
        "server",
        "serve",
        "--host",
        PUBLIC_HOST,
        "--port",
        str(fed.port),
        "--control-port",
        str(fed.control_port),
        "--detach",
        "--json",
    )
    assert started.returncode == 0, started.stderr
    state = json.loads(started.stdout)
    assert state["state"] == "healthy" and state["info"]["tls"] and state["info"]["node_auth"]
    yield fed
    pids = recorded_pids(fed.server, "server")
    for name in ("alice", "bob"):
        if (fed.root / name).exists():
            pids += recorded_pids(fed.root / name, f"node-{name}")
            zk0(fed.root / name, "stop", "--all")
    stopped = zk0(fed.server, "stop", "server")
    assert stopped.returncode == 0, stopped.stderr
    assert not [pid for pid in pids if alive(pid)], "processes left after `zk0 stop`"


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
        f'root-certificates = "{federation.ca}"\n'
    )
    outsider = subprocess.run(
        ["flwr", "ls", "pub", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**flower.flwr_env(Paths.resolve(federation.server)), "FLWR_HOME": str(home)},
    )
    refused = json.loads(outsider.stdout[outsider.stdout.find("{") :])
    assert refused["success"] is False and "403" in refused["error-message"]
    # ... while the admin on the server host reaches the Control API on loopback.
    assert flower.run_flwr(Paths.resolve(federation.server), ["ls", flower.CLI_CONNECTION])["success"] is True


def test_second_serve_and_a_taken_port_are_one_line_errors(federation):
    again = zk0(
        federation.server,
        "server",
        "serve",
        "--host",
        PUBLIC_HOST,
        "--port",
        str(free_port(PUBLIC_HOST)),
        "--control-port",
        str(free_port()),
    )
    pid = supervisor.read_state(Paths.resolve(federation.server), "server")["supervisor"]["pid"]
    assert again.returncode == ExitCode.BAD_INPUT
    assert f"server is already running (pid {pid})" in again.stderr and "zk0 stop server" in again.stderr

    other = federation.root / "other-server"
    taken = zk0(
        other,
        "server",
        "serve",
        "--insecure",
        "--no-require-node-auth",
        "--host",
        PUBLIC_HOST,
        "--port",
        str(federation.port),
    )
    assert taken.returncode == ExitCode.ENV_NOT_READY
    assert f"port {federation.port} on {PUBLIC_HOST} is already in use" in taken.stderr and "--port N" in taken.stderr
    assert "Traceback" not in taken.stderr + again.stderr


def test_join_errors_say_what_is_wrong(federation, tmp_path):
    alice = federation.node_home("alice")
    down = zk0(
        alice,
        "node",
        "join",
        "--server",
        f"{PUBLIC_HOST}:{free_port(PUBLIC_HOST)}",
        "--dataset",
        str(SHARED_DATASET),
        "--skip-validation",
    )
    assert down.returncode == ExitCode.UNREACHABLE and "connection refused" in down.stderr and "hint:" in down.stderr

    other_ca = federation.root / "other-federation"
    assert zk0(other_ca, "init", "--role", "server", "-y").returncode == 0
    eve = federation.node_home("eve", ca=other_ca / "config" / "pki" / "ca.pem")
    wrong_ca = zk0(
        eve, "node", "join", "--server", federation.address, "--dataset", str(SHARED_DATASET), "--skip-validation"
    )
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
    refused = zk0(
        mallory,
        "node",
        "join",
        "--server",
        federation.address,
        "--dataset",
        str(SHARED_DATASET),
        "--skip-validation",
        "--name",
        "mallory",
        "--detach",
    )
    assert refused.returncode == ExitCode.FAILED
    assert "its key is not registered there" in refused.stderr and "zk0 server nodes add" in refused.stderr
    assert supervisor.read_state(Paths.resolve(mallory), "node-mallory")["state"] == "failed"


def test_two_nodes_train_a_streamed_run_and_a_supernode_killed_mid_run_is_restarted(federation):
    """TLS, node auth, the fleet proxy: `zk0 run --rounds 2 --stream` with two registered nodes,
    one of whose SuperNode is killed -9 while it trains round 1; the supervisor restarts it and
    the run completes, the record complete."""
    alice = federation.join("alice", "pick")
    federation.join("bob", "stack")
    alice_paths = Paths.resolve(alice)
    state = supervisor.read_state(alice_paths, "node-alice")
    assert state["state"] == "healthy" and set(state["processes"]) == {"supernode", "clientapp"}
    supernode_pid = state["processes"]["supernode"]["pid"]

    stream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zk0cli",
            "run",
            "--rounds",
            "2",
            "--stream",
            "--json",
            *federation.run_settings(**{"round-timeout-s": 60.0}),
        ],
        env=zk0_env(federation.server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: "zk0: task for run" in federation.node_log("alice"), 240, "alice training round 1", stream)
        os.kill(supernode_pid, signal.SIGKILL)
        out, err = stream.communicate(timeout=300)
    finally:
        if stream.poll() is None:
            stream.kill()
    assert stream.returncode == 0, err[-3000:]
    result = json.loads(out)
    assert result["state"] == "completed"
    rounds = {entry["round"]: entry for entry in RunRecord(Path(result["run_dir"])).rounds()}
    assert sorted(rounds) == [0, 1, 2]
    alice_id = supervisor.read_state(alice_paths, "node-alice")["processes"]["supernode"]["events"]["connected"][
        "groups"
    ]["node_id"]
    assert [f["node"] for f in rounds[1]["failed"]] == [alice_id]  # its round-1 message died with it ...
    alice_log = federation.node_log("alice")
    assert "held an unanswered message" in alice_log, alice_log[-3000:]
    # ... and the server heard so, no timeout
    assert "Node Unavailable" in rounds[1]["failed"][0]["reason"], alice_log[-3000:]
    assert rounds[1]["clients"]["aggregate"]["num_clients"] == 1  # bob's update carried the round
    assert rounds[2]["clients"]["aggregate"]["num_clients"] == 2 and not rounds[2]["failed"]  # alice is back
    supernode = supervisor.read_state(alice_paths, "node-alice")["processes"]["supernode"]
    assert supernode["restarts"] == 1 and supernode["pid"] != supernode_pid and supernode["state"] == "healthy"
    assert "round 1/2" in err and "round 2/2" in err  # the stream printed each round
    assert rounds[1]["failed"][0]["name"] == "alice"  # the admin's name beside the Flower node id
    trained = rounds[2]["clients"]["each"]
    assert sorted(c["name"] for c in trained) == ["alice", "bob"] and alice_id in {c["node"] for c in trained}
    sizes = {c["name"]: (c["bytes_down"], c["bytes_up"]) for c in trained}
    assert sizes["bob"][0] == pytest.approx(sizes["bob"][1], rel=0.02)  # a bf16 change each way
    assert sizes["alice"][0] == pytest.approx(2 * sizes["alice"][1], rel=0.02)  # no round-1 reply: fp32 down
    assert "alice" in err and alice_id not in err  # the stream names nodes as the admin registered them

    # one run, two names: the Flower id `zk0 run` printed and the record's name both work everywhere
    record = Path(result["run_dir"])
    listed = json.loads(zk0(federation.server, "runs", "--json").stdout)["runs"]
    row = next(r for r in listed if r["name"] == record.name)
    assert str(row["flwr_run_id"]) == result["run_id"] and row["status"] in ("completed", "finished:completed")
    logged = zk0(federation.server, "logs", "run", result["run_id"], "--tail", "200", "--json")
    lines = json.loads(logged.stdout)["lines"]
    assert any("round 2/2: training" in line for line in lines) and any("run completed" in line for line in lines)
    assert not any("\x1b[" in line for line in lines) and len(set(lines)) == len(lines)  # plain, each once
    by_name = zk0(federation.server, "logs", "run", record.name[:-2], "--tail", "1", "--json")  # a unique prefix
    assert json.loads(by_name.stdout)["lines"] == lines[-1:]


BIG_BODY = 200 * 1024 * 1024


def push_big_body(federation, headers: list[tuple[str, str]], *, chunked: bool) -> tuple[bytes, int]:
    """POST a 200 MB push-object through the public front for as long as it lets us send:
    (what came back, body bytes the socket accepted)."""
    context = ssl.create_default_context(cafile=str(federation.ca))
    framing = ("transfer-encoding", "chunked") if chunked else ("content-length", str(BIG_BODY))
    lines = ["POST /v1/fleet/push-object HTTP/1.1", f"host: {federation.address}", "content-type: application/protobuf"]
    head = "\r\n".join([*lines, *(f"{k}: {v}" for k, v in [framing, *headers])]) + "\r\n\r\n"
    piece = b"x" * (1024 * 1024)
    sent = 0
    with socket.create_connection((PUBLIC_HOST, federation.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=PUBLIC_HOST) as tls:
            try:
                tls.sendall(head.encode())
                while sent < BIG_BODY:
                    tls.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    sent += len(piece)
            except OSError:
                pass  # refused and closed: the answer may still be readable
            try:
                return tls.recv(65536), sent
            except OSError:
                return b"", sent


def test_big_bodies_without_valid_node_auth_leave_the_superlink_alone_while_nodes_train(federation):
    """Issue 13: 200 MB bodies, unauthenticated or signed by a stranger or forged, by Content-Length
    and chunked, three at a time, while a run trains: refused at the front, the SuperLink's memory
    stays flat, and the run completes. A keep-alive client idle past the SuperLink's own keep-alive
    (5 s), and an HTTP/1.0 health check with no Host, get answers, not 502.
    Issue 12: the run has no held-out data: the server builds the policy from the nodes' features
    (a query message through the real SuperNodes) and the nodes' federated evaluation judges it."""
    from concurrent.futures import ThreadPoolExecutor

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from node_auth_headers import signed_headers

    for name, task in (("alice", "pick"), ("bob", "stack")):
        if not (federation.root / name / "state").exists():
            federation.join(name, task)
    alice_key = load_ssh_private_key((federation.root / "alice" / "config" / "pki" / "node_key").read_bytes(), None)
    assert isinstance(alice_key, ec.EllipticCurvePrivateKey)
    stranger = ec.generate_private_key(ec.SECP384R1())
    attacks = [[], signed_headers(stranger), signed_headers(alice_key, signer=stranger)]
    server_state = supervisor.read_state(Paths.resolve(federation.server), "server")
    superlink = psutil.Process(server_state["processes"]["superlink"]["pid"])
    before = superlink.memory_info().rss
    tasks_before = federation.node_log("bob").count("zk0: task for run")
    # the admin's run defaults, in config.toml: the run command itself sets nothing
    defaults = {**demo.DEMO_RUN_CONFIG, "fraction-evaluate": 1.0, "client-eval-episodes": 1}
    for key, value in defaults.items():
        assert zk0(federation.server, "config", "set", f"run.{key}", json.dumps(value)).returncode == 0
    run = subprocess.Popen(
        [sys.executable, *("-m", "zk0cli", "run", "--rounds", "1", "--stream", "--json")],
        env=zk0_env(federation.server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: federation.node_log("bob").count("zk0: task for run") > tasks_before, 240, "bob training", run)
        peak = before
        with ThreadPoolExecutor(max_workers=3) as pool:
            jobs = [pool.submit(push_big_body, federation, h, chunked=c) for c in (False, True) for h in attacks]
            while not all(job.done() for job in jobs):
                peak = max(peak, superlink.memory_info().rss)
                time.sleep(0.1)
        answers = [job.result() for job in jobs]
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
    for answer, sent in answers:
        assert answer.startswith(b"HTTP/1.1 401") or (not answer and sent < BIG_BODY), (answer[:200], sent)
    assert peak - before < 50 * 1024 * 1024, f"SuperLink RSS grew by {(peak - before) / 2**20:.0f} MiB"
    assert run.returncode == 0 and json.loads(out)["state"] == "completed", err[-3000:]
    assert f"server eval: {preflight.SERVER_EVAL_OFF}; {preflight.EVAL_ON_HINT}" in " ".join(err.split())  # once
    assert "fraction-evaluate=1.0, client-eval-episodes=1" in " ".join(err.split())  # said where they came from
    record = RunRecord(Path(json.loads(out)["run_dir"]))
    assert record.read_config()["run_config"]["client-eval-episodes"] == 1
    assert record.read_config()["server_eval"] is False and record.read_config()["features_from"]
    assert record.rounds()[-1]["federated_eval"]["aggregate"]["num_clients"] == 2

    verify = ssl.create_default_context(cafile=str(federation.ca))
    with httpx.Client(base_url=f"https://{federation.address}", verify=verify, timeout=30) as client:
        assert client.get("/health").status_code == 200
        time.sleep(7)  # the front's upstream connection has been closed by the SuperLink meanwhile
        assert client.get("/health").status_code == 200
        call = client.post("/v1/fleet/pull-messages", content=b"", headers=dict(signed_headers(alice_key)))
        assert call.status_code not in (401, 502), call.text  # it reached the SuperLink and got its answer
    # the nodes' uploads after their local rounds, and the call after 7 s idle, each went out on a
    # connection the front knew to be open: none needed the retry meant for a SuperLink restart
    server_log = "\n".join(supervisor.read_log(Paths.resolve(federation.server), "server", tail=100_000))
    assert "retrying" not in server_log and "upstream failed" not in server_log
    with socket.create_connection((PUBLIC_HOST, federation.port), timeout=10) as raw:
        with verify.wrap_socket(raw, server_hostname=PUBLIC_HOST) as tls:
            tls.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            assert tls.recv(4096).split(b"\r\n", 1)[0].split(b" ")[1] == b"200"


def test_dry_run_counts_the_online_nodes_and_no_wait_refuses_too_few(federation):
    for name, task in (("alice", "pick"), ("bob", "stack")):
        if not (federation.root / name / "state").exists():
            federation.join(name, task)
    wait_for(lambda: _online(federation) == 2, 60, "both nodes online")
    checked = zk0(federation.server, "run", "--dry-run", "--json", *federation.run_settings())
    assert checked.returncode == 0, checked.stderr
    nodes = {c["name"]: c for c in json.loads(checked.stdout)["checks"]}["nodes"]
    assert nodes["status"] == "ok" and "2 of 2 registered node(s) online: alice, bob" in nodes["detail"]
    too_few = zk0(
        federation.server, "run", "--no-wait", *federation.run_settings(**{"min-available-nodes": 3}), "--json"
    )
    assert too_few.returncode == ExitCode.UNREACHABLE
    error = json.loads(too_few.stdout)
    assert "min-available-nodes is 3" in error["error"] and "wait for the nodes" in error["hint"]


def test_nodes_list_keeps_ids_whole_in_80_columns_and_says_which_node_is_quarantined(federation):
    """Issue 12: `nodes list` cut the 20-digit ids an admin copies into `nodes remove|release`."""
    from zk0cli.fl.quarantine import quarantine

    for name, task in (("alice", "pick"), ("bob", "stack")):
        if not (federation.root / name / "state").exists():
            federation.join(name, task)
    wait_for(lambda: _online(federation) == 2, 60, "both nodes online")
    nodes = {
        n["name"]: n for n in json.loads(zk0(federation.server, "server", "nodes", "list", "--json").stdout)["nodes"]
    }
    paths = Paths.resolve(federation.server)
    quarantine(paths.quarantine_file, nodes["bob"]["node_id"], round=1, reason="update norm 10x the median")
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "zk0cli", "server", "nodes", "list"],
            env={**zk0_env(federation.server), "COLUMNS": "80"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        assert zk0(federation.server, "server", "nodes", "release", "bob").returncode == 0  # later tests sample bob
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), listed.stdout
    rows = {line.split()[0]: line.split() for line in lines if line.split()[:1] in (["alice"], ["bob"])}
    assert rows["alice"][1:3] == [nodes["alice"]["node_id"], "online"]
    assert rows["bob"][1:4] == [nodes["bob"]["node_id"], "online", "(quarantined)"]


def _online(federation) -> int:
    listed = zk0(federation.server, "server", "nodes", "list", "--json")
    return (
        sum(node["status"] == "online" for node in json.loads(listed.stdout)["nodes"]) if listed.returncode == 0 else 0
    )


def test_doctor_says_which_hub_settings_the_running_servers_serverapps_see(federation, monkeypatch):
    """Read from the real SuperLink's environment, which its ServerApps inherit."""
    from zk0cli.core.checks import Status
    from zk0cli.services.doctor import DoctorContext
    from zk0cli.services.doctor.hub import check_serverapp_environment

    paths = Paths.resolve(federation.server)
    context = DoctorContext(paths=paths, config=config_mod.load(paths.config_file).config, role="server")
    monkeypatch.setenv("HF_HOME", str(federation.server / "hf"))  # what the server was started with
    seen = check_serverapp_environment(context)
    assert seen.status is Status.OK and f"HF_HOME={federation.server / 'hf'}" in seen.detail
    monkeypatch.setenv("HF_HOME", "/elsewhere")  # as if hf.home changed in the config since
    changed = check_serverapp_environment(context)
    assert changed.status is Status.WARN and "HF_HOME differ" in changed.detail and "zk0 stop server" in changed.fix


def test_a_runs_preflight_says_when_its_serverapp_would_see_other_hub_settings(federation, tmp_path):
    """Issue 12: `zk0 run` checks the policy and held-out data with its own shell's Hub settings;
    the ServerApp fetches with the running SuperLink's, so the preflight says when they differ."""
    settings = federation.run_settings(heldout=False)
    same = zk0(federation.server, "run", "--dry-run", "--json", *settings)
    assert same.returncode == 0, same.stderr
    seen = {c["name"]: c for c in json.loads(same.stdout)["checks"]}["serverapp env"]
    assert seen["status"] == "ok" and f"HF_HOME={federation.server / 'hf'}" in seen["detail"]
    elsewhere = {**zk0_env(federation.server), "HF_HOME": str(tmp_path / "hf")}  # another shell
    other = subprocess.run(
        [sys.executable, "-m", "zk0cli", "run", "--dry-run", "--json", *settings],
        env=elsewhere,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert other.returncode == 0, other.stderr  # a warning: the run may still be what was meant
    differs = {c["name"]: c for c in json.loads(other.stdout)["checks"]}["serverapp env"]
    assert differs["status"] == "warn" and "HF_HOME differ" in differs["detail"]
    assert differs["data"]["running"]["HF_HOME"] == str(federation.server / "hf")
    assert "zk0 stop server" in differs["fix"]


def test_nodes_run_only_the_installed_zk0_clientapp(federation):
    """A run of another app reaches the nodes but its ClientApp code never runs there."""
    server_paths = Paths.resolve(federation.server)
    run_id = flower.run_flwr(
        server_paths, ["run", str(TINY_APP), flower.CLI_CONNECTION, "--run-config", "num-server-rounds=1"]
    )["run-id"]
    wait_for(lambda: "runs only zk0's ClientApp" in federation.node_log("bob"), 120, "bob refusing the tiny app")
    assert "asks for 'tiny_app.client_app:app'" in federation.node_log("bob")
    flower.run_flwr(server_paths, ["stop", str(run_id), flower.CLI_CONNECTION])


def test_superlink_killed_mid_run_restarts_nodes_reconnect_and_resume_finishes_the_run(federation):
    server_paths = Paths.resolve(federation.server)
    submitted = zk0(
        federation.server, "run", "--rounds", "3", "--json", *federation.run_settings(**{"checkpoint-interval": 1})
    )
    assert submitted.returncode == 0, submitted.stderr
    run = json.loads(submitted.stdout)
    record = RunRecord(Path(run["run_dir"]))
    wait_for(lambda: [p.name for p in record.checkpoints()] == ["round_0001"], 240, "the round-1 checkpoint")

    superlink_pid = supervisor.read_state(server_paths, "server")["processes"]["superlink"]["pid"]
    os.kill(superlink_pid, signal.SIGKILL)

    def superlink_back() -> bool:
        superlink = supervisor.read_state(server_paths, "server")["processes"]["superlink"]
        return superlink["restarts"] >= 1 and superlink["pid"] != superlink_pid and superlink["state"] == "healthy"

    # The nodes' reconnection is proved below: both train rounds 2 and 3 of the resumed run. (A
    # SuperNode may not even log a failed attempt: the fleet front retries a call that failed
    # before reaching the SuperLink once, and a restart can fit in that window.)
    wait_for(superlink_back, 120, "the supervisor restarting the SuperLink")
    before = {entry["round"] for entry in record.rounds()}
    assert {0, 1} <= before and max(before) < 3  # nothing the run recorded was lost
    last_checkpoint = int(record.checkpoints()[-1].name.split("_")[1])

    resumed = zk0(federation.server, "run", "--resume", run["run_id"], "--stream", "--json", timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout)
    assert result["state"] == "completed" and result["resumed"] and result["run_dir"] == run["run_dir"]
    # Flower marks the killed run failed once its ServerApp's heartbeat expires; before that,
    # resume stops it (orphaned_by_restart). Either way it has finished now.
    assert runs_service.run_status(server_paths, run["run_id"]).startswith("finished")
    assert ("stopped run" in resumed.stderr) == (f"stopped run {run['run_id']}" in resumed.stderr)
    rounds = {entry["round"]: entry for entry in record.rounds()}
    assert sorted(rounds) == [0, 1, 2, 3]
    assert all(rounds[n]["clients"]["aggregate"]["num_clients"] == 2 for n in (2, 3))
    config = record.read_config()
    assert config["resumes"][0]["from_round"] == last_checkpoint
    assert record.flwr_run_ids()[0] == int(run["run_id"]) and str(record.flwr_run_ids()[1]) == result["run_id"]


def wait_for(condition, timeout_s: float, what: str, process: subprocess.Popen | None = None) -> None:
    """Poll ``condition``; on a timeout, or when ``process`` (the command being waited on) ends
    first, fail with what that process printed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"{process.args[3:5]} exited {process.returncode} before {what}: {err[-3000:]} {out[-2000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


def test_ctrl_c_on_a_foreground_serve_leaves_no_process(tmp_path):
    home = tmp_path / "fg"
    port = free_port()
    env = {**os.environ, "ZK0_HOME": str(home)}
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zk0cli",
            *insecure_loopback_serve(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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


def test_only_runs_that_began_before_the_superlink_restart_count_as_orphaned():
    from zk0cli.services.flower_control import FlowerRun

    def run(running_at=None, starting_at=None):
        return FlowerRun(1, "running", "zk0/zk0", 0.0, starting_at, running_at, None, "", 0, 0)

    restarted = 1_000.0  # the SuperLink's last start, epoch seconds
    assert runs_service.orphaned_by_restart(run(running_at=996.0), restarted)
    assert runs_service.orphaned_by_restart(run(starting_at=900.0), restarted)  # starting, never running
    assert not runs_service.orphaned_by_restart(run(running_at=1_004.0), restarted)  # after it
    assert not runs_service.orphaned_by_restart(run(), restarted)  # pending
    assert not runs_service.orphaned_by_restart(run(running_at=996.0), None)  # no restart time known


def test_run_commands_check_their_input_before_reaching_flower(tmp_path):
    home = tmp_path / "no-server"
    bad_key = zk0(home, "run", "--set", "no-such-key=1")
    assert bad_key.returncode == ExitCode.BAD_INPUT and "unknown run-config key 'no-such-key'" in bad_key.stderr
    no_server = zk0(home, "run", "--rounds", "2")
    assert no_server.returncode == ExitCode.UNREACHABLE and "zk0 server serve --detach" in no_server.stderr
    listed = zk0(home, "runs", "--json")  # the records here are listed; Flower's view is said to be missing
    assert listed.returncode == 0 and "the server is not running" in json.loads(listed.stdout)["left_out"]
    assert zk0(home, "run", "stop", "abc").returncode == ExitCode.BAD_INPUT
    with_set = zk0(home, "run", "--resume", "7", "--set", "lr=0.1")
    assert with_set.returncode == ExitCode.BAD_INPUT and "--set cannot change a resumed run" in with_set.stderr
    unknown = zk0(home, "run", "--resume", "7")
    assert unknown.returncode == ExitCode.BAD_INPUT and "no run '7'" in unknown.stderr and "zk0 runs" in unknown.stderr
    by_hand = zk0(home, "run", "--set", "resume=true")
    assert by_hand.returncode == ExitCode.BAD_INPUT and "zk0 run --resume RUN_ID" in by_hand.stderr
    for result in (with_set, unknown, by_hand):
        assert "Traceback" not in result.stderr and "hint:" in result.stderr
