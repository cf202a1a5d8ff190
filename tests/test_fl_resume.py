"""Resuming a run from its last checkpoint (what `zk0 run --resume` asks the ServerApp to do).

The real strategy, ClientApp and tiny SmolVLA on the in-process grid: a run that dies after
round 3 (checkpoints every 2 rounds) and is resumed must end exactly where the same run without
the crash ends: same round numbers, same lr/mu plans, bit-identical global weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from loopback_grid import TINY_RUN, LoopbackGrid

from zk0cli.core.errors import Zk0Error
from zk0cli.fl import client_app as zk0_client
from zk0cli.fl.records import RunRecord
from zk0cli.fl.run_config import RunConfig
from zk0cli.fl.server_app import run_federation

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

SETTINGS = {
    **TINY_RUN,
    "num-server-rounds": 4,
    "video-frequency": 100,
    "checkpoint-interval": 2,
    "seed": 3,
    "fraction-evaluate": 0.0,
}


class CrashingGrid(LoopbackGrid):
    """Loses the server (as a SuperLink kill would) when round ``crash_round``'s train messages go out."""

    crash_round = 0

    def push_messages(self, messages):
        messages = list(messages)
        if any(
            int(m.content["config"].get("server-round", 0)) == self.crash_round
            for m in messages
            if "config" in m.content.config_records
        ):
            raise ConnectionError("the SuperLink went away")
        return super().push_messages(messages)


def federation(tmp_path: Path, datasets: list[Path], name: str, grid_class=LoopbackGrid, **overrides):
    values = {
        **SETTINGS,
        "datasets": " ".join(f"local:{d}" for d in datasets),
        "runs-dir": str(tmp_path / "runs"),
        "run-name": name,
        **overrides,
    }
    config = RunConfig.from_mapping(values)
    nodes = [{"partition-id": i, "num-partitions": len(datasets)} for i in range(len(datasets))]
    grid = grid_class(zk0_client.app, nodes, config.to_flwr())
    return config, grid, RunRecord.create(Path(config.runs_dir), config.run_name)


def by_round(record: RunRecord) -> dict[int, dict]:
    return {entry["round"]: entry for entry in record.rounds()}


# Bit-identical holds where nothing but the checkpoint carries state: full weights down and no
# error feedback. The delta encodings' rounding residuals (the server's wire global, each node's
# uplink residual) are not in checkpoints: a resumed run continues, close but not bit-identical
# (test_a_run_resumes_in_every_wire_encoding_full_weights_first_then_changes).
EXACT = {"keep-globals": 0, "error-feedback": False}


def test_a_resumed_run_ends_exactly_where_the_uninterrupted_run_ends(tmp_path, fl_datasets):
    config, grid, straight = federation(tmp_path, fl_datasets, "straight", **EXACT)
    run_federation(grid, config, straight)
    expected = by_round(straight)

    config, grid, record = federation(tmp_path, fl_datasets, "crashed", CrashingGrid, **EXACT)
    grid.crash_round = 4
    with pytest.raises(ConnectionError):
        run_federation(grid, config, record, flwr_run_id=11)
    assert sorted(by_round(record)) == [0, 1, 2, 3] and [p.name for p in record.checkpoints()] == ["round_0002"]

    resumed_config = RunConfig.from_mapping({**config.to_flwr(), "resume": True})
    _, grid, _ = federation(tmp_path, fl_datasets, "crashed", **EXACT)
    run_federation(grid, resumed_config, record, flwr_run_id=12)
    rounds = by_round(record)
    assert sorted(rounds) == [0, 1, 2, 3, 4]
    for number in (3, 4):  # rebuilt schedules: the plans the uninterrupted run made
        assert rounds[number]["plan"] == expected[number]["plan"], number
    assert rounds[4]["global_sha256"] == expected[4]["global_sha256"]  # bit-identical weights at the end
    assert rounds[4]["server_eval"] == expected[4]["server_eval"]

    recorded = json.loads((record.root / "config.json").read_text())
    assert recorded["flwr_run_id"] == 11 and record.flwr_run_ids() == [11, 12]
    assert [(r["from_round"], r["superseded_rounds"]) for r in recorded["resumes"]] == [(2, [3])]
    assert recorded["run_config"]["num-server-rounds"] == 4
    superseded = list((record.root / "superseded").glob("*/round_3_server_eval.json"))
    assert len(superseded) == 1  # the crashed run's round 3 is kept aside, not mixed in
    history = json.loads((record.root / "federated_metrics.json").read_text())
    assert [line["round"] for line in history] == [0, 1, 2, 3, 4]
    assert [p.name for p in record.checkpoints()] == ["round_0002", "round_0004"]


@pytest.mark.parametrize("encoding", ["fp32", "bf16-delta", "int8-delta"])
def test_a_run_resumes_in_every_wire_encoding_full_weights_first_then_changes(tmp_path, fl_datasets, encoding):
    wire = {"wire-encoding": encoding, "fraction-evaluate": 0.0}
    # the bytes of a change, as a share of full fp32 weights: int8 ~1/4, bf16 1/2, fp32 all of them
    share = {"int8-delta": 3, "bf16-delta": 1.9, "fp32": 0.99}[encoding]
    config, grid, record = federation(tmp_path, fl_datasets, "crashed", CrashingGrid, **wire)
    grid.crash_round = 4
    with pytest.raises(ConnectionError):
        run_federation(grid, config, record, flwr_run_id=21)
    before = by_round(record)
    full = before[1]["clients"]["each"][0]["bytes_down"]  # round 1: every node gets the global in full
    assert all(c["bytes_down"] < full / share for c in before[2]["clients"]["each"] + before[3]["clients"]["each"])

    resumed = RunConfig.from_mapping({**config.to_flwr(), "resume": True})
    _, grid, _ = federation(tmp_path, fl_datasets, "crashed", **wire)
    run_federation(grid, resumed, record, flwr_run_id=22)
    rounds = by_round(record)
    assert sorted(rounds) == [0, 1, 2, 3, 4] and all(len(rounds[n]["clients"]["each"]) == 2 for n in (3, 4))
    # the resumed server holds no earlier globals: full weights again, then changes
    assert [c["bytes_down"] for c in rounds[3]["clients"]["each"]] == [full, full]
    assert all(c["bytes_down"] < full / share for c in rounds[4]["clients"]["each"])
    assert all(0 < c["bytes_up"] < full / share for c in rounds[4]["clients"]["each"])
    losses = [rounds[n]["server_eval"]["composite"]["policy_loss"] for n in (2, 4)]
    assert all(map(math.isfinite, losses)) and losses[1] < losses[0] * 1.5


def test_resume_refuses_without_a_checkpoint_or_when_nothing_is_left(tmp_path, fl_datasets):
    config, grid, record = federation(tmp_path, fl_datasets, "early", CrashingGrid, **{"checkpoint-interval": 3})
    grid.crash_round = 2
    with pytest.raises(ConnectionError):
        run_federation(grid, config, record)
    with pytest.raises(Zk0Error, match="has no checkpoint to resume from") as refused:
        record.resume_point(4)
    assert "checkpoint-interval" in refused.value.hint

    config, grid, done = federation(tmp_path, fl_datasets, "done", **{"num-server-rounds": 2})
    run_federation(grid, config, done)
    with pytest.raises(Zk0Error, match="already has its checkpoint of round 2 of 2") as finished:
        done.resume_point(2)
    assert "--rounds 3" in finished.value.hint
    assert done.resume_point(3).round == 2  # more rounds: it continues


class DiesMidRound(LoopbackGrid):
    """Loses the server (a kill, an OOM) in round ``crash_round`` after its first reply was taken in:
    a robust rule has spilled that update to the record's ``.spill`` by then."""

    crash_round = 0
    _round = 0
    _taken = False

    def push_messages(self, messages):
        messages = list(messages)
        configs = [m.content["config"] for m in messages if "config" in m.content.config_records]
        self._round = max((int(c.get("server-round", 0)) for c in configs), default=self._round)
        return super().push_messages(messages)

    def pull_messages(self, message_ids):
        replies = list(super().pull_messages(message_ids))
        if self._round != self.crash_round:
            return replies
        if self._taken:
            raise ConnectionError("the SuperLink went away")
        self._taken = True
        return replies[:1]  # the others are dropped with the server


class NotesSpill(LoopbackGrid):
    """Notes, as each batch of messages goes out, whether the record's ``.spill`` exists."""

    spill: Path
    seen: list[bool]

    def push_messages(self, messages):
        self.seen.append(self.spill.exists())
        return super().push_messages(messages)


def test_spilled_updates_never_outlive_a_crashed_round_nor_a_resume(tmp_path, fl_datasets):
    """Issue 14: a robust rule's spill of a round that raised is removed as the ServerApp fails; one
    a killed ServerApp left behind is removed when the run resumes, before any message goes out."""
    robust = {"aggregation": "median", "num-server-rounds": 2, "checkpoint-interval": 1}
    config, grid, record = federation(tmp_path, fl_datasets, "killed", DiesMidRound, **robust)
    grid.crash_round = 2
    with pytest.raises(ConnectionError):
        run_federation(grid, config, record, flwr_run_id=31)
    assert sorted(by_round(record)) == [0, 1] and grid._taken  # round 2 spilled one update, then died
    spill = record.root / ".spill"
    assert not spill.exists()

    leftover = spill / "round-2" / "update-0.f32"  # what a SIGKILL in that round leaves
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(bytes(4096))
    resumed = RunConfig.from_mapping({**config.to_flwr(), "resume": True})
    _, grid, _ = federation(tmp_path, fl_datasets, "killed", NotesSpill, **robust)
    grid.spill, grid.seen = spill, []
    run_federation(grid, resumed, record, flwr_run_id=32)
    assert grid.seen and not any(grid.seen)  # gone before round 2's train messages went out
    rounds = by_round(record)
    assert sorted(rounds) == [0, 1, 2] and len(rounds[2]["clients"]["each"]) == 2
    assert not spill.exists()
