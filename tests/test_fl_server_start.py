"""What the ServerApp checks before round 1 once it sees the connected nodes: a min-replies
count no round reaches is refused (status failed, exit 2), a trimmed mean that cuts nobody warned."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from loopback_grid import TINY_RUN, LoopbackGrid

from zk0cli.core.errors import ExitCode, Zk0Error
from zk0cli.fl import client_app as zk0_client
from zk0cli.fl.run_config import RunConfig
from zk0cli.fl.server_app import app


def start(tmp_path: Path, nodes: int, **overrides) -> tuple[LoopbackGrid, Context]:
    values = {**TINY_RUN, "runs-dir": str(tmp_path / "runs"), "run-name": "run", **overrides}
    config = RunConfig.from_mapping(values).to_flwr()
    grid = LoopbackGrid(zk0_client.app, [{"partition-id": i, "num-partitions": nodes} for i in range(nodes)], config)
    return grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)


def test_the_server_app_refuses_a_min_replies_its_connected_nodes_cannot_reach(tmp_path):
    grid, context = start(tmp_path, 3, **{"min-replies": 4})
    with pytest.raises(Zk0Error) as refused:
        app(grid, context)
    assert refused.value.code == ExitCode.BAD_INPUT
    assert refused.value.message == (
        "run-config min-replies 4 is above the 3 node(s) a round samples (3 connected nodes x fraction-train 1)"
    )
    status = json.loads((tmp_path / "runs" / "run" / "status.json").read_text())
    assert status["state"] == "failed" and status["exit_code"] == ExitCode.BAD_INPUT
    assert "min-replies=3 or fewer" in status["hint"]
    assert not (tmp_path / "runs" / "run" / "config.json").exists()  # nothing built, no round 0


def test_the_server_app_counts_min_available_nodes_while_fewer_are_connected(tmp_path):
    grid, context = start(tmp_path, 1, **{"min-replies": 3, "min-available-nodes": 2})
    with pytest.raises(Zk0Error, match=r"above the 2 node\(s\) a round samples \(min-available-nodes 2 x"):
        app(grid, context)


class StoppedError(Exception):
    """Ends the run right after the checks: building the evaluator is where the work begins."""


def test_the_server_app_warns_once_that_a_trimmed_mean_that_cuts_nobody_is_the_plain_mean(
    tmp_path, monkeypatch, caplog
):
    from zk0cli.fl import server_eval

    def stop(*_args):
        raise StoppedError

    monkeypatch.setattr(server_eval, "ServerEvaluator", stop)
    grid, context = start(tmp_path, 2, aggregation="trimmed-mean", datasets="local:/data/a")
    with caplog.at_level(logging.WARNING, logger="zk0"), pytest.raises(StoppedError):
        app(grid, context)
    warned = [r.getMessage() for r in caplog.records if "plain mean" in r.getMessage()]
    assert warned == [
        "trimmed-mean with trim-fraction 0.1 cuts no node of the 2 a round samples (2 connected nodes x "
        "fraction-train 1): it is the plain mean; with 2 node(s) nothing can be cut: aggregation=median, or more nodes"
    ]


@pytest.mark.parametrize("fraction", [0.3, 0.5, 1.0])
def test_the_count_checked_before_round_1_is_the_count_the_strategy_samples(fraction):
    import numpy as np

    from zk0cli.fl.strategy import Zk0FedProx

    config = RunConfig.from_mapping({"fraction-train": fraction, "min-available-nodes": 1})
    strategy = Zk0FedProx(config, {"w": np.zeros(4, dtype=np.float32)}, lambda *_: None, lambda *_: None)
    for nodes in range(1, 8):
        grid = LoopbackGrid(zk0_client.app, [{}] * nodes, config.to_flwr())
        assert len(strategy._sample(grid)) == config.sampled(nodes), nodes
