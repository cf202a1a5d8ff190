"""What each side sends: full weights, or only the change since what the other side holds.

Downlink (:class:`Downlink`, the server). With a delta encoding the server keeps, besides its
fp32 master weights G, the *wire global* W that nodes hold: W starts as G (sent in full, fp32)
and each time G changes it moves by the encoded change ``encode(G - W)``, exactly as every node
rebuilds it. What rounding leaves out stays in G - W and goes out with the next change: error
feedback on the downlink, for the whole federation at once rather than per node. The server
keeps the last ``keep-globals`` changes; a node that holds an earlier W (it says which, by
digest, in each reply) gets the chain of changes from there, any other node full weights. With
``error-feedback`` off the change is G's own step, ``G - G_previous``, and W drifts from G.

Uplink (:class:`NodeWire`, the node). The node sends ``encode(local - W + residual)`` and keeps
the rounding error as the next residual (per run). The server adds the decoded change to G.

A node that cannot rebuild W (it holds none of the chain, or the result fails the server's
digest) answers ``need-full`` instead of training, and the server sends it full weights in the
same round (:meth:`zk0cli.fl.strategy.Zk0FedProx._send_and_receive`).
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from numpy.typing import NDArray

from zk0cli.fl import integrity

# keys of a message's round config that describe its weights
DOWNLINK = "downlink"  # fp32 (full weights) or the delta encoding of the changes
CHAIN = "chain-sha256"  # digests of the wire globals the changes go through, from first base to result
NEED_FULL = "need-full"  # a reply's info key: why the node could not rebuild the global
HOLDS = "holds"  # a reply's info key: digest of the wire global the node now holds
DIGEST = "arrays-sha256"  # of the message's weights record (integrity.digest), checked on arrival
PUBLISH_PIECE = 1 << 20  # values of a global's step encoded at once (rounded to whole int8 blocks)


@dataclass
class Downlink:
    encoding: str  # integrity.FP32 or a delta encoding
    block: int
    keep: int  # changes kept (run-config keep-globals); 0: always full weights
    error_feedback: bool
    _layout: integrity.Layout = field(default_factory=list)  # names and shapes: never the master's arrays
    _wire: NDArray[np.float32] | None = None  # W, flat
    _wire_digest: str = ""
    _master_digest: str = ""
    _previous_master: NDArray[np.float32] | None = None  # deltas without error feedback: G's last value
    _changes: collections.deque[tuple[str, dict[str, Array]]] = field(default_factory=collections.deque)
    _full: ArrayRecord | None = None
    # chain start -> the message of the changes from there, built and hashed once per publish and
    # shared by every node holding that global (a SmolVLA change is ~200 MB in bf16)
    _messages: dict[int, tuple[ArrayRecord, dict[str, str]]] = field(default_factory=dict)

    @property
    def deltas(self) -> bool:
        return self.encoding in integrity.DELTA_ENCODINGS and self.keep > 0

    @property
    def digest(self) -> str:
        """Digest of the global every node rebuilds (its full packed fp32 record)."""
        return self._wire_digest

    def publish(self, master: Mapping[str, NDArray[np.float32]]) -> None:
        """The global to send from now on is ``master`` (again, or after a round's aggregation)."""
        master_digest = _fingerprint(master)
        if master_digest == self._master_digest:
            return
        self._master_digest, self._layout = master_digest, integrity.layout_of(master)
        self._messages.clear()
        if self._wire is None or not self.deltas:
            master_flat = integrity.flat(master)  # a new array: W is never the master's memory
            self._previous_master = master_flat.copy() if self.deltas and not self.error_feedback else None
            self._set_wire(master_flat)
            return
        base = self._wire_digest
        encoded = self._move_wire(master)
        self._set_wire(self._wire)
        self._changes.append((base, encoded))
        while len(self._changes) > self.keep:
            self._changes.popleft()

    def _move_wire(self, master: Mapping[str, NDArray[np.float32]]) -> dict[str, Array]:
        """Encode the step (G - W; without error feedback G - G_previous) a piece at a time and
        move W (and G_previous) as it goes, exactly as every node rebuilds W: the whole step and
        its decoded copy were 800 MB at SmolVLA's size, the peak of a server's round."""
        assert self._wire is not None
        reference = self._wire if self.error_feedback else self._previous_master
        assert reference is not None
        encoder = integrity.DeltaEncoder(self._wire.size, self.encoding, self.block)
        for start, values in _flat_pieces(master, max(1, PUBLISH_PIECE // self.block) * self.block):
            end = start + values.size
            step = values - reference[start:end]
            if self._previous_master is not None:
                self._previous_master[start:end] = values
            self._wire[start:end] += encoder.encode(start, step)
        return encoder.arrays()

    def _set_wire(self, wire: NDArray[np.float32]) -> None:
        self._wire, self._full = wire, None  # the old record goes before the new one is packed
        self._full = integrity.pack(self._layout, Array(wire))  # wire is already the flat values
        self._wire_digest = integrity.digest(self._full)

    def message_for(self, holds: str | None) -> tuple[ArrayRecord, dict[str, str]]:
        """(the weights for a node that holds the wire global ``holds``, their round-config keys).
        Nodes holding the same global get the same record object: memory does not grow with them."""
        bases = [base for base, _ in self._changes]
        if not self.deltas or holds is None or (holds not in bases and holds != self._wire_digest):
            return self.full()
        start = bases.index(holds) if holds in bases else len(bases)
        if start not in self._messages:
            self._messages[start] = self._changes_since(start)
        return self._messages[start]

    def _changes_since(self, start: int) -> tuple[ArrayRecord, dict[str, str]]:
        """The changes from the chain's ``start`` to the current wire global, packed, and their keys."""
        changes = list(self._changes)[start:]
        chain = [*(base for base, _ in changes), self._wire_digest]
        values, scales = integrity.join_steps([change for _, change in changes], self.encoding)
        record = integrity.pack(self._layout, values, scales)
        return record, {DOWNLINK: self.encoding, CHAIN: ",".join(chain), DIGEST: integrity.digest(record)}

    def full(self) -> tuple[ArrayRecord, dict[str, str]]:
        assert self._full is not None, "publish() a global first"
        return self._full, {DOWNLINK: integrity.FP32, CHAIN: self._wire_digest, DIGEST: self._wire_digest}


def _fingerprint(master: Mapping[str, NDArray[np.float32]]) -> str:
    """SHA-256 of a master's names, shapes and values: whether it changed, without packing it
    into a record (a SmolVLA record is 400 MB more, twice over while Flower serialises it)."""
    fingerprint = hashlib.sha256(json.dumps(integrity.layout_of(master)).encode())
    for value in master.values():
        fingerprint.update(np.ascontiguousarray(value, dtype=np.float32))
    return fingerprint.hexdigest()


def _flat_pieces(arrays: Mapping[str, NDArray[np.float32]], size: int) -> Iterator[tuple[int, NDArray[np.float32]]]:
    """(offset, the next ``size`` values of the arrays laid end to end), without laying them all
    out at once. Each piece is the same buffer, valid until the next."""
    buffer, filled, offset = np.empty(size, dtype=np.float32), 0, 0
    for value in arrays.values():
        values = np.asarray(value, dtype=np.float32).reshape(-1)
        taken = 0
        while taken < values.size:
            count = min(size - filled, values.size - taken)
            buffer[filled : filled + count] = values[taken : taken + count]
            filled, taken = filled + count, taken + count
            if filled == size:
                yield offset, buffer
                offset, filled = offset + size, 0
    if filled:
        yield offset, buffer[:filled]


class RebuildError(Exception):
    """This node cannot rebuild the global from the changes it was sent (the message says why)."""


@dataclass
class NodeWire:
    """A node's side: the last wire global it rebuilt, and its uplink rounding residual."""

    held_digest: str = ""
    held: NDArray[np.float32] | None = None  # flat
    residual: NDArray[np.float32] | None = None
    residual_run: int | None = None

    def receive(self, record: ArrayRecord, round_config: ConfigRecord, block: int) -> dict[str, NDArray[np.float32]]:
        """The global weights a message carries, full or rebuilt from its changes (digest checked)."""
        chain = str(round_config.get(CHAIN, "")).split(",")
        encoding = str(round_config.get(DOWNLINK, integrity.FP32))
        layout = integrity.read_layout(record)
        if encoding == integrity.FP32:
            wire = integrity.decode_array(record[integrity.VALUES]).copy()
        else:
            if self.held is None or self.held_digest not in chain:
                raise RebuildError(
                    f"holds {self.held_digest[:12] or 'no global'}, the changes start at {chain[0][:12]}"
                )
            size = sum(int(np.prod(shape)) for _, shape in layout)
            steps = integrity.decode_steps(record, encoding, block, size)[chain.index(self.held_digest) :]
            wire = self.held.copy()
            for step in steps:
                wire = wire + step
        weights = integrity.split(wire, layout)
        rebuilt = integrity.digest(integrity.to_record(weights))
        if rebuilt != chain[-1]:
            raise RebuildError(f"the rebuilt global has digest {rebuilt[:12]}, the server's is {chain[-1][:12]}")
        self.held, self.held_digest = wire, rebuilt
        return weights

    def encode_update(
        self,
        local: Mapping[str, NDArray[np.float32]],
        global_weights: Mapping[str, NDArray[np.float32]],
        encoding: str,
        block: int,
        *,
        error_feedback: bool,
        run_id: int,
    ) -> ArrayRecord:
        if encoding == integrity.FP32:
            return integrity.to_record(local)
        change = integrity.flat(local) - integrity.flat({name: global_weights[name] for name in local})
        if error_feedback and self.residual is not None and self.residual_run == run_id:
            change = change + self.residual
        arrays, decoded = integrity.encode_delta(change, encoding, block)
        self.residual, self.residual_run = (change - decoded, run_id) if error_feedback else (None, None)
        return integrity.pack(integrity.layout_of(local), arrays[integrity.VALUES], arrays.get(integrity.SCALES))


_nodes: collections.OrderedDict[Any, NodeWire] = collections.OrderedDict()
NODES_KEPT = 4  # a Simulation Engine actor serves many clients; each keeps ~2 x the trainable weights


def node_wire(node_id: Any) -> NodeWire:
    """This process's wire state for one node (a deployment's ClientApp host has just one)."""
    if node_id not in _nodes:
        while len(_nodes) >= NODES_KEPT:
            _nodes.popitem(last=False)
        _nodes[node_id] = NodeWire()
    _nodes.move_to_end(node_id)
    return _nodes[node_id]
