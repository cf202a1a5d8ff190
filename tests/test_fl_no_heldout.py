"""A federation whose server has no held-out data: the policy follows the nodes' features, the
server evaluates nothing, and rounds are judged by the nodes' federated evaluation (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from loopback_grid import TINY_RUN, LoopbackGrid

from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.fl import client_app as zk0_client
from zk0cli.fl.records import RunRecord
from zk0cli.fl.run_config import RunConfig
from zk0cli.fl.server_app import run_federation

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

SETTINGS = {
    **TINY_RUN,
    "num-server-rounds": 2,
    "checkpoint-interval": 1,
    "seed": 5,
    "lr-schedule": "reduce_on_plateau",
}


def deployment_run(tmp_path: Path, datasets: list[Path], **overrides) -> tuple[RunRecord, LoopbackGrid]:
    """As `zk0 run` on a server without eval-datasets: each node names its own dataset."""
    config = RunConfig.from_mapping({**SETTINGS, "runs-dir": str(tmp_path), "run-name": "run", **overrides})
    grid = LoopbackGrid(zk0_client.app, [{"dataset-uri": f"local:{d}"} for d in datasets], config.to_flwr())
    record = RunRecord.create(tmp_path, "run")
    run_federation(grid, config, record)
    return record, grid


def test_without_heldout_data_the_run_trains_and_the_nodes_judge_the_rounds(tmp_path, fl_datasets):
    record, _ = deployment_run(tmp_path, fl_datasets)
    rounds = {entry["round"]: entry for entry in record.rounds()}
    assert sorted(rounds) == [0, 1, 2]
    assert all(entry["server_eval"] is None for entry in rounds.values())
    assert [rounds[n]["clients"]["aggregate"]["num_clients"] for n in (1, 2)] == [2, 2]
    judged = [rounds[n]["federated_eval"]["aggregate"]["policy_loss"] for n in (1, 2)]
    assert all(loss > 0 for loss in judged)
    # the lr schedule follows the nodes' judgement: round 1 had none to go by, round 2 had round 1's
    assert "no eval yet" in json.dumps(rounds[1]["plan"]["lr"]["why"])
    assert "no eval yet" not in json.dumps(rounds[2]["plan"]["lr"]["why"])
    config = json.loads((record.root / "config.json").read_text())
    assert config["server_eval"] is False
    assert config["features_from"] == sorted(d.name for d in fl_datasets)
    assert config["dataset_fingerprints"] == {}  # the server read no dataset
    from zk0cli.services.report import SERVER_EVAL_OFF, write_report

    report = Path(write_report(record.root)["markdown"]).read_text()
    assert SERVER_EVAL_OFF in report
    checkpoint = record.root / "final"
    assert (checkpoint / "model.safetensors").is_file()
    assert "mean" not in (checkpoint / "config.json").read_text()  # no statistics travelled into it


def test_nodes_whose_datasets_differ_are_refused_before_round_one(tmp_path, fl_datasets):
    from zk0cli.datasets.sample import write_sample

    slower = write_sample(tmp_path / "slow-pick", task="pick", episodes=3, frames_per_episode=30, image_size=32, fps=15)
    with pytest.raises(Zk0Error) as refused:
        deployment_run(tmp_path / "runs", [fl_datasets[0], slower])
    assert refused.value.code == ExitCode.BAD_INPUT
    assert "do not share one set of features" in refused.value.message and "fps" in refused.value.message
    assert "same robot" in refused.value.hint
