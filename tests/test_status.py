"""`zk0 status`: snapshots of real supervised processes, a real run record and a real SuperLink.

Run records are replayed from tests/data/status_run_record (a real 3-round run of zk0's engine,
see its README) through zk0's own record writer, so the files are exactly what a run leaves.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from zk0cli.core.files import atomic_write_json
from zk0cli.core.paths import Paths
from zk0cli.fl.records import RunRecord
from zk0cli.services import flower, supervisor
from zk0cli.services import status as status_mod
from zk0cli.services.pki import ServerPki
from zk0cli.services.status import gpu as status_gpu
from zk0cli.ui.status import SPARK_BLOCKS, render_status, sparkline

RECORD = Path(__file__).parent / "data" / "status_run_record"
RECORD_NAME = "20261128-060000-0001-run4242"
TINY_APP = Path(__file__).parent / "fixtures" / "tiny_app"  # a numpy-only Flower app
TRAINING_LINES = (
    "round 2 pick [####################] 3/3 loss 0.5321",
    "round 3 pick [######..............] 1/3 loss 0.4",
)


# --------------------------------------------------------------------------- helpers


def render(snapshot: status_mod.Snapshot, width: int = 80) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(render_status(snapshot, width=width))
    return console.export_text()


def python_process(name: str, code: str = "import time; time.sleep(120)") -> supervisor.ProcessSpec:
    return supervisor.ProcessSpec(name=name, argv=[sys.executable, "-c", code])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def paths(zk0_home) -> Paths:
    return Paths.resolve()


@pytest.fixture
def supervised(paths):
    """Start real supervised services (detached supervisors); every one is stopped afterwards."""
    started = []

    def start(spec: supervisor.ServiceSpec) -> dict:
        started.append(spec.name)
        return supervisor.start_detached(paths, spec, wait_s=60)

    yield start
    for name in started:
        supervisor.stop_service(paths, name)


def replay_record(runs_dir: Path, *, rounds: int = 3, state: str = "completed", flwr_run_id: int = 0) -> RunRecord:
    """Write the recorded run through RunRecord, as the ServerApp does, up to ``rounds``."""
    config = json.loads((RECORD / "config.json").read_text())
    config["flwr_run_id"] = flwr_run_id or config["flwr_run_id"]
    record = RunRecord.create(runs_dir, RECORD_NAME)
    record.write_status("starting", flwr_run_id=config["flwr_run_id"])
    extra = {k: v for k, v in config.items() if k not in ("run_config", "versions", "dataset_fingerprints")}
    record.write_config(config["run_config"], config["dataset_fingerprints"], extra)
    for n in range(rounds + 1):
        record.write_round(json.loads((RECORD / f"round_{n}_server_eval.json").read_text()))
        record.write_status("running", round=n, rounds=config["run_config"]["num-server-rounds"])
    if state != "running":
        record.write_status(state, rounds=config["run_config"]["num-server-rounds"])
    return record


def recorded_losses() -> list[float]:
    return [
        json.loads((RECORD / f"round_{n}_server_eval.json").read_text())["server_eval"]["composite"]["policy_loss"]
        for n in range(4)
    ]


# --------------------------------------------------------------------------- services


def test_real_supervised_services_render_with_live_numbers(paths, supervised):
    supervised(
        supervisor.ServiceSpec(
            name="server",
            kind="server",
            info={"min_nodes": 2},
            processes=[python_process("superlink"), python_process("fleet-proxy")],
        )
    )
    say = "; ".join(f"print({line!r}, file=sys.stderr, flush=True)" for line in TRAINING_LINES)
    node = supervised(
        supervisor.ServiceSpec(
            name="node-alice",
            kind="node",
            processes=[python_process("supernode", f"import sys, time; {say}; time.sleep(120)")],
            info={"server": "fl.example.org:9092", "dataset": "hf:me/pick"},
        )
    )

    collector = status_mod.StatusCollector(paths, role="server")
    collector.snapshot()
    time.sleep(0.3)  # the second look measures CPU over the time between refreshes
    snapshot = collector.snapshot()

    assert snapshot.sources["services"].state == "ok"
    server, alice = snapshot.services
    assert (server.service, alice.service) == ("server", "node-alice")
    assert [p.name for p in server.processes] == ["superlink", "fleet-proxy"]
    supernode = alice.processes[0]
    assert supernode.pid == node["processes"]["supernode"]["pid"] and supernode.state == "healthy"
    assert supernode.rss_bytes > 1_000_000 and supernode.cpu_percent is not None and supernode.cpu_window_s < 5
    host = snapshot.node_hosts[0]
    assert (host.server, host.connection, host.dataset) == ("fl.example.org:9092", "connected", "hf:me/pick")
    assert (host.last_round, host.last_round_loss) == (2, 0.5321)  # from the node's log, as the supervisor wrote it
    assert host.training == "round 3: step 1/3, loss 0.4"
    assert not snapshot.gpu

    text = render(snapshot)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert str(supernode.pid) in text and "healthy" in text and "round 2, loss 0.5321" in text
    assert "GPU" not in text  # no GPU here: the column is not shown at all


def test_node_whose_server_does_not_answer_reads_as_reconnecting(paths, supervised):
    closed = free_port()
    supervised(
        supervisor.ServiceSpec(
            name="node-dave",
            kind="node",
            processes=[python_process("supernode")],
            info={"server": f"127.0.0.1:{closed}"},
            probes=[supervisor.ProbeSpec(name="server", url=f"http://127.0.0.1:{closed}/health", period_s=0.2)],
        )
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        host = status_mod.collect(paths).node_hosts[0]
        if host.connection.startswith("reconnecting"):
            break
        time.sleep(0.3)
    assert re.fullmatch(r"reconnecting \(attempt \d+\): .+", host.connection), host.connection
    assert "reconnecting (attempt" in render(status_mod.collect(paths))


def test_stale_heartbeat_is_not_shown_as_live(paths, supervised):
    supervised(supervisor.ServiceSpec(name="node-bob", kind="node", processes=[python_process("supernode")]))
    files = supervisor.ServiceFiles.of(paths, "node-bob")
    frozen = json.loads(files.state.read_text())
    frozen["updated_at"] = "2020-01-01T00:00:00.000Z"  # a supervisor that stopped writing its heartbeat
    atomic_write_json(files.state.with_name("node-frozen.json"), frozen)

    snapshot = status_mod.collect(paths)
    frozen_view = next(v for v in snapshot.services if v.service == "node-frozen")
    assert frozen_view.source.state == "stale" and "heartbeat" in frozen_view.source.reason
    assert frozen_view.processes[0].cpu_percent is None and frozen_view.processes[0].rss_bytes is None
    text = render(snapshot, width=120)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if "node-frozen" in line)
    frozen_row = lines[at + 1]  # its process, under the service's own row
    assert "supernode" in frozen_row and "stale" in lines[at] and "stale" in frozen_row
    assert str(frozen["processes"]["supernode"]["pid"]) not in frozen_row
    assert "no supervisor heartbeat" in text


def test_killed_supervisor_reads_as_stopped_without_live_numbers(paths, supervised):
    state = supervised(supervisor.ServiceSpec(name="node-carol", kind="node", processes=[python_process("supernode")]))
    os.kill(state["supervisor"]["pid"], 9)  # its orphaned child is ended by stop_service at teardown
    os.waitpid(state["supervisor"]["pid"], 0)  # started from this process: reap it, as init would

    carol = status_mod.collect(paths).services[0]
    assert carol.state == "stopped" and "supervisor is no longer running" in carol.reason
    assert carol.processes[0].pid is None and carol.processes[0].cpu_percent is None
    text = render(status_mod.collect(paths))
    assert "supervisor is no longer running" in text and str(state["processes"]["supernode"]["pid"]) not in text


@pytest.mark.parametrize("content", ['{"schema": 1, "service": "node-bob", "sta', "", "[1, 2"])
def test_corrupted_state_file_is_reported_and_the_rest_renders(paths, supervised, content):
    supervised(supervisor.ServiceSpec(name="server", kind="server", processes=[python_process("superlink")]))
    broken = supervisor.ServiceFiles.of(paths, "node-bob").state
    broken.write_text(content)

    snapshot = status_mod.collect(paths)
    bob = next(v for v in snapshot.services if v.service == "node-bob")
    assert bob.source.state == "unreachable" and "node-bob.json is" in bob.source.reason
    assert next(v for v in snapshot.services if v.service == "server").state == "healthy"
    text = render(snapshot, width=160)
    assert "node-bob.json is" in text and "healthy" in text
    assert any(problem.startswith("node-bob: unreachable") for problem in snapshot.problems)


# --------------------------------------------------------------------------- run records


def test_finished_run_record_shows_rounds_losses_and_clients(paths):
    replay_record(paths.runs_dir)
    snapshot = status_mod.collect(paths)

    run = snapshot.runs[0]
    losses = recorded_losses()
    assert (run.run_id, run.flwr_run_id, run.status) == ("4242", 4242, "completed")
    assert (run.round, run.rounds_total, run.eta_s) == (3, 3, None)
    assert run.loss_history == losses and run.last_loss == losses[-1]
    assert run.best_loss == min(losses) and run.best_round == losses.index(min(losses))
    assert run.mean_round_s == pytest.approx(
        sum(json.loads((RECORD / f"round_{n}_server_eval.json").read_text())["seconds"] for n in (1, 2, 3)) / 3
    )
    assert run.clients_round == 3 and [c.node for c in run.clients] == ["1000", "1001"]
    assert run.clients[0].steps == 3 and run.clients[0].dataset == "pick" and run.clients[0].fedprox_loss > 0
    assert not run.problems

    text = render(snapshot)
    assert "3/3" in text and "completed" in text and sparkline(losses, 8) in text
    assert "round 3 of run 4242" in text and "accepted" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_the_round_panel_shows_each_clients_bytes_up_and_down_under_its_registered_name(paths):
    """Issue 12: a round record carries each client's weight bytes both ways and the admin's node
    names (a late node's too); the round panel shows them in 80 columns."""
    record = replay_record(paths.runs_dir, rounds=3)
    entry = json.loads((record.root / "round_3_server_eval.json").read_text())
    for client, (name, down) in zip(entry["clients"]["each"], (("alice", 3 * 2**20), ("bob", 6 * 2**20)), strict=True):
        client.update(name=name, bytes_down=down, bytes_up=down // 2)
    entry["late"] = [{"node": "13705448887388137106", "name": "carol", "reason": "not in 1 s (discarded)"}]
    record.write_round(entry)
    text = render(status_mod.collect(paths))
    assert all(len(line) <= 80 for line in text.splitlines())
    cells = [line.strip("│ ").split() for line in text.splitlines()]
    assert ["node", "loss", "fedprox", "steps", "s", "up", "down", "outcome"] in cells
    rows = {row[0]: row for row in cells if row[:1] in (["alice"], ["bob"], ["carol"])}
    assert rows["alice"][-5:] == ["1.5", "MiB", "3.0", "MiB", "accepted"]
    assert rows["bob"][-5:] == ["3.0", "MiB", "6.0", "MiB", "accepted"]
    assert "late:" in rows["carol"] and "13705448887388137106" not in text  # the late node by its name


def test_a_resumed_record_belongs_to_the_flower_run_that_resumed_it(paths):
    record = replay_record(paths.runs_dir, rounds=2, state="running")
    config = json.loads((record.root / "config.json").read_text())
    config["resumes"] = [
        {"flwr_run_id": 5151, "from_round": 1, "superseded_rounds": [2], "at": 0.0, "num_server_rounds": 3}
    ]
    (record.root / "config.json").write_text(json.dumps(config))
    (run,) = status_mod.collect(paths).runs
    assert (run.run_id, run.flwr_run_id) == ("5151", 5151)


def test_running_record_gives_eta_and_rejected_updates_with_reason(paths):
    record = replay_record(paths.runs_dir, rounds=1, state="running")
    entry = json.loads((record.root / "round_1_server_eval.json").read_text())
    entry["rejected"] = [{"node": "1002", "dataset": "place", "reason": "digest mismatch: update altered in transit"}]
    record.write_round(entry)

    run = status_mod.collect(paths).runs[0]
    assert run.status == "running" and run.round == 1
    assert run.eta_s == pytest.approx(2 * entry["seconds"])
    rejected = [c for c in run.clients if c.outcome == "rejected"]
    assert rejected[0].node == "1002" and "digest mismatch" in rejected[0].reason

    text = render(status_mod.collect(paths), width=160)
    assert "1/3" in text and "round 2 in progress" in text and "rejected: digest mismatch" in text


def test_half_written_run_record_says_what_is_wrong(paths):
    record = replay_record(paths.runs_dir)
    round_2 = record.root / "round_2_server_eval.json"
    round_2.write_text(round_2.read_text()[:300])  # a writer killed mid-file (not zk0's atomic one)
    (record.root / "config.json").unlink()

    run = status_mod.collect(paths).runs[0]
    assert any("round_2_server_eval.json is not valid JSON" in p for p in run.problems)
    assert any("config.json is missing" in p for p in run.problems)
    assert run.round == 3 and len(run.loss_history) == 3  # the readable rounds still count
    text = render(status_mod.collect(paths), width=160)
    assert "round_2_server_eval.json is not valid JSON" in text and "config.json is missing" in text


def test_record_reader_reparses_only_changed_files(paths):
    record = replay_record(paths.runs_dir, rounds=1, state="running")
    reader = status_mod.RunRecordReader()
    assert reader.read(record.root, now=time.time()).round == 1
    parsed = dict(reader._cache)
    record.write_round(json.loads((RECORD / "round_2_server_eval.json").read_text()))
    assert reader.read(record.root, now=time.time()).round == 2
    unchanged = record.root / "round_1_server_eval.json"
    assert reader._cache[unchanged] is parsed[unchanged]  # same object: not read again


# --------------------------------------------------------------------------- SuperLink


def test_unreachable_superlink_is_red_with_the_reason(paths):
    flower.write_cli_connection(paths, address=f"127.0.0.1:{free_port()}", root_ca=None)
    replay_record(paths.runs_dir)
    snapshot = status_mod.collect(paths, role="server")
    assert snapshot.federation.source.state == "unreachable"
    assert "connection refused" in snapshot.federation.source.reason
    assert snapshot.runs[0].status == "completed"  # the record still answers for itself
    text = render(snapshot)
    assert "superlink: unreachable: connection refused" in text.replace("\n│ ", " ")


def test_silent_superlink_never_freezes_the_snapshot(paths):
    """A SuperLink that accepts connections but never answers: shown unreachable within the timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        flower.write_cli_connection(paths, address=f"127.0.0.1:{silent.getsockname()[1]}", root_ca=None)
        collector = status_mod.StatusCollector(paths, role="server", timeout_s=0.5)
        started = time.monotonic()
        first = collector.snapshot()
        second = collector.snapshot()
        took = time.monotonic() - started
    assert took < 3
    assert first.federation.source.state == "unreachable" and "0.5 s" in first.federation.source.reason
    assert second.federation.source.state == "unreachable"
    assert second.sources["services"].state == "ok"


def test_server_role_without_connection_says_how_to_start(paths):
    snapshot = status_mod.collect(paths, role="server")
    assert snapshot.federation.source.state == "unreachable" and "zk0 server serve" in snapshot.federation.source.reason
    assert "nothing running here" in render(snapshot)


@pytest.mark.slow
def test_real_tls_federation_nodes_and_runs_match_flwr_cli(paths, tmp_path, cli, supervised):
    """Supervised flower-superlink (TLS with zk0's certificates) and flower-supernode on loopback,
    a run submitted with `flwr run`, its record written under its Flower run id: the snapshot
    lists the nodes `flwr supernode list` lists and shows the run once, with Flower's status and
    the record's rounds."""
    assert cli("init", "--role", "server", "--public-address", "127.0.0.1", "--yes").code == 0
    pki = ServerPki.at(paths.pki_dir)
    port, runtime_port = free_port(), free_port()
    tls = flower.TlsFiles(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert))
    supervised(
        supervisor.ServiceSpec(
            name="server",
            kind="server",
            processes=[
                supervisor.ProcessSpec(
                    name="superlink",
                    health_url=f"https://127.0.0.1:{port}/health",
                    health_ca=str(pki.ca_cert),
                    argv=flower.superlink_argv(
                        host="127.0.0.1", port=port, database=str(tmp_path / "link.db"), tls=tls, node_auth=False
                    ),
                    flwr_home=str(supervisor.flwr_home(paths, "server")),
                )
            ],
        )
    )
    supervised(
        supervisor.ServiceSpec(
            name="node-tls",
            kind="node",
            processes=[
                supervisor.ProcessSpec(
                    name="supernode",
                    health_url=f"http://127.0.0.1:{runtime_port}/health",
                    argv=flower.supernode_argv(
                        superlink=f"127.0.0.1:{port}",
                        root_ca=str(pki.ca_cert),
                        auth_key=None,
                        runtime_port=runtime_port,
                        node_config={},
                    ),
                    flwr_home=str(supervisor.flwr_home(paths, "node-tls")),
                )
            ],
        )
    )
    flower.write_cli_connection(paths, address=f"127.0.0.1:{port}", root_ca=str(pki.ca_cert))

    collector = status_mod.StatusCollector(paths, role="server")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        snapshot = collector.snapshot()
        if snapshot.federation.source.state == "ok" and snapshot.federation.online:
            break
        time.sleep(0.5)
    assert snapshot.federation.online == 1, snapshot.federation
    listed = flower.run_flwr(paths, ["supernode", "list"])["nodes"]
    assert [n.node_id for n in snapshot.federation.nodes] == [int(n["node-id"]) for n in listed]
    assert snapshot.federation.nodes[0].status == "online" and snapshot.federation.nodes[0].last_seen_s < 30

    run_id = int(flower.run_flwr(paths, ["run", str(TINY_APP), flower.CLI_CONNECTION])["run-id"])
    replay_record(paths.runs_dir, flwr_run_id=run_id, state="running")
    snapshot = collector.snapshot()
    assert [r.run_id for r in snapshot.runs] == [str(run_id)]  # one row: Flower's run and its record joined
    run = snapshot.runs[0]
    assert run.status.split(":")[0] in ("pending", "starting", "running") and run.round == 3 and run.record
    text = render(snapshot)
    assert str(run_id) in text and str(snapshot.federation.nodes[0].node_id) in text

    other_ca = tmp_path / "other-ca.pem"  # a CA that did not sign the SuperLink's certificate
    shutil.copy(pki.server_cert, other_ca)
    flower.write_cli_connection(paths, address=f"127.0.0.1:{port}", root_ca=str(other_ca))
    refused = status_mod.collect(paths, role="server").federation.source
    assert refused.state == "unreachable" and refused.reason.startswith("TLS failed"), refused


# --------------------------------------------------------------------------- GPU, layout, JSON


def test_gpu_columns_appear_only_with_a_gpu_tool(paths, supervised, tmp_path, monkeypatch):
    state = supervised(supervisor.ServiceSpec(name="node-gpu", kind="node", processes=[python_process("supernode")]))
    pid = state["processes"]["supernode"]["pid"]
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if status_gpu.gpu_tool() == "":  # the real absent path: no pynvml, no nvidia-smi
        absent = status_mod.collect(paths)
        assert not absent.gpu and "gpu" not in absent.sources and "GPU" not in render(absent)

    fake = tmp_path / "bin" / "nvidia-smi"  # this machine has no GPU: stand in for the driver's tool
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
case "$1" in
  --query-compute-apps=*) echo "{pid}, 512" ;;
  pmon)
    printf '# gpu         pid   type     sm    mem    enc    dec   command\\n'
    printf '    0       {pid}     C     37     12      -      -   python\\n' ;;
esac
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    monkeypatch.setattr(status_gpu, "gpu_tool", lambda: "nvidia-smi")
    snapshot = status_mod.collect(paths)
    proc = snapshot.services[0].processes[0]
    assert snapshot.gpu and proc.gpu_percent == 37.0 and proc.gpu_memory_bytes == 512 * 1024 * 1024
    text = render(snapshot, width=120)
    assert "GPU mem" in text and "512.0 MiB" in text and "37%" in text


def test_wide_terminal_puts_panels_side_by_side(paths, supervised):
    supervised(supervisor.ServiceSpec(name="server", kind="server", processes=[python_process("superlink")]))
    replay_record(paths.runs_dir)
    flower.write_cli_connection(paths, address=f"127.0.0.1:{free_port()}", root_ca=None)
    snapshot = status_mod.collect(paths, role="server")
    narrow, wide = render(snapshot, 80), render(snapshot, 200)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    side_by_side = [line for line in wide.splitlines() if "local services" in line]
    assert side_by_side and "federation" in side_by_side[0]
    assert len(wide.splitlines()) < len(narrow.splitlines())


def test_round_files_are_found_by_the_round_in_their_name(tmp_path):
    from zk0cli.fl.record_follow import ROUND_FILE, round_files

    for number in (12, 3):
        (tmp_path / ROUND_FILE.format(number)).write_text("{}")
    (tmp_path / "round_x_server_eval.json").write_text("{}")
    assert round_files(tmp_path) == {n: tmp_path / f"round_{n}_server_eval.json" for n in (3, 12)}
    assert round_files(tmp_path / "missing") == {}


def test_sparkline_scales_between_min_and_max():
    assert sparkline([3.0, 2.0, 1.0]) == SPARK_BLOCKS[-1] + SPARK_BLOCKS[len(SPARK_BLOCKS) // 2] + SPARK_BLOCKS[0]
    assert sparkline([1.0] * 4) == SPARK_BLOCKS[3] * 4
    assert len(sparkline(list(range(40)), 16)) == 16 and sparkline([]) == ""


def test_status_json_is_one_snapshot_document(cli, paths, supervised):
    supervised(supervisor.ServiceSpec(name="server", kind="server", processes=[python_process("superlink")]))
    replay_record(paths.runs_dir)
    result = cli("status", "--json")
    assert result.code == 0, result.stderr
    document = result.json()
    assert set(document) >= {
        "taken_at",
        "host",
        "role",
        "gpu",
        "sources",
        "services",
        "federation",
        "runs",
        "node_hosts",
    }
    assert document["services"][0]["processes"][0]["state"] == "healthy"
    assert document["runs"][0]["round"] == 3 and document["runs"][0]["loss_history"] == recorded_losses()
    assert document["sources"]["services"]["state"] == "ok"
    assert document["problems"] == [f"superlink: unreachable: {document['sources']['superlink']['reason']}"]


def test_status_one_shot_and_bad_flag_combinations(cli):
    result = cli("status")
    assert result.code == 0 and "nothing running here" in result.stdout
    both = cli("status", "--watch", "--json")
    assert both.code == 2 and "--watch and --json" in both.stderr and "hint:" in both.stderr
    piped = cli("status", "--watch")
    assert piped.code == 2 and "needs a terminal" in piped.stderr and "Traceback" not in piped.stderr


def test_broken_config_still_shows_status(cli, paths):
    paths.config_file.parent.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_text("role = [")
    result = cli("status")
    assert result.code == 0 and "not valid TOML" in result.stderr and "local services" in result.stdout


def test_status_imports_no_heavy_module(tmp_path):
    probe = (
        "import sys\nfrom zk0cli.cli.app import main\n"
        "try:\n    main(['status', '--json'])\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'lerobot', 'transformers', 'flwr', 'numpy', 'pandas', 'pyarrow', 'httpx'}\n"
        "sys.stderr.write('HEAVY=' + ','.join(sorted({m.split('.')[0] for m in sys.modules} & heavy)))\n"
    )
    env = dict(os.environ, ZK0_HOME=str(tmp_path / "home"))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert done.stderr.strip().endswith("HEAVY="), done.stderr


def test_a_nodes_status_keeps_long_names_and_ids_whole_in_80_columns():
    """Issue 12: the node's `zk0 status` cut its service and process names at 80 columns."""
    from zk0cli.services.status.model import NodeHostView, ProcessView, ServiceView

    processes = [
        ProcessView("supernode", "healthy", 123456, 3725.0, 1, 0, cpu_percent=12.0, rss_bytes=512 * 2**20),
        ProcessView("clientapp", "healthy", 123457, 3725.0, 0, None, cpu_percent=180.0, rss_bytes=3 * 2**30),
    ]
    service = ServiceView("node-so100-stack-kitchen", kind="node", state="healthy", processes=processes)
    host = NodeHostView(
        "node-so100-stack-kitchen",
        server="fl.example.org:9092",
        connection="connected",
        dataset="hf:acme-robotics/so100-stack-kitchen-2026",
        last_round=12,
        last_round_loss=0.1234,
    )
    snapshot = status_mod.Snapshot(
        taken_at="2026-12-03T08:00:00Z", host="robot-lab-1", role="node", services=[service], node_hosts=[host]
    )
    text = render(snapshot, width=80)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for whole in ("node-so100-stack-kitchen", "supernode", "clientapp", "123457", "so100-stack-kitchen-2026"):
        assert whole in text


def test_a_running_run_without_server_evaluation_says_so_and_how_to_turn_it_on(paths):
    record = replay_record(paths.runs_dir, rounds=1, state="running")
    config = json.loads((record.root / "config.json").read_text())
    (record.root / "config.json").write_text(json.dumps({**config, "server_eval": False}))
    text = " ".join(render(status_mod.collect(paths), width=120).split())
    assert "server eval off (zk0 config set run.eval-datasets URI turns it on)" in text
    record.write_status("completed", rounds=3)
    assert "server eval off" not in render(status_mod.collect(paths), width=120)  # said while it runs
