"""The README's "A federation, step by step", typed line by line as its readers would.

Three machines are three ZK0_HOMEs: a server on 127.0.0.2 (TLS, node authentication) and two
nodes, alice and bob, whose `hf:` datasets come from a Hub API on loopback (olah serving git
repositories made with `zk0 dataset sample`). Each command is the README's own line with its
placeholders filled in (host, files, dataset names, the run ids zk0 printed); only `--rounds 30`
becomes 2 and `status --watch` a one-shot `status`, so the test ends by itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from zk0cli.core.paths import Paths
from zk0cli.datasets.sample import write_sample
from zk0cli.fl.records import RunRecord
from zk0cli.services import supervisor

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
PUBLIC_HOST = "127.0.0.2"
NODES = {"alice": "pick", "bob": "stack"}  # node name (= its dataset's name) -> task


def readme_blocks() -> list[tuple[str, list[str]]]:
    """(machine, command lines) of each bash block in the section, in order; comments dropped."""
    section = README.read_text().split("## A federation, step by step", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        machine = re.match(r"# (server|node):", body.strip())
        assert machine, f"a step-by-step block must say its machine: {body[:60]!r}"
        lines = [line.split("  #", 1)[0].strip() for line in body.splitlines()]
        blocks.append((machine.group(1), [line for line in lines if line and not line.startswith("#")]))
    return blocks


@dataclass
class Federation:
    root: Path
    hub_endpoint: str
    port: int = field(default_factory=lambda: _free_port(PUBLIC_HOST))
    printed: dict[str, str] = field(default_factory=dict)  # RUN_ID, CENTRAL_RUN: what zk0 printed
    transcript: list[str] = field(default_factory=list)

    def home(self, machine: str) -> Path:
        return self.root / machine

    def env(self, machine: str) -> dict[str, str]:
        home = self.home(machine)
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_LEROBOT_HOME")}
        env.update(
            ZK0_HOME=str(home),
            HF_ENDPOINT=self.hub_endpoint,  # this machine's Hub (a mirror, as a company's would be)
            HF_HOME=str(home / "hf"),
            NO_COLOR="1",
            COLUMNS="80",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            TOKENIZERS_PARALLELISM="false",
        )
        if machine == "server":  # where the admin's shell says the public front listens
            env.update(ZK0_SERVER_HOST=PUBLIC_HOST, ZK0_SERVER_PORT=str(self.port))
        return env

    def fill(self, line: str, machine: str) -> str:
        ca = self.home("server") / "config" / "pki" / "ca.pem"
        values = {
            "fl.example.org:9092": f"{PUBLIC_HOST}:{self.port}",
            "fl.example.org": PUBLIC_HOST,
            "ca.pem": str(ca),
            "hf:org/heldout": "hf:acme/heldout",
            "hf:me/my-so101-set": "hf:acme/alice" if machine in ("server", "alice") else "hf:acme/bob",
            "hf:you/your-set": "hf:acme/bob",
            "my-so101-set": machine,
            "my-policy": str(self.home(machine) / "policy"),
            "--rounds 30": "--rounds 2",
            "status --watch": "status",
            **self.printed,
        }
        for placeholder, value in values.items():
            line = line.replace(placeholder, value)
        return line

    def type(self, machine: str, line: str, *, timeout: float = 600) -> subprocess.CompletedProcess:
        command = self.fill(line, machine)
        argv = shlex.split(command)
        assert argv[0] == "zk0", command
        done = subprocess.run(
            [sys.executable, "-m", "zk0cli", *argv[1:]],
            env=self.env(machine),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.transcript.append(f"[{machine}] $ {command}  -> {done.returncode}")
        assert done.returncode == 0, f"{machine}: {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def recorded_pids(self) -> list[int]:
        pids = []
        for machine in ("server", *NODES):
            paths = Paths.resolve(self.home(machine))
            for service in supervisor.service_names(paths):
                state = supervisor.read_state(paths, service) or {}
                pids.append(state.get("supervisor", {}).get("pid"))
                for process in state.get("processes", {}).values():
                    pids += [process.get("pid"), *process.get("descendants", [])]
        return [pid for pid in pids if pid]


def test_the_readme_federation_works_as_typed(olah_hub, tmp_path):
    for name, task in {**NODES, "heldout": "sort"}.items():
        source = write_sample(
            tmp_path / "recorded" / name, episodes=3, frames_per_episode=30, task=task, seed=len(name)
        )
        olah_hub.add_dataset(f"acme/{name}", source)
    fed = Federation(tmp_path / "machines", olah_hub.endpoint)
    outputs: dict[str, str] = {}
    try:
        for machine, lines in readme_blocks():
            for line in lines:
                if machine == "node":
                    for node in NODES:
                        done = fed.type(node, line)
                        outputs[f"{node}: {line}"] = done.stdout + done.stderr
                elif "nodes add" in line:  # once per node: its own key file and name
                    for node in NODES:
                        key = fed.home(node) / "config" / "pki" / "node_key.pub"
                        fed.type("server", line.replace("alice.pub", str(key)).replace("alice", node))
                else:
                    done = fed.type("server", line)
                    outputs[line] = done.stdout + done.stderr
                    _remember_ids(fed, line, done.stdout + done.stderr)
        _check_what_was_shown(fed, outputs)
    finally:
        pids = fed.recorded_pids()
        for node in NODES:
            if fed.home(node).exists():
                subprocess.run([sys.executable, "-m", "zk0cli", "stop", "--all"], env=fed.env(node), timeout=120)
        subprocess.run([sys.executable, "-m", "zk0cli", "stop", "--all"], env=fed.env("server"), timeout=120)
    assert not [pid for pid in pids if psutil.pid_exists(pid) and _alive(pid)], "processes left running"


def _remember_ids(fed: Federation, line: str, printed: str) -> None:
    if line.startswith("zk0 run --rounds"):
        fed.printed["RUN_ID"] = re.search(r"run (\d+) submitted", printed).group(1)
    if line.startswith("zk0 train --match-run"):
        fed.printed["CENTRAL_RUN"] = re.search(r"centralized run (\S+):", printed).group(1)


def _check_what_was_shown(fed: Federation, outputs: dict[str, str]) -> None:
    def shown(start: str) -> str:
        """What the README line beginning with ``start`` printed."""
        return next(text for line, text in outputs.items() if line.startswith(start))

    run_id = fed.printed["RUN_ID"]
    streamed = shown("zk0 run --rounds")
    assert "round 2/2" in streamed and f"next: zk0 report {run_id}" in streamed
    assert "alice" in streamed and "bob" in streamed  # the admin's names, not Flower's node ids
    dry_run = shown("zk0 run --dry-run")
    assert "2 of 2 registered node(s) online: alice, bob" in " ".join(dry_run.split())
    assert "lerobot/smolvla_base" not in dry_run and "tiny: built locally" in dry_run  # the config's default

    server = Paths.resolve(fed.home("server"))
    record = RunRecord(next(p for p in server.runs_dir.iterdir() if p.name.endswith("-run")))
    assert str(record.flwr_run_ids()[0]) == run_id
    last = record.rounds()[-1]
    assert sorted(c["name"] for c in last["clients"]["each"]) == ["alice", "bob"]
    assert all(c["bytes_down"] > 0 and c["bytes_up"] > 0 for c in last["clients"]["each"])
    assert last["server_eval"]["datasets"]  # the held-out dataset came from the Hub to the ServerApp
    report = (record.root / "report" / "report.md").read_text()
    assert "| alice |" in report and "| bob |" in report and "not recorded" not in report

    trained = shown("zk0 train --match-run")
    assert "fingerprints differ" not in trained and fed.printed["CENTRAL_RUN"]
    compared = shown("zk0 compare")
    assert "A vs B, final loss:" in compared
    runs = json.loads(fed.type("server", "zk0 runs --json").stdout)["runs"]
    assert {r["name"] for r in runs} >= {record.root.name, fed.printed["CENTRAL_RUN"]}

    for node in NODES:
        logged = shown(f"{node}: zk0 logs node")
        assert logged.count("\n") >= 10 and "Traceback" not in logged
        joined = shown(f"{node}: zk0 node join")
        assert f"node {node} connected" in joined
        exported = json.loads((fed.home(node) / "policy" / "zk0_export.json").read_text())
        assert exported["from"] == f"run {run_id}" and exported["server_round"] == 2
        assert exported["normalised_by"]["dataset"] == f"hf:acme/{node}"  # its own stats, not the server's


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
