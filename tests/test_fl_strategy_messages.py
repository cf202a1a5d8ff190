"""Which nodes the strategy sends messages to, and how it takes their replies in, without training:
the in-process grid with a ClientApp that answers at once."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from loopback_grid import LoopbackGrid

from zk0cli.fl import client_app, integrity
from zk0cli.fl import strategy as strategy_module
from zk0cli.fl.quarantine import quarantine
from zk0cli.fl.run_config import RunConfig
from zk0cli.fl.strategy import METRICS, Zk0FedProx
from zk0cli.fl.wire import NodeWire

answering = ClientApp()


@answering.train()
def _train(msg: Message, _context) -> Message:
    return Message(RecordDict({METRICS: MetricRecord({})}), reply_to=msg)


def strategy_for(config: RunConfig, **kwargs) -> Zk0FedProx:
    weights = {"expert.w": np.zeros((8, 4), dtype=np.float32)}
    return Zk0FedProx(config, weights, lambda *_: None, lambda *_: None, **kwargs)


def test_a_quarantined_node_gets_no_evaluation_message_either(tmp_path):
    """Issue 14: a node left out of training for its flagged updates is left out of federated
    evaluation too; the others each get their own message."""
    quarantined = tmp_path / "quarantine.json"
    quarantine(quarantined, "1001", run="run", round=1, reason="flagged in 1 rounds")
    config = RunConfig.from_mapping({"min-available-nodes": 3, "num-server-rounds": 1})
    strategy = strategy_for(config, quarantine_file=quarantined)
    grid = LoopbackGrid(answering, [{}] * 3, config.to_flwr())
    trained = strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), grid)
    evaluated = list(strategy.configure_evaluate(1, strategy.initial_arrays(), ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in trained) == [1000, 1002]
    assert sorted(m.metadata.dst_node_id for m in evaluated) == [1000, 1002]
    assert evaluated[0].content is not evaluated[1].content  # each node's weights and keys its own
    assert all(m.content["config"]["server-round"] == 1 for m in evaluated)


@dataclass
class CountingPulls(LoopbackGrid):
    """Every reply is in at once; notes how many each pull returns."""

    returned: list[int] = field(default_factory=list)

    def pull_messages(self, message_ids):
        replies = super().pull_messages(message_ids)
        self.returned.append(len(replies))
        return replies


def test_replies_that_arrive_together_are_pulled_a_few_at_a_time(monkeypatch):
    """Flower inflates every reply a pull returns before handing any over (SmolVLA: ~200 MB
    each), so the strategy asks for a few ids per pull and every reply still reaches the fold."""
    monkeypatch.setattr(strategy_module, "REPLY_POLL_S", 0.0)
    config = RunConfig.from_mapping({"min-available-nodes": 7})
    strategy = strategy_for(config)
    grid = CountingPulls(answering, [{}] * 7, config.to_flwr())
    messages = strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), grid)
    folded: list[Message] = []
    strategy._send_and_receive(grid, messages, on_reply=folded.append)
    assert sorted(m.metadata.src_node_id for m in folded) == list(range(1000, 1007))
    assert max(grid.returned) == strategy_module.PULL_AT_ONCE and sum(grid.returned) == 7


def test_a_folded_reply_lets_go_of_its_arrays_at_once():
    """Flower's records sit in reference cycles that only the cyclic garbage collector frees, so
    folded replies (~200 MB each at SmolVLA's size) piled up between its runs: the fold releases
    a reply's arrays as soon as they are checked."""
    config = RunConfig.from_mapping({"min-available-nodes": 1})
    strategy = strategy_for(config)
    grid = LoopbackGrid(answering, [{}], config.to_flwr())
    (message,) = strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), grid)
    grid.push_messages([message])  # gives it an id to reply to
    local = {name: value + 0.01 for name, value in strategy.global_weights.items()}
    update = integrity.encode_update(local, strategy.global_weights, integrity.BF16_DELTA)
    node = SimpleNamespace(dataset_name="pick", fingerprint="0" * 64)
    metrics = {"loss": 1.0, "samples": 4}
    reply = client_app.train_reply(message, node, NodeWire(), update, integrity.BF16_DELTA, metrics)
    values = weakref.ref(update[integrity.VALUES])
    del update
    gc.disable()
    try:
        strategy._fold_train_reply(reply)
        assert values() is None
    finally:
        gc.enable()
    assert strategy._mean.count == 1 and not strategy.entry["rejected"]
