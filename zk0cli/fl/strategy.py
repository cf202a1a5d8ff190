"""zk0's FedProx: per-round lr/mu, integrity checks, sample-weighted aggregation, round records.

A subclass of Flower's ``FedProx`` with its own round loop (:meth:`Zk0FedProx.run`) instead of
``Strategy.start``: the loop can begin at any round (``zk0 run --resume`` continues from a
checkpoint with the true round numbers), and it collects replies every 0.5 s where Flower's
grid waits 3 s between polls. Each round:

1. ``configure_train``: the :class:`RoundControl` plan gives the round's lr (per client, with
   boosts) and mu; each sampled node gets the global trainable weights (in full, or the changes
   since the global it holds: :mod:`zk0cli.fl.wire`), their SHA-256 digest and its own train
   config. A node that cannot rebuild the global gets full weights in the same round.
2. ``aggregate_train``: every reply is checked as it arrives (digest, names, shapes, dtypes,
   NaN/Inf, samples); bad ones are rejected with a reason and never aggregated; the rest are
   folded into a running mean weighted by the samples each client actually used this round, then
   dropped (:mod:`zk0cli.fl.aggregate`), so memory does not grow with the number of nodes. The
   server keeps the fp32 master weights.
3. ``configure_evaluate`` / ``aggregate_evaluate``: federated evaluation on clients' held-out
   episodes, on evaluation rounds (quarantined nodes left out, as from training).
4. ``evaluate_round`` (also at round 0 of a fresh run): server-side evaluation on the held-out
   datasets, feeding the schedules, then the round record goes to ``on_round``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, override

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, MetricRecordValues, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedProx
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from numpy.typing import NDArray

from zk0cli.fl import integrity
from zk0cli.fl.aggregate import RunningMean, SpilledUpdates
from zk0cli.fl.control import RoundControl, judging_loss
from zk0cli.fl.quarantine import quarantine, quarantined
from zk0cli.fl.records import mean_std
from zk0cli.fl.run_config import RunConfig
from zk0cli.fl.update_checks import clip_factor, flag_outliers
from zk0cli.fl.wire import DOWNLINK, HOLDS, NEED_FULL, Downlink

# keys shared by the server and client apps
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
INFO = "info"  # ConfigRecord of a reply: digest, uplink encoding, dataset name and fingerprint
SAMPLES = "samples"  # metric: training samples the client actually used this round
REPLY_POLL_S = 0.5  # between checks for replies while a round waits (Flower's own grid: 3 s)
# Message ids per pull: Flower inflates every reply a pull returns before returning any, and a
# SmolVLA reply is ~200 MB (bf16), so replies that arrive together are taken a few at a time.
PULL_AT_ONCE = 2

log = logging.getLogger("zk0.server")

ServerEvaluate = Callable[[int, Mapping[str, NDArray[np.float32]]], "dict[str, Any] | None"]
RoundSink = Callable[[dict[str, Any], Mapping[str, NDArray[np.float32]]], None]


class Zk0FedProx(FedProx):
    def __init__(
        self,
        config: RunConfig,
        initial_weights: Mapping[str, NDArray[np.float32]],
        server_evaluate: ServerEvaluate,
        on_round: RoundSink,
        spill_dir: Path | None = None,
        quarantine_file: Path | None = None,
    ) -> None:
        super().__init__(
            fraction_train=config.fraction_train,
            fraction_evaluate=config.fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=1 if config.fraction_evaluate > 0 else 0,
            min_available_nodes=config.min_available_nodes,
            weighted_by_key=SAMPLES,
            proximal_mu=config.proximal_mu,
        )
        self.config = config
        self.encoding, self.block = config.wire_encoding, config.int8_block_size
        self.downlink = Downlink(self.encoding, self.block, config.keep_globals, config.error_feedback)
        self._holds: dict[str, str] = {}  # node -> digest of the wire global it said it holds
        self.global_weights = {name: np.asarray(v, dtype=np.float32) for name, v in initial_weights.items()}
        self.spec = integrity.spec_of(self.global_weights, self.encoding)
        self.control = RoundControl(config)
        self.server_evaluate = server_evaluate
        self.on_round = on_round
        self.spill_dir = spill_dir  # where a robust aggregation spills a round's updates (the run's record)
        self.quarantine_file = quarantine_file  # the server's quarantined nodes (quarantine-after)
        self._flag_counts: dict[str, int] = {}  # node -> rounds of this run it was flagged an outlier
        self.entry: dict[str, Any] = {}
        self._destinations: dict[str, str] = {}  # message id -> node id, of the messages in flight
        self._round_started = time.monotonic()
        self._sent_bytes: dict[str, int] = {}  # node -> weight bytes sent to it for the current phase
        self._outbox: dict[str, Message] = {}  # message id -> the message, while its reply is awaited
        self._mean: RunningMean | SpilledUpdates = RunningMean([])  # this round's accepted updates
        self._clients: list[dict[str, Any]] = []  # their client entries (metrics, no weights)
        self._answered: set[str] = set()  # nodes that replied this round, accepted or not
        self._cut_at_quorum: tuple[int, int] | None = None  # (replied, asked) when the grace closed the wait

    def initial_arrays(self) -> ArrayRecord:
        return integrity.to_record(self.global_weights)

    def run(self, grid: Grid, *, first_round: int = 1) -> None:
        """Rounds ``first_round`` .. num-server-rounds; a fresh run (first_round 1) evaluates round 0 first.

        A resumed run starts from the weights it was constructed with (its last checkpoint) and a
        RoundControl rebuilt from the earlier rounds' records (:meth:`RoundControl.replay`).
        """
        random.seed(self.config.seed)  # Flower samples nodes with the global `random`: reproducible choices
        arrays = self.initial_arrays()
        if first_round == 1:
            self.evaluate_round(0, arrays)
        last = self.config.num_server_rounds
        for server_round in range(first_round, last + 1):
            log.info("round %d/%d: training", server_round, last)
            messages = self.configure_train(server_round, arrays, ConfigRecord(), grid)
            self._send_and_receive(grid, messages, on_reply=self._fold_train_reply)  # folded as they arrive
            aggregated, _ = self.aggregate_train(server_round, [])
            if aggregated is not None:
                arrays = aggregated
            replies = self._send_and_receive(grid, self.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
            self.aggregate_evaluate(server_round, replies)
            self.evaluate_round(server_round, arrays)

    def _send_and_receive(
        self, grid: Grid, messages: Iterable[Message], on_reply: Callable[[Message], None] | None = None
    ) -> list[Message]:
        """Push ``messages``, collect their replies until all are in, or the round timeout passes,
        or the straggler grace passes after the quorum (``min-replies``) replied. With ``on_reply``
        each reply is handed over as it arrives and not kept (the list is empty). Replies still
        out when it returns are never pulled: a later round asks only for its own."""
        messages = list(messages)
        self._cut_at_quorum, self._destinations, self._outbox = None, {}, {}
        if not messages:
            return []
        waiting = self._push(grid, messages)
        replies: list[Message] = []
        started = time.monotonic()
        deadline, needed, quorum_at = started + self.config.round_timeout_s, self.config.quorum(len(messages)), None
        while waiting:
            asked = sorted(waiting)
            for start in range(0, len(asked), PULL_AT_ONCE):
                self._pull(grid, asked[start : start + PULL_AT_ONCE], waiting, on_reply or replies.append)
            now = time.monotonic()
            if quorum_at is None and len(messages) - len(waiting) >= needed:
                quorum_at = now
            if not waiting or now >= deadline:
                break
            if quorum_at is not None and now - quorum_at >= self.config.straggler_grace_s:
                self._cut_at_quorum = (len(messages) - len(waiting), len(messages))
                break
            time.sleep(REPLY_POLL_S)
        return replies

    def _pull(self, grid: Grid, ids: list[str], waiting: set[str], take: Callable[[Message], None]) -> None:
        """Pull the replies to ``ids`` that are in and hand each to ``take``; none outlives this call
        unless ``take`` keeps it."""
        for reply in grid.pull_messages(ids):
            waiting.discard(reply.metadata.reply_to_message_id)
            if not self._resend_in_full(grid, reply, waiting):
                take(reply)

    def _push(self, grid: Grid, messages: list[Message]) -> set[str]:
        ids = set(grid.push_messages(messages))  # every Grid sets each message's id as it pushes it
        for message in messages:
            node = str(message.metadata.dst_node_id)
            self._destinations[message.metadata.message_id] = node
            self._outbox[message.metadata.message_id] = message
            self._sent_bytes[node] = self._sent_bytes.get(node, 0) + integrity.payload_bytes(
                message.content.array_records[ARRAYS]
            )
        return ids

    def _resend_in_full(self, grid: Grid, reply: Message, waiting: set[str]) -> bool:
        """Note which global a node now holds; if it could not rebuild the one it was sent, send it
        full weights at once (True: the reply is handled)."""
        sent = self._outbox.pop(reply.metadata.reply_to_message_id, None)
        info = dict(reply.content[INFO]) if not reply.has_error() and INFO in reply.content.config_records else {}
        node = self._sender(reply)
        if HOLDS in info:
            self._holds[node] = str(info[HOLDS])
        if NEED_FULL not in info or sent is None or sent.content[CONFIG].get(DOWNLINK) == integrity.FP32:
            return False  # (a node that cannot take even full weights is rejected with its reason)
        log.info("node %s could not rebuild the global (%s): sending it full weights", node, info[NEED_FULL])
        self.entry.setdefault("sent_full", []).append({"node": node, "reason": str(info[NEED_FULL])})
        arrays, keys = self.downlink.full()
        config = ConfigRecord({**dict(sent.content.config_records[CONFIG]), **keys})
        resend = Message(
            content=RecordDict({ARRAYS: arrays, CONFIG: config}),
            message_type=sent.metadata.message_type,
            dst_node_id=sent.metadata.dst_node_id,
            group_id=sent.metadata.group_id,
        )
        waiting.update(self._push(grid, [resend]))
        return True

    def _weights_for(self, node_id: int) -> tuple[ArrayRecord, dict[str, str]]:
        """The global for one node (full, or the changes since the one it holds) and its config keys."""
        return self.downlink.message_for(self._holds.get(str(node_id)))

    def _missing(self, answered: set[str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """(late, failed) entries for the nodes asked that did not answer: late when the round
        closed at its quorum's grace, failed when it waited out the round timeout."""
        silent = sorted(set(self._destinations.values()) - answered)
        if self._cut_at_quorum is None:
            return [], [
                {"node": node, "reason": f"no reply within {self.config.round_timeout_s:g} s"} for node in silent
            ]
        replied, asked = self._cut_at_quorum
        reason = f"not in {self.config.straggler_grace_s:g} s after {replied} of {asked} replied (discarded)"
        return [{"node": node, "reason": reason} for node in silent], []

    def _sender(self, reply: Message) -> str:
        """The node a reply answers for. An error the SuperLink itself sends on a node's behalf
        (node unavailable, reply expired) comes from SuperLink's own id, not the node's."""
        return self._destinations.get(reply.metadata.reply_to_message_id, str(reply.metadata.src_node_id))

    def is_eval_round(self, server_round: int) -> bool:
        c = self.config
        return server_round == 0 or server_round % c.eval_frequency == 0 or server_round == c.num_server_rounds

    # ------------------------------------------------------------ training

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        del arrays  # the same global as self.global_weights, which the downlink sends as each node needs
        self._round_started = time.monotonic()
        plan = self.control.plan(server_round)
        self.proximal_mu = plan.mu
        self.entry = {"round": server_round, "plan": plan.to_dict(), "clients": None, "rejected": [], "failed": []}
        node_ids = self._sample(grid)
        self.downlink.publish(self.global_weights)
        # after publishing: the aggregate's buffers must not add to the publish's peak
        self._mean, self._clients, self._answered = self._new_aggregate(server_round, len(node_ids)), [], set()
        self._sent_bytes, messages = {}, []
        for node_id in node_ids:
            weights, keys = self._weights_for(node_id)
            node_config = ConfigRecord(
                {
                    **dict(config),
                    "server-round": server_round,
                    "lr": plan.lr_for(str(node_id)),
                    "proximal-mu": plan.mu,
                    "uplink": self.encoding,
                    **keys,
                }
            )
            content = RecordDict({ARRAYS: weights, CONFIG: node_config})
            messages.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node_id))
        return messages

    def _sample(self, grid: Grid) -> list[int]:
        """The nodes to train this round; the quarantined ones left out are named in the round record."""
        connected, left_out = self._available(grid)
        for node in [n for n in self._flag_counts if n not in left_out and self._flag_counts[n] >= self._limit()]:
            self._flag_counts[node] = 0  # the admin released it: it starts over
        self.entry["quarantined"] = [{"node": str(n), **left_out[str(n)]} for n in connected if str(n) in left_out]
        candidates = [n for n in connected if str(n) not in left_out]
        return _seeded_sample(candidates, self.config.sampled(len(candidates)))

    def _sample_evaluate(self, grid: Grid) -> list[int]:
        """The nodes to evaluate this round: a quarantined node's results are no more wanted than its updates."""
        connected, left_out = self._available(grid)
        candidates = [n for n in connected if str(n) not in left_out]
        wanted = max(int(len(candidates) * self.fraction_evaluate), self.min_evaluate_nodes)
        return _seeded_sample(candidates, min(wanted, len(candidates)))

    def _available(self, grid: Grid) -> tuple[list[int], dict[str, dict[str, Any]]]:
        """Flower's wait for min-available-nodes; (the connected nodes, the quarantined ones)."""
        _, connected = sample_nodes(grid, self.min_available_nodes, 0)
        return connected, quarantined(self.quarantine_file) if self.quarantine_file else {}

    def _limit(self) -> int:
        return self.config.quarantine_after or 1 << 30

    def _count_flags(self, server_round: int, clients: list[dict[str, Any]]) -> None:
        """quarantine-after: a node flagged as an outlier in that many rounds is left out from now on."""
        if not self.config.quarantine_after or self.quarantine_file is None:
            return
        for client in clients:
            if not client.get("outlier"):
                continue
            node = client["node"]
            self._flag_counts[node] = self._flag_counts.get(node, 0) + 1
            if self._flag_counts[node] == self.config.quarantine_after:
                reason = f"flagged in {self._flag_counts[node]} rounds: {'; '.join(client['flags'])}"
                quarantine(self.quarantine_file, node, run=self.config.run_name, round=server_round, reason=reason)
                client.setdefault("flags", []).append("quarantined from the next round on")
                log.warning("node %s quarantined after round %d: %s", node, server_round, reason)

    def _new_aggregate(self, server_round: int, sampled: int) -> RunningMean | SpilledUpdates:
        c = self.config
        if c.aggregation == "mean":
            return RunningMean(integrity.layout_of(self.global_weights))
        if self.spill_dir is None:
            raise ValueError(f"aggregation {c.aggregation} spills updates to disk: give the strategy a spill_dir")
        return SpilledUpdates(
            self.spill_dir / f"round-{server_round}",
            c.aggregation,
            c.trim_fraction,
            byzantine_nodes=c.byzantine_nodes,
            expected=sampled,
        )

    def _fold_train_reply(self, reply: Message) -> None:
        """Check one training reply and fold an accepted update into the round's running mean; a
        failed or rejected one is recorded with its reason. Nothing of the update is kept."""
        node = self._sender(reply)
        self._answered.add(node)
        if reply.has_error():
            self.entry["failed"].append({"node": node, "reason": reply.error.reason})
            return
        client, checked = self._check_reply(reply)
        change = checked.change
        if checked.reason or change is None:
            _release_arrays(reply)
            self.entry["rejected"].append(
                {
                    "node": node,
                    "dataset": client.get("dataset", ""),
                    "reason": checked.reason,
                    "metrics": client.get("metrics", {}),
                }
            )
            return
        norm = client["measured_update_norm"] = checked.change_norm  # measured here, not the node's word
        factor = clip_factor(norm, self.config.clip_update_norm)
        if factor < 1.0:
            client["clipped_by"] = factor
            change = change.scaled(factor)
        self._mean.add(change, float(client["samples"]))  # read from the reply's own arrays
        _release_arrays(reply)
        self._clients.append(client)

    @override
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round's aggregate: ``replies`` not folded on arrival are folded now (Flower's own
        loop hands them over at the end), then every node asked but silent is recorded."""
        for reply in replies:
            self._fold_train_reply(reply)
        late, silent = self._missing(self._answered)
        self.entry["failed"] += silent
        self.entry["late"] = late
        clients = self._clients
        change = self._mean.result() if self._mean.count else None
        if isinstance(self._mean, SpilledUpdates):  # what the robust rule saw of each update
            for index, client in enumerate(clients):
                client["cosine_to_aggregate"] = self._mean.cosines[index]
                if index in self._mean.excluded:
                    client["excluded_by"] = self.config.aggregation
        flag_outliers(clients)
        self._count_flags(server_round, clients)
        self.entry["clients"] = {"aggregate": _aggregate_clients(clients), "each": clients}
        self.control.observe_clients({c["node"]: c["metrics"]["loss"] for c in clients})
        if change is None:
            return None, None
        for name, value in change.items():  # the change's own arrays become the new global
            value += self.global_weights[name]
        self.global_weights = change
        numeric = {k: v for k, v in self.entry["clients"]["aggregate"].items() if v is not None}
        return integrity.to_record(self.global_weights), MetricRecord(numeric)

    def _check_reply(self, reply: Message) -> tuple[dict[str, Any], integrity.CheckedUpdate]:
        """(client entry, the update checked: its change to the global or the rejection reason)."""
        node = self._sender(reply)
        content = reply.content
        if INFO in content.config_records and NEED_FULL in content.config_records[INFO]:
            reason = content.config_records[INFO][NEED_FULL]
            return {"node": node}, _rejected(f"could not take the global even in full: {reason!s}")
        if (
            len(content.array_records) != 1
            or METRICS not in content.metric_records
            or INFO not in content.config_records
        ):
            return {"node": node}, _rejected("malformed reply (needs one ArrayRecord, 'metrics' and 'info')")
        metrics = dict(content[METRICS])
        info = dict(content[INFO])
        record = next(iter(content.array_records.values()))
        client = {
            "node": node,
            "dataset": str(info.get("dataset", "")),
            "metrics": metrics,
            "samples": metrics.get(SAMPLES, 0),
            "dataset_fingerprint": str(info.get("dataset-fingerprint", "")),
            "bytes_down": self._sent_bytes.get(node, 0),
            "bytes_up": integrity.payload_bytes(record),
        }
        samples = metrics.get(SAMPLES)
        if not isinstance(samples, (int, float)) or not math.isfinite(samples) or samples <= 0:
            return client, _rejected(f"no training samples reported ({samples!r})")
        loss = metrics.get("loss")
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            return client, _rejected(f"non-finite training loss ({loss!r})")
        if info.get("uplink") != self.encoding:
            return client, _rejected(f"uplink encoding {info.get('uplink')!r}, expected {self.encoding!r}")
        checked = integrity.check_update(
            record,
            str(info.get("sha256", "")),
            self.spec,
            self.encoding,
            self.global_weights,
            self.config.int8_block_size,
        )
        return client, checked

    # ------------------------------------------------------------ federated evaluation

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        del arrays  # as in training: each node gets the global as it needs it
        if not self.is_eval_round(server_round) or self.fraction_evaluate == 0:
            return []
        self.downlink.publish(self.global_weights)
        self._sent_bytes, messages = {}, []
        for node_id in self._sample_evaluate(grid):
            weights, keys = self._weights_for(node_id)
            content = RecordDict(
                {ARRAYS: weights, CONFIG: ConfigRecord({**dict(config), "server-round": server_round, **keys})}
            )
            messages.append(Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node_id))
        return messages

    @override
    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        each: list[dict[str, Any]] = []
        replies = list(replies)
        late, silent = self._missing({self._sender(reply) for reply in replies})
        failed: list[dict[str, str | None]] = [dict(entry) for entry in silent]
        for reply in replies:
            node = self._sender(reply)
            if reply.has_error():
                failed.append({"node": node, "reason": reply.error.reason})
                continue
            metrics = dict(reply.content[METRICS]) if METRICS in reply.content.metric_records else {}
            info = dict(reply.content[INFO]) if INFO in reply.content.config_records else {}
            each.append(
                {
                    "node": node,
                    "dataset": str(info.get("dataset", "")),
                    "metrics": metrics,
                    "bytes_down": self._sent_bytes.get(node, 0),
                }
            )
        usable = [
            c
            for c in each
            if c["metrics"].get(SAMPLES, 0) > 0
            and all(math.isfinite(c["metrics"].get(k, math.nan)) for k in ("policy_loss", "action_error"))
        ]
        aggregate: dict[str, MetricRecordValues] | None = None
        if usable:
            total = sum(c["metrics"][SAMPLES] for c in usable)
            aggregate = {
                key: sum(c["metrics"][key] * c["metrics"][SAMPLES] for c in usable) / total
                for key in ("policy_loss", "action_error")
            }
            aggregate.update(num_clients=len(usable), samples=total)
        self.entry["federated_eval"] = {"aggregate": aggregate, "each": each, "failed": failed, "late": late}
        return MetricRecord(aggregate) if aggregate else None

    # ------------------------------------------------------------ server evaluation + record

    def evaluate_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            self.entry = {"round": 0}
        result = self.server_evaluate(server_round, self.global_weights) if self.is_eval_round(server_round) else None
        self.entry["server_eval"] = result
        loss = judging_loss(self.entry)
        if loss is not None:
            self.control.observe_server_loss(loss)
        self.entry["global_sha256"] = integrity.digest(arrays)  # the weights this round ends with
        self.entry["seconds"] = round(time.monotonic() - self._round_started, 3)
        self.on_round(self.entry, self.global_weights)
        return MetricRecord(result["composite"]) if result else None


def _seeded_sample(candidates: list[int], count: int) -> list[int]:
    """``count`` of the candidates, drawn with the global ``random`` that :meth:`Zk0FedProx.run` seeds."""
    return random.sample(candidates, count)


def _release_arrays(reply: Message) -> None:
    """Free a reply's arrays now. Flower's records sit in reference cycles (a RecordDict and its
    synced dicts) that only the cyclic garbage collector frees: between its runs, folded replies
    (~200 MB each at SmolVLA's size) piled up."""
    for record in reply.content.array_records.values():
        record.clear()


def _rejected(reason: str) -> integrity.CheckedUpdate:
    return integrity.CheckedUpdate(None, reason)


CLIENT_AVERAGED = ("fedprox_loss", "policy_loss", "grad_norm", "update_norm", "seconds")


def _aggregate_clients(clients: list[dict[str, Any]]) -> dict[str, Any]:
    loss_avg, loss_std = mean_std(c["metrics"]["loss"] for c in clients)
    aggregate: dict[str, Any] = {
        "num_clients": len(clients),
        "loss_avg": loss_avg,
        "loss_std": loss_std,
        "samples_total": sum(c["samples"] for c in clients),
    }
    for key in CLIENT_AVERAGED:
        average, _ = mean_std(c["metrics"][key] for c in clients if key in c["metrics"])
        aggregate[f"{key}_avg"] = average
    return aggregate
