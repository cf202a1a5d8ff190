"""`zk0 sim --ray-address`: the clients run on an existing Ray cluster, here a `ray start --head`
on 127.0.0.1 that the test starts (in the foreground, `--block`) and stops by its own pid."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from zk0_process import BIN, process_env, zk0

from zk0cli.core.errors import ExitCode
from zk0cli.services.flower import free_port


def _ephemeral_port() -> int:
    """A free port outside Ray's default worker range (10002-19999), which its head refuses."""
    while True:
        port = free_port()
        if not 10000 <= port < 20000:
            return port


def _wait_listening(port: int, head: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert head.poll() is None, f"ray start exited: {log.read_text()[-2000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the Ray head did not listen on {port} in {timeout_s:g} s: {log.read_text()[-2000:]}")


def _stop(head: subprocess.Popen, temp: Path) -> None:
    """SIGTERM our `ray start --block` (it stops what it started), then any process of this
    cluster still alive (named by its temp dir), by pid."""
    head.terminate()
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(str(temp) in part for part in process.info["cmdline"] or []):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.mark.slow
def test_sim_runs_its_clients_on_an_existing_ray_cluster(tmp_path):
    temp = Path(tempfile.mkdtemp(prefix="zk0ray", dir="/tmp"))  # Ray's socket paths must stay short
    without_ray = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env = process_env(tmp_path / "home", without_ray, HF_HUB_OFFLINE="1")
    port, log = _ephemeral_port(), tmp_path / "ray.log"
    head_args = ["--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "2"]
    head_args += ["--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp / "ray")]
    head_args += ["--ray-client-server-port", str(_ephemeral_port())]
    head_args += ["--dashboard-agent-listen-port", str(_ephemeral_port())]
    with open(log, "wb") as output:
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", *head_args], env=env, stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    try:
        _wait_listening(port, head, log)
        args = ["sim", "--clients", "2", "--rounds", "1", "--ray-address", f"127.0.0.1:{port}", "--timeout", "500"]
        args += ["-c", "local-steps=2", "-c", "batch-size=2", "-c", "eval-batches=1"]
        done = zk0(env, *args, timeout=560)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "completed" in done.stdout
        workers = list((temp / "ray").glob("session_*/logs/worker-*.err"))
        trained = [path for path in workers if "round 1 " in path.read_text(errors="replace")]
        assert len(trained) >= 1, f"no worker of this cluster trained: {[p.name for p in workers]}"
    finally:
        _stop(head, temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]


@pytest.mark.parametrize(
    ("address", "code", "message"),
    [
        ("nohost", ExitCode.BAD_INPUT, "is not host:port"),
        ("127.0.0.1:0", ExitCode.BAD_INPUT, "is not host:port"),
        ("127.0.0.1:{closed}", ExitCode.UNREACHABLE, "no Ray cluster answers at 127.0.0.1:"),
    ],
)
def test_a_ray_address_that_is_not_a_cluster_fails_before_flower_starts(cli, address, code, message):
    done = cli("sim", "--clients", "1", "--rounds", "1", "--ray-address", address.format(closed=free_port()))
    assert done.code == code, done.stderr
    assert message in done.stderr and "hint:" in done.stderr
