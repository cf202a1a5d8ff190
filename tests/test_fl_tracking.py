"""Weights & Biases logging (run config wandb-project), offline: a real federation through the
in-process grid logs every round, and what W&B holds is what the round records say."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from loopback_grid import TINY_RUN, LoopbackGrid
from wandb_offline import history

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
    assert "wandb is not installed" in refused.value.message and "zk0[wandb]" in refused.value.hint


def test_sim_refuses_wandb_without_the_extra_before_flower_starts(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    done = cli("sim", "--clients", "1", "--rounds", "1", "-c", "wandb-project=robots")
    assert done.code == ExitCode.ENV_NOT_READY and "zk0[wandb]" in done.stderr
