"""Weights & Biases logging (run config wandb-project), offline: a real federation through the
in-process grid logs every round, and what W&B holds is what the round records say."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from loopback_grid import TINY_RUN, LoopbackGrid
from wandb_offline import history
from zk0_process import process_env, zk0

from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.fl import client_app as zk0_client
from zk0cli.fl.records import RunRecord, node_label, summary
from zk0cli.fl.run_config import RunConfig
from zk0cli.fl.server_app import run_federation
from zk0cli.fl.tracking import require_wandb

SMALL = {
    **TINY_RUN,
    "num-server-rounds": 2,
    "video-frequency": 100,
    "checkpoint-interval": 100,
    "seed": 7,
}


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_every_round_goes_to_wandb_as_its_record_says(tmp_path, fl_datasets, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    values = {
        **SMALL,
        "datasets": " ".join(f"local:{d}" for d in fl_datasets),
        "runs-dir": str(tmp_path / "runs"),
        "run-name": "tracked",
        "wandb-project": "zk0-test",
    }
    config = RunConfig.from_mapping(values)
    nodes = [{"partition-id": i, "num-partitions": len(fl_datasets)} for i in range(len(fl_datasets))]
    record = RunRecord.create(Path(config.runs_dir), config.run_name)
    run_federation(LoopbackGrid(zk0_client.app, nodes, config.to_flwr()), config, record)
    import wandb

    # run.finish() can return before wandb's service wrote the last rounds to the run file; a
    # ServerApp's process exit waits for it, here teardown does (it stops the service).
    wandb.teardown()

    logged = {row["_step"]: row for row in history(record.root)}
    rounds = record.rounds()
    assert sorted(logged) == [r["round"] for r in rounds] == [0, 1, 2]
    for entry in rounds:
        row, line = logged[entry["round"]], summary(entry)
        assert row["server/policy_loss"] == pytest.approx(line["server_policy_loss"])
        assert row["server/action_error"] == pytest.approx(line["server_action_error"])
        if entry["round"] == 0:
            continue
        assert row["plan/lr"] == pytest.approx(line["lr"]) and row["plan/mu"] == pytest.approx(line["mu"])
        assert row["clients/loss_avg"] == pytest.approx(line["loss_avg"])
        for client in entry["clients"]["each"]:
            prefix = f"node/{node_label(client)}"
            assert row[f"{prefix}/loss"] == pytest.approx(client["metrics"]["loss"])
            assert row[f"{prefix}/bytes_down"] == client["bytes_down"] > 0
            assert row[f"{prefix}/bytes_up"] == client["bytes_up"] > 0
    for server_round in (0, 2):  # round 0 and the last round render an evaluation video
        video = record.root / "videos" / rounds[server_round]["video"]["video"]
        assert logged[server_round]["server/video/_type"] == "video-file"
        assert logged[server_round]["server/video/sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert "server/video/_type" not in logged[1]


def test_wandb_on_without_the_extra_is_one_line_exit_4(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what a server without the extra has
    require_wandb(RunConfig.from_mapping({}))  # off: nothing to check
    with pytest.raises(Zk0Error) as refused:
        require_wandb(RunConfig.from_mapping({"wandb-project": "robots"}))
    assert refused.value.code == ExitCode.ENV_NOT_READY
    assert "wandb is not installed" in refused.value.message
    checkout = Path(__file__).resolve().parents[1]
    # zk0 is installed from its checkout: the hint is the command that adds the extra there
    assert f"{sys.executable} -m pip install -c {checkout / 'requirements.lock'} -e '{checkout}[wandb]'" in (
        refused.value.hint
    )


def test_sim_refuses_wandb_without_the_extra_before_flower_starts(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    done = cli("sim", "--clients", "1", "--rounds", "1", "-c", "wandb-project=robots")
    assert done.code == ExitCode.ENV_NOT_READY and "-e '" in done.stderr and "[wandb]'" in done.stderr


# The W&B runs below start in a process of their own, as in a ServerApp: wandb keeps its settings
# (read from the environment once) for the life of a process.
TRACK = """
import json, logging, sys
from pathlib import Path
from zk0cli.core.errors import Zk0Error
from zk0cli.fl.records import RunRecord
from zk0cli.fl.run_config import RunConfig
from zk0cli.fl.tracking import Tracker

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
record = RunRecord.create(Path(sys.argv[1]), "tracked")
try:
    with Tracker(RunConfig.from_mapping({"wandb-project": "zk0-test"}), record) as tracker:
        for entry in json.loads(sys.argv[2]):
            tracker.log_round(entry)
    print(json.dumps({"done": True}))
except Zk0Error as error:
    print(json.dumps({"code": int(error.code), "error": error.message, "hint": error.hint}))
"""


def track(tmp_path: Path, rounds: list[dict], **env: str) -> tuple[dict, str]:
    """Tracker in its own process over ``rounds``: its outcome (as JSON) and its log."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    base.update(HOME=str(tmp_path / "home"), WANDB_SILENT="true", **env)  # no ~/.netrc: not logged in
    done = subprocess.run(
        [sys.executable, "-c", TRACK, str(tmp_path / "runs"), json.dumps(rounds)],
        env=base,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({}, "No API key configured"),  # online, never logged in
        (  # logged in, but the W&B server cannot be reached
            {
                "WANDB_API_KEY": "0" * 40,
                "WANDB_BASE_URL": f"http://127.0.0.1:{_closed_port()}",
                "WANDB_INIT_TIMEOUT": "3",
            },
            "",
        ),
    ],
)
def test_a_wandb_run_that_cannot_start_is_one_line_exit_4(tmp_path, env, said):
    outcome, _ = track(tmp_path, [], **env)
    assert outcome.get("code") == ExitCode.ENV_NOT_READY, outcome
    assert outcome["error"].startswith("Weights & Biases could not start a run in project 'zk0-test'")
    assert said in outcome["error"] and "\n" not in outcome["error"]
    assert "wandb login" in outcome["hint"] and "WANDB_MODE=offline" in outcome["hint"]


def test_a_round_w_and_b_cannot_log_ends_the_logging_not_the_run(tmp_path):
    rounds = [{"round": 0}, {"round": 1, "video": {"video": "missing.mp4"}}, {"round": 2}]
    outcome, log = track(tmp_path, rounds, WANDB_MODE="offline")
    assert outcome == {"done": True}
    assert "W&B logging stopped at round 1" in log and "the run goes on" in log
    assert [row["_step"] for row in history(tmp_path / "runs" / "tracked")] == [0]  # nothing after the failure


@pytest.mark.slow
def test_sim_with_wandb_not_logged_in_stops_before_round_1_with_exit_4(tmp_path, fl_datasets):
    env = process_env(tmp_path / "zk0home", HOME=str(tmp_path / "home"), WANDB_SILENT="true")
    env = {k: v for k, v in env.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    args = ["sim", "--clients", "2", "--rounds", "2", "--timeout", "300"]
    args += [item for root in fl_datasets for item in ("--dataset", f"local:{root}")]
    for setting in (
        "policy=tiny",
        "chunk-size=5",
        "local-steps=1",
        "batch-size=2",
        "wandb-project=robots",
        "run-name=no-login",
    ):
        args += ["-c", setting]
    done = zk0(env, *args, timeout=400)
    assert done.returncode == ExitCode.ENV_NOT_READY, done.stderr[-3000:]
    assert "Weights & Biases could not start a run" in done.stderr and "wandb login" in done.stderr
    assert "Traceback" not in done.stderr
    (record,) = (tmp_path / "zk0home").rglob("no-login")
    assert not list(record.glob("round_1_*"))  # stopped before round 1
