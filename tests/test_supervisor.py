"""The supervisor with a stand-in service (tests/fixtures/services/fake_service.py): real processes,
real signals, real files; each test is bounded in time and stops what it started."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from serve_args import insecure_loopback_serve

from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.core.paths import Paths
from zk0cli.core.timefmt import iso_from_datetime
from zk0cli.services import supervisor as sup

FAKE = Path(__file__).parent / "fixtures" / "services" / "fake_service.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def fake_spec(name: str, *args: str, port: int | None = None, **process) -> sup.ServiceSpec:
    argv = [sys.executable, str(FAKE), *args] + (["--port", str(port)] if port else [])
    health = {"health_url": f"http://127.0.0.1:{port}/health", "ports": {"http": port}} if port else {}
    restart = process.pop(
        "restart", sup.RestartPolicy(backoff_initial_s=0.2, quick_exit_s=10, give_up_after=3, stop_grace_s=3)
    )
    return sup.ServiceSpec(
        name=name,
        kind="node",
        processes=[sup.ProcessSpec(name="fake", argv=argv, **health, **process)],
        restart=restart,
    )


def log_text(paths: Paths, service: str) -> str:
    return "\n".join(sup.read_log(paths, service, tail=10_000))


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def paths(zk0_home) -> Paths:
    return Paths.resolve(zk0_home)


@pytest.fixture
def started(paths):
    """Start specs detached; whatever is still running at the end is stopped."""
    names = []

    def start(spec: sup.ServiceSpec) -> dict:
        names.append(spec.name)
        return sup.start_detached(paths, spec, wait_s=30)

    yield start
    for name in names:
        state = sup.read_state(paths, name)
        if state and state["supervisor_alive"]:
            sup.stop_service(paths, name, timeout_s=15)


@pytest.mark.slow
def test_any_exit_is_restarted_with_backoff_then_given_up_with_the_last_lines(paths, started):
    started(fake_spec("exit0", "--exit-after", "0.3", "--exit-code", "0"))
    state = wait_for(lambda: (s := sup.read_state(paths, "exit0")) and s["state"] == "failed" and s, 20, "give-up")
    log = log_text(paths, "exit0")
    assert log.count("[zk0] fake exited with code 0 after") == 2  # exit 0 is restarted like any other exit
    assert "giving up: fake exited with code 0, 3 times" in log
    assert "restart attempt 1 in 0.2 s" in log and "restart attempt 2 in 0.4 s" in log
    assert "3 times in a row within 10 s of starting" in state["reason"]
    assert "fake service exiting with 0" in state["last_log_lines"]
    assert state["processes"]["fake"]["last_exit_code"] == 0
    wait_for(lambda: sup.lock_holder(paths, "exit0") is None, 10, "the supervisor to exit and free its lock")
    exits = [_stamp(line) for line in log.splitlines() if "[zk0] fake exited with code 0 after" in line]
    starts = [_stamp(line) for line in log.splitlines() if "[zk0] started fake" in line]
    assert (starts[1] - exits[0]).total_seconds() >= 0.2
    assert (starts[2] - exits[1]).total_seconds() >= 0.4


@pytest.mark.slow
def test_a_process_that_never_gets_healthy_is_reported_with_the_reason(paths, started):
    port = free_port()  # nothing will listen here
    spec = fake_spec(
        "sick",
        restart=sup.RestartPolicy(backoff_initial_s=0.1, give_up_after=2, start_timeout_s=1.0),
        health_url=f"http://127.0.0.1:{port}/health",
    )
    with pytest.raises(Zk0Error) as failure:
        started(spec)
    assert "not healthy after 1 s (connection refused)" in failure.value.message
    assert "zk0 logs node sick" in failure.value.hint


@pytest.mark.slow
def test_second_start_is_refused_and_a_stale_lock_is_cleared(paths, started):
    spec = fake_spec("locked", port=free_port())
    state = started(spec)
    pid = state["supervisor"]["pid"]
    with pytest.raises(Zk0Error) as second:
        sup.start_detached(paths, spec)
    assert second.value.code == ExitCode.BAD_INPUT
    assert f"already running (pid {pid})" in second.value.message
    direct = subprocess.run(
        [
            sys.executable,
            "-m",
            "zk0cli.services.supervisor",
            "run",
            str(sup.ServiceFiles.of(paths, "locked").spec),
            paths.to_json(),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert direct.returncode == ExitCode.BAD_INPUT and "already running" in direct.stderr

    sup.stop_service(paths, "locked")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sup.ServiceFiles.of(paths, "locked").lock.write_text(f"{dead.pid}\n")
    started(spec)
    assert f"cleared a stale lock left by pid {dead.pid}" in log_text(paths, "locked")


@pytest.mark.slow
def test_stop_and_kill_9_leave_no_process_of_the_tree(paths, started):
    spec = fake_spec("tree", "--children", port=free_port())
    state = started(spec)
    leader = state["processes"]["fake"]["pid"]
    children = _children_of(paths, "tree", leader)
    assert all(alive(pid) for pid in children)

    os.kill(leader, signal.SIGKILL)  # the child in its own session is re-parented to the supervisor, which ends it
    restarted = wait_for(
        lambda: (
            (s := sup.read_state(paths, "tree"))["processes"]["fake"]["pid"] not in (None, leader)
            and s["state"] == "healthy"
            and s
        ),
        20,
        "restart after kill -9",
    )
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "orphans of the killed process to end")

    new_leader = restarted["processes"]["fake"]["pid"]
    tree = [restarted["supervisor"]["pid"], new_leader, *_children_of(paths, "tree", new_leader)]
    sup.stop_service(paths, "tree")
    assert not [pid for pid in tree if alive(pid)]
    final = sup.read_state(paths, "tree")
    assert final["state"] == "stopped" and final["processes"]["fake"]["pid"] is None


@pytest.mark.slow
def test_stop_ends_what_a_killed_supervisor_left_behind(paths, started):
    state = started(fake_spec("orphaned", "--children", port=free_port()))
    wait_for(lambda: sup.read_state(paths, "orphaned")["processes"]["fake"]["descendants"], 10, "a tree snapshot")
    state = sup.read_state(paths, "orphaned")
    left = [state["processes"]["fake"]["pid"], *state["processes"]["fake"]["descendants"]]
    os.kill(state["supervisor"]["pid"], signal.SIGKILL)
    wait_for(lambda: not sup.read_state(paths, "orphaned")["supervisor_alive"], 10, "the supervisor to die")
    assert sup.read_state(paths, "orphaned")["state"] == "stopped"  # a dead supervisor's services are not "healthy"
    assert all(alive(pid) for pid in left)
    result = sup.stop_service(paths, "orphaned")
    assert sorted(result["killed"]) == sorted(left)
    assert not [pid for pid in left if alive(pid)]


@pytest.mark.slow
def test_warm_spare_takes_over_and_runs_the_restart_hook(paths, started):
    port = free_port()
    spec = fake_spec(
        "warm",
        port=port,
        preload="fake_service:main",
        restart_hook="fake_service:hook",
        env={"PYTHONPATH": str(FAKE.parent)},
        watch={"up": r"fake service pid (?P<pid>\d+) up"},
    )
    spec.processes[0].argv = ["fake-service", "--port", str(port)]
    state = started(spec)
    leader = state["processes"]["fake"]["pid"]
    spare = int(
        wait_for(lambda: re.search(r"warm spare pid (\d+)", log_text(paths, "warm")), 30, "a warm spare").group(1)
    )
    os.kill(leader, signal.SIGKILL)
    state = wait_for(
        lambda: (
            (s := sup.read_state(paths, "warm"))["processes"]["fake"]["pid"] == spare and s["state"] == "healthy" and s
        ),
        20,
        "the spare to take over",
    )
    assert state["processes"]["fake"]["restarts"] == 1
    assert f"hook saw argv ['--port', '{port}'] and events ['up']" in log_text(paths, "warm")


@pytest.mark.slow
def test_the_server_probe_reports_reachability_in_state_and_logs(paths, started):
    port = free_port()
    spec = fake_spec("probed", port=free_port())
    spec.probes = [sup.ProbeSpec(name="server", url=f"http://127.0.0.1:{port}/health", period_s=0.2)]
    started(spec)
    probe = wait_for(
        lambda: (p := sup.read_state(paths, "probed")["probes"]["server"])["consecutive_failures"] >= 2 and p,
        10,
        "failed probes",
    )
    assert probe["ok"] is False and probe["detail"] == "connection refused"
    assert "server unreachable at" in log_text(paths, "probed")
    assert re.search(
        r"server still unreachable: connection refused \(check \d+, next in 0.2 s\)", log_text(paths, "probed")
    )


def _children_of(paths: Paths, service: str, leader: int) -> list[int]:
    match = wait_for(
        lambda: re.findall(r"\[fake\] children (\d+) (\d+)", log_text(paths, service)), 10, "children line"
    )
    return [int(pid) for pid in match[-1]]


def _stamp(line: str) -> dt.datetime:
    return dt.datetime.fromisoformat(line[:23])


# --------------------------------------------------------------------------- logs


def test_rotating_log_keeps_backups_and_reads_across_them(paths):
    log = sup.RotatingLog(sup.ServiceFiles.of(paths, "rot").log, max_bytes=400, backups=2)
    for index in range(40):
        log.write("fake", f"line {index:02d}")
    log.close()
    files = sup.log_files(paths, "rot")
    assert [f.name for f in files] == ["rot.log.2", "rot.log.1", "rot.log"]
    tail = sup.read_log(paths, "rot", tail=5)
    assert [line.rsplit(" ", 1)[-1] for line in tail] == ["35", "36", "37", "38", "39"]
    assert len(sup.read_log(paths, "rot", tail=1000)) < 40  # the oldest rotated away


def test_a_line_is_stamped_once_and_routine_polling_stays_out_of_the_log(paths):
    from zk0cli.services import flower
    from zk0cli.services.supervisor.process import SupervisedProcess

    log = sup.RotatingLog(sup.ServiceFiles.of(paths, "once").log, max_bytes=1 << 20, backups=1)
    log.write("superlink", '2026-12-02T15:53:40.369Z INFO [uvicorn.access] 127.0.0.1:1 - "POST /v1/fleet/x" 200')
    log.write("superlink", "2026-12-02 15:53:40,369 a line stamped the logging way")
    log.close()
    first, second = sup.read_log(paths, "once", tail=2)
    assert first.split(" [superlink] ")[1].startswith("INFO [uvicorn.access]")
    assert second.split(" [superlink] ")[1] == "a line stamped the logging way"

    superlink = SupervisedProcess(
        sup.ProcessSpec(name="superlink", argv=["true"], unlogged=list(flower.SUPERLINK_POLLING_LINES)), env={}
    )
    assert superlink.unlogged("INFO :      ControlServicer.ListRuns")
    assert superlink.unlogged('INFO [uvicorn.access] 127.0.0.1:5 - "POST /v1/control/list-nodes HTTP/1.1" 200')
    assert not superlink.unlogged('INFO [uvicorn.access] 127.0.0.1:5 - "POST /v1/control/stop-run HTTP/1.1" 200')
    assert not superlink.unlogged("INFO :      ControlServicer.StartRun")
    assert not SupervisedProcess(sup.ProcessSpec(name="x", argv=["true"]), env={}).unlogged("anything")


def test_read_log_since_filters_by_time_stamp(paths):
    log_path = sup.ServiceFiles.of(paths, "since").log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    lines = [f"{iso_from_datetime(now - dt.timedelta(minutes=m))} [fake] {m} min ago" for m in (30, 12, 5, 1)]
    log_path.write_text("\n".join(lines) + "\n")
    recent = sup.read_log(paths, "since", since=sup.parse_since("10m"))
    assert [line.split("] ")[1] for line in recent] == ["5 min ago", "1 min ago"]
    log = sup.RotatingLog(log_path, max_bytes=1 << 20, backups=1)  # the writer stamps lines as the reader expects
    log.write("fake", "just now")
    log.close()
    assert sup.read_log(paths, "since", since=sup.parse_since("10s"))[-1].endswith("[fake] just now")
    assert sup.read_log(paths, "since", since=now + dt.timedelta(minutes=1)) == []
    assert sup.parse_since("2026-01-31T12:00:00Z").year == 2026
    with pytest.raises(Zk0Error) as bad:
        sup.parse_since("yesterday")
    assert bad.value.code == ExitCode.BAD_INPUT


def test_logs_and_stop_commands_explain_bad_targets(cli, paths):
    missing = cli("logs", "node", "nosuch")
    assert missing.code == ExitCode.BAD_INPUT and "no log for node-nosuch" in missing.stderr
    log = sup.RotatingLog(sup.ServiceFiles.of(paths, "node-so100-stack").log, max_bytes=1 << 20, backups=1)
    log.write("supernode", "joined")
    log.close()
    for name in ("so100-stack", "node-so100-stack"):  # the node's name, or the service name status shows
        shown = cli("logs", "node", name)
        assert shown.code == 0 and "[supernode] joined" in shown.stdout, shown.stderr
    wrong = cli("logs", "node", "so100")
    assert wrong.code == ExitCode.BAD_INPUT and "zk0 logs node so100-stack" in wrong.stderr
    vague = cli("stop")
    assert vague.code == ExitCode.BAD_INPUT and "zk0 stop server | zk0 stop node NAME" in vague.stderr
    unknown = cli("stop", "node", "ghost")
    assert unknown.code == ExitCode.BAD_INPUT and "never run on this machine" in unknown.stderr


def test_spec_round_trips_through_json():
    spec = fake_spec("json", port=1234, watch={"up": "x"}, fatal={"bad": "reason"})
    spec.probes = [sup.ProbeSpec(name="server", url="https://h:1/health", ca="/ca.pem")]
    again = sup.ServiceSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_install_service_prints_a_unit_running_the_same_command(cli, monkeypatch):
    argv = ["zk0", "server", "serve", "--port", "9999", "--detach", "--install-service"]
    monkeypatch.setattr(sys, "argv", argv)
    result = cli(*argv[1:])
    assert result.code == 0, result.stderr
    assert f"ExecStart={sys.executable} -m zk0cli server serve --port 9999\n" in result.stdout
    assert "KillMode=mixed" in result.stdout and f"Environment=ZK0_HOME={os.environ['ZK0_HOME']}" in result.stdout


@pytest.mark.slow
def test_what_a_service_keeps_is_readable_by_its_owner_alone(paths, started):
    started(fake_spec("private", port=free_port()))
    for directory in (paths.state_dir, paths.state_dir / "services", paths.log_dir, paths.data_dir):
        assert directory.stat().st_mode & 0o777 == 0o700, directory


def test_an_unwritable_log_directory_is_a_machine_not_ready(paths, cli):
    paths.log_dir.parent.mkdir(parents=True, exist_ok=True)
    paths.log_dir.write_text("a file where the log directory should be")
    with pytest.raises(Zk0Error) as refused:
        sup.run_foreground(paths, fake_spec("nolog", port=free_port()), lambda _level, _message: None)
    assert refused.value.code == ExitCode.ENV_NOT_READY
    assert str(paths.log_dir) in refused.value.message and "ZK0_HOME" in refused.value.hint
    result = cli(*insecure_loopback_serve(free_port()))
    assert result.code == ExitCode.ENV_NOT_READY and "cannot write" in result.stderr and "hint:" in result.stderr
