"""Downlink changes and uplink error feedback: what each side rebuilds, and when it falls back."""

import numpy as np
import pytest
from flwr.app import ConfigRecord

from zk0cli.fl import integrity
from zk0cli.fl.wire import Downlink, NodeWire, RebuildError

BLOCK = 16


def weights(rng, scale=1.0):
    return {
        "expert.w": (rng.normal(size=(64, 40)) * scale).astype(np.float32),
        "proj.b": (rng.normal(size=(96,)) * scale).astype(np.float32),
    }


def send(downlink, node, holds):
    """The server's message for ``node`` (who holds ``holds``), as that node receives it."""
    record, keys = downlink.message_for(holds)
    return node.receive(record, ConfigRecord(keys), BLOCK), integrity.payload_bytes(record)


def trajectory(rounds, seed=0):
    """Master weights over rounds: a start and small steps, as training makes them."""
    rng = np.random.default_rng(seed)
    master = weights(rng)
    out = [master]
    for _ in range(rounds):
        master = {
            name: value + 1e-2 * rng.normal(size=value.shape).astype(np.float32) for name, value in master.items()
        }
        out.append(master)
    return out


@pytest.mark.parametrize("encoding", integrity.DELTA_ENCODINGS)
def test_a_node_rebuilds_the_wire_global_bit_for_bit_and_error_feedback_keeps_it_near_the_master(encoding):
    downlink, node = Downlink(encoding, BLOCK, keep=3, error_feedback=True), NodeWire()
    masters = trajectory(12)
    sizes = []
    for master in masters:
        downlink.publish(master)
        rebuilt, size = send(downlink, node, node.held_digest or None)
        sizes.append(size)
        assert node.held_digest == downlink.digest  # the node's copy is the server's wire global exactly
        gap = max(np.abs(rebuilt[n] - master[n]).max() for n in master)
        assert gap < 2.5e-4  # one change's rounding (|change| <~ 0.04: / 254 or x 2^-8), not twelve
    full = sum(v.size for v in masters[0].values()) * 4
    assert sizes[0] >= full  # the first global goes in full
    per_value = 1 + 4 / BLOCK if encoding == integrity.INT8_DELTA else 2  # bytes: int8 + a scale per block
    assert all(s < full * per_value / 4 + 600 for s in sizes[1:])  # then only changes (+ headers, layout)


@pytest.mark.parametrize("encoding", integrity.DELTA_ENCODINGS)
@pytest.mark.parametrize("feedback", [True, False])
def test_a_global_published_in_pieces_is_the_global_encoded_whole(encoding, feedback, monkeypatch):
    """The server encodes each step a piece at a time (pieces crossing tensors, a short last
    one); every change and wire global is bit for bit the whole-array encoding's."""
    from zk0cli.fl import wire

    masters = trajectory(3, seed=2)
    published = {}
    for piece in (wire.PUBLISH_PIECE, 3 * BLOCK + 5):  # whole (one piece), then 3 blocks a piece
        monkeypatch.setattr(wire, "PUBLISH_PIECE", piece)
        downlink = Downlink(encoding, BLOCK, keep=3, error_feedback=feedback)
        for master in masters:
            downlink.publish(master)
        published[piece] = (downlink.digest, integrity.digest(downlink.message_for(downlink._changes[0][0])[0]))
    (whole, pieces) = published.values()
    assert whole == pieces
    # and whole is what encode_delta gives on the flat step, as a node rebuilds it
    downlink, node = Downlink(encoding, BLOCK, keep=3, error_feedback=feedback), NodeWire()
    for master in masters:
        downlink.publish(master)
        send(downlink, node, node.held_digest or None)
    assert node.held_digest == whole[0]


def test_without_error_feedback_the_wire_global_drifts_from_the_master():
    masters = trajectory(30, seed=1)
    gaps = {}
    for feedback in (True, False):
        downlink, node = Downlink(integrity.INT8_DELTA, BLOCK, keep=3, error_feedback=feedback), NodeWire()
        for master in masters:
            downlink.publish(master)
            rebuilt, _ = send(downlink, node, node.held_digest or None)
        gaps[feedback] = max(np.abs(rebuilt[n] - masters[-1][n]).max() for n in rebuilt)
    assert gaps[False] > 2 * gaps[True]


def test_a_node_that_missed_rounds_gets_the_chain_and_one_further_behind_full_weights():
    downlink, node = Downlink(integrity.INT8_DELTA, BLOCK, keep=2, error_feedback=True), NodeWire()
    masters = trajectory(6)
    downlink.publish(masters[0])
    send(downlink, node, None)
    downlink.publish(masters[1])
    downlink.publish(masters[2])
    _, two_steps = send(downlink, node, node.held_digest)  # missed one round: two changes
    assert node.held_digest == downlink.digest
    for master in masters[3:]:
        downlink.publish(master)  # three more: beyond keep=2
    record, keys = downlink.message_for(node.held_digest)
    assert keys["downlink"] == integrity.FP32
    node.receive(record, ConfigRecord(keys), BLOCK)
    assert node.held_digest == downlink.digest
    downlink.publish(masters[-1])  # unchanged master: nothing new, the node holds it already
    _, nothing = send(downlink, node, node.held_digest)
    assert nothing < two_steps / 2


def test_a_corrupted_cached_global_is_caught_by_the_digest_and_full_weights_recover_it():
    downlink, node = Downlink(integrity.BF16_DELTA, BLOCK, keep=3, error_feedback=True), NodeWire()
    masters = trajectory(2)
    downlink.publish(masters[0])
    send(downlink, node, None)
    node.held[3] += 1.0  # a bit flip in the node's memory (or a cache from elsewhere)
    downlink.publish(masters[1])
    record, keys = downlink.message_for(node.held_digest)
    with pytest.raises(RebuildError, match="rebuilt global has digest"):
        node.receive(record, ConfigRecord(keys), BLOCK)
    fresh = NodeWire()  # and a node that holds nothing (restarted) says so
    with pytest.raises(RebuildError, match="holds no global"):
        fresh.receive(record, ConfigRecord(keys), BLOCK)
    full, full_keys = downlink.full()
    rebuilt = node.receive(full, ConfigRecord(full_keys), BLOCK)
    assert node.held_digest == downlink.digest and full_keys["downlink"] == integrity.FP32
    np.testing.assert_allclose(rebuilt["proj.b"], masters[1]["proj.b"], atol=2.5e-4)


def test_uplink_error_feedback_loses_nothing_over_rounds():
    """Sum of what the server decoded + the residual the node keeps = sum of the true changes."""
    rng = np.random.default_rng(3)
    node = NodeWire()
    global_weights = weights(rng)
    true_total = np.zeros(2656, dtype=np.float64)
    decoded_total = np.zeros(2656, dtype=np.float64)
    spec = integrity.spec_of(global_weights, integrity.INT8_DELTA)
    for _ in range(10):
        local = {n: v + 1e-3 * rng.normal(size=v.shape).astype(np.float32) for n, v in global_weights.items()}
        record = node.encode_update(local, global_weights, integrity.INT8_DELTA, BLOCK, error_feedback=True, run_id=7)
        checked = integrity.check_update(
            record, integrity.digest(record), spec, integrity.INT8_DELTA, global_weights, BLOCK
        )
        true_total += integrity.flat(local) - integrity.flat(global_weights)
        decoded_total += integrity.flat(checked.change.weights()) - integrity.flat(global_weights)
    np.testing.assert_allclose(decoded_total + node.residual, true_total, atol=1e-6)
    assert np.abs(node.residual).max() < 1e-4  # one step's rounding, not ten
    node.encode_update(local, global_weights, integrity.INT8_DELTA, BLOCK, error_feedback=True, run_id=8)
    # a new run starts without the old run's residual: its first residual is its own rounding only
    assert np.abs(node.residual).max() <= np.abs(integrity.flat(local) - integrity.flat(global_weights)).max() / 127


def test_nodes_holding_the_same_global_share_one_message_made_once():
    """A steady round sends every node the same change: one record (and one digest) for all of
    them, not one ~200 MB copy per node kept until its reply."""
    from zk0cli.fl.wire import DIGEST

    downlink = Downlink(integrity.BF16_DELTA, BLOCK, keep=2, error_feedback=True)
    masters = trajectory(2)
    downlink.publish(masters[0])
    held = downlink.digest
    downlink.publish(masters[1])
    first, keys = downlink.message_for(held)
    again, _ = downlink.message_for(held)
    assert again is first and keys[DIGEST] == integrity.digest(first)
    full, full_keys = downlink.full()
    assert full_keys[DIGEST] == integrity.digest(full)
    downlink.publish(masters[2])  # a new global: the node that held masters[0] now gets two changes
    later, later_keys = downlink.message_for(held)
    assert later is not first and len(later_keys["chain-sha256"].split(",")) == 3
