"""Digests and update checks: what the server accepts and why it refuses the rest."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from zk0cli.fl import integrity as it


@pytest.fixture
def global_weights():
    rng = np.random.default_rng(0)
    return {"expert.w": rng.normal(size=(4, 3)).astype(np.float32), "proj.b": rng.normal(size=(3,)).astype(np.float32)}


def local_from(global_weights, scale=1e-2):
    return {name: value + scale for name, value in global_weights.items()}


def test_digest_is_stable_and_sensitive(global_weights):
    record = it.to_record(global_weights)
    assert it.digest(record) == it.digest(it.to_record({k: v.copy() for k, v in global_weights.items()}))
    changed = dict(global_weights, **{"proj.b": global_weights["proj.b"].copy()})
    changed["proj.b"].view(np.uint32)[0] ^= 1  # one bit
    assert it.digest(it.to_record(changed)) != it.digest(record)
    renamed = {"other": global_weights["expert.w"], "proj.b": global_weights["proj.b"]}
    assert it.digest(it.to_record(renamed)) != it.digest(record)


def test_a_record_is_written_tensor_by_tensor_exactly_as_flower_writes_the_flat_array():
    rng = np.random.default_rng(6)
    arrays = {"a": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.normal(size=7), "c": np.zeros(0, np.float32)}
    record = it.to_record(arrays)
    assert record[it.VALUES].data == Array(it.flat(arrays)).data  # np.save's bytes: float64 "b" as float32
    assert it.digest(record) == it.digest(it.pack(it.layout_of(arrays), Array(it.flat(arrays))))
    assert it.from_record(it.to_record({})) == {}


def test_weights_travel_packed_in_two_arrays_whatever_the_tensor_count():
    rng = np.random.default_rng(1)
    many = {f"expert.layers.{i}.w": rng.normal(size=(3, i + 1)).astype(np.float32) for i in range(50)}
    record = it.to_record(many)
    assert sorted(record.keys()) == [it.LAYOUT, it.VALUES]  # Flower moves one object per array
    restored = it.from_record(record)
    assert list(restored) == list(many)
    for name, value in many.items():
        np.testing.assert_array_equal(restored[name], value)
    with pytest.raises(it.PackingError, match="expected the arrays"):
        it.from_record(ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))}))


@pytest.mark.parametrize("encoding", it.ENCODINGS)
def test_valid_update_is_accepted_and_decoded(global_weights, encoding):
    local = local_from(global_weights)
    record = it.encode_update(local, global_weights, encoding)
    spec = it.spec_of(global_weights, encoding)
    checked = it.check_update(record, it.digest(record), spec, encoding, global_weights)
    assert checked.reason == "" and checked.change is not None
    tolerance = 0 if encoding == it.FP32 else 1e-4  # bf16 keeps ~3 significant digits of the 1e-2 delta
    weights = checked.change.weights()
    for name in local:
        np.testing.assert_allclose(weights[name], local[name], atol=tolerance, rtol=0)


def test_bf16_delta_halves_the_payload(global_weights):
    local = local_from(global_weights)
    fp32 = it.encode_update(local, global_weights, it.FP32)
    bf16 = it.encode_update(local, global_weights, it.BF16_DELTA)
    raw_fp32 = sum(v.size for v in local.values()) * 4
    assert len(bf16[it.VALUES].data) == raw_fp32 // 2
    assert len(fp32[it.VALUES].data) > raw_fp32  # a numpy header on top


@pytest.mark.parametrize("block", [16, 256])
def test_int8_blocks_round_trip_within_half_a_step_and_take_a_quarter_of_the_bytes(block):
    rng = np.random.default_rng(2)
    delta = (rng.normal(0, 1e-3, 1000) * rng.choice([1.0, 100.0], 1000)).astype(np.float32)  # uneven blocks
    delta[:block] = 0.0  # an all-zero block: scale 0, decodes to exact zeros
    arrays, decoded = it.encode_delta(delta, it.INT8_DELTA, block)
    quantized, scales = arrays[it.VALUES].numpy(), arrays[it.SCALES].numpy()
    assert quantized.dtype == np.int8 and np.abs(quantized).max() == it.INT8_LEVELS
    assert scales.size == -(-delta.size // block) and scales[0] == 0.0
    step = np.repeat(scales, block)[: delta.size]
    assert (np.abs(decoded - delta) <= step / 2 * (1 + 1e-6)).all()  # round to nearest: at most half a step
    np.testing.assert_array_equal(decoded[:block], 0.0)
    record = it.pack([("w", delta.shape)], arrays[it.VALUES], arrays[it.SCALES])
    np.testing.assert_array_equal(it.decode_steps(record, it.INT8_DELTA, block, delta.size)[0], decoded)
    assert len(arrays[it.VALUES].data) < delta.size * 4 / 4 + 200  # int8 values (+ a numpy header)
    assert len(arrays[it.SCALES].data) < delta.size * 4 / block + 200


def test_bf16_rounding_matches_torch_and_keeps_nan():
    torch = pytest.importorskip("torch")
    values = np.array([1.0, 1.00390625, 1.01171875, -3.3e-5, 65504.0, np.inf, -np.inf, 3e38, np.nan], dtype=np.float32)
    ours = it.from_bf16_bits(it.to_bf16_bits(values))
    theirs = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(ours[:-1], theirs[:-1])
    assert np.isnan(ours[-1])
    negative_nan = np.array([0xFFFFFFFF], dtype=np.uint32).view(np.float32)
    assert np.isnan(it.from_bf16_bits(it.to_bf16_bits(negative_nan))).all()


def test_tampered_digest_is_rejected(global_weights):
    record = it.encode_update(local_from(global_weights), global_weights, it.FP32)
    claimed = it.digest(record)
    record[it.VALUES] = Array(np.zeros(15, dtype=np.float32))  # changed in transit
    checked = it.check_update(record, claimed, it.spec_of(global_weights, it.FP32), it.FP32, global_weights)
    assert checked.change is None and "digest mismatch" in checked.reason


@pytest.mark.parametrize("encoding", it.ENCODINGS)
def test_nan_or_inf_is_rejected(global_weights, encoding):
    for bad in (np.nan, np.inf):
        local = local_from(global_weights)
        local["expert.w"][1, 1] = bad
        record = it.encode_update(local, global_weights, encoding)
        checked = it.check_update(
            record, it.digest(record), it.spec_of(global_weights, encoding), encoding, global_weights
        )
        assert checked.change is None and "non-finite" in checked.reason and "expert.w" in checked.reason


def test_wrong_shape_is_rejected(global_weights):
    local = local_from(global_weights)
    local["expert.w"] = local["expert.w"].T.copy()
    record = it.to_record(local)
    checked = it.check_update(record, it.digest(record), it.spec_of(global_weights, it.FP32), it.FP32, global_weights)
    assert checked.change is None and "wrong shape for expert.w" in checked.reason


def test_wrong_dtype_and_encoding_mismatch_are_rejected(global_weights):
    record = it.pack(it.layout_of(global_weights), Array(it.flat(global_weights).astype(np.float64)))
    checked = it.check_update(record, it.digest(record), it.spec_of(global_weights, it.FP32), it.FP32, global_weights)
    assert "wrong dtype" in checked.reason and "float64" in checked.reason
    bf16 = it.encode_update(local_from(global_weights), global_weights, it.BF16_DELTA)
    checked = it.check_update(bf16, it.digest(bf16), it.spec_of(global_weights, it.FP32), it.FP32, global_weights)
    assert "wrong dtype" in checked.reason and "bfloat16" in checked.reason


def test_missing_or_extra_names_are_rejected(global_weights):
    local = local_from(global_weights)
    local["vlm.frozen"] = np.zeros(2, dtype=np.float32)
    del local["proj.b"]
    record = it.to_record(local)
    checked = it.check_update(record, it.digest(record), it.spec_of(global_weights, it.FP32), it.FP32, global_weights)
    assert "missing proj.b" in checked.reason and "unexpected vlm.frozen" in checked.reason


def test_truncated_raw_payload_is_rejected(global_weights):
    record = it.encode_update(local_from(global_weights), global_weights, it.BF16_DELTA)
    short = record[it.VALUES]
    record[it.VALUES] = Array(dtype=short.dtype, shape=short.shape, stype=short.stype, data=short.data[:-2])
    checked = it.check_update(
        record, it.digest(record), it.spec_of(global_weights, it.BF16_DELTA), it.BF16_DELTA, global_weights
    )
    assert checked.change is None and "undecodable values" in checked.reason


@pytest.mark.parametrize("encoding", [it.FP32, it.INT8_DELTA])
@pytest.mark.parametrize("held", [np.array(["x"] * 15), np.zeros(15, complex), np.zeros(15, np.float64)])
def test_values_whose_bytes_hold_another_dtype_than_labelled_are_rejected(global_weights, encoding, held):
    """A hostile node labels its values float32 (or int8) and sends np.save bytes of strings or
    complex numbers: refused as undecodable, never raised from the server's fold."""
    import io

    from flwr.common.constant import SType

    record = it.encode_update(local_from(global_weights), global_weights, encoding)
    saved = io.BytesIO()
    np.save(saved, held)
    record[it.VALUES] = Array(dtype=it.WIRE_DTYPE[encoding], shape=(15,), stype=SType.NUMPY, data=saved.getvalue())
    spec = it.spec_of(global_weights, encoding)
    checked = it.check_update(record, it.digest(record), spec, encoding, global_weights)
    assert checked.change is None and "undecodable values: the bytes hold" in checked.reason


def test_a_record_that_is_not_packed_is_rejected_as_malformed(global_weights):
    record = ArrayRecord({name: Array(value) for name, value in global_weights.items()})  # one array per tensor
    checked = it.check_update(record, it.digest(record), it.spec_of(global_weights, it.FP32), it.FP32, global_weights)
    assert checked.change is None and "malformed update: expected the arrays 'layout' and 'values'" in checked.reason


@pytest.mark.parametrize("encoding", it.ENCODINGS)
def test_a_checked_update_carries_the_norm_of_its_change(global_weights, encoding):
    """Measured from the decoded change in the same pass as the NaN/Inf check: what the strategy
    records and clips by, equal to the norm of weights - global to float tolerance."""
    rng = np.random.default_rng(4)
    local = {
        name: value + rng.normal(0, 1e-2, value.shape).astype(np.float32) for name, value in global_weights.items()
    }
    record = it.encode_update(local, global_weights, encoding)
    checked = it.check_update(record, it.digest(record), it.spec_of(global_weights, encoding), encoding, global_weights)
    weights = checked.change.weights()
    expected = np.sqrt(sum(np.sum((weights[n].astype(np.float64) - global_weights[n]) ** 2) for n in weights))
    assert checked.change_norm == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("encoding", it.ENCODINGS)
def test_a_change_is_read_in_pieces_that_follow_the_tensors_and_scale_with_clipping(
    global_weights, encoding, monkeypatch
):
    """The fold reads a change a piece at a time; pieces never cross a tensor, cover every value
    once, and are exactly the full decode's values (times the clipping factor)."""
    monkeypatch.setattr(it, "PIECE", 5)  # expert.w (12 values) in pieces of 5, 5 and 2
    record = it.encode_update(local_from(global_weights), global_weights, encoding)
    checked = it.check_update(record, it.digest(record), it.spec_of(global_weights, encoding), encoding, global_weights)
    weights = checked.change.weights()
    if encoding == it.FP32:
        whole = it.flat(weights) - it.flat(global_weights)
    else:  # a delta's weights are the global plus the change decoded as a whole
        whole = it.decode_steps(record, encoding, 256, it.flat(global_weights).size)[0]
        np.testing.assert_array_equal(it.flat(weights), it.flat(global_weights) + whole)
    full = {name: value.reshape(-1) for name, value in it.split(whole, it.read_layout(record)).items()}
    for change, factor in ((checked.change, 1.0), (checked.change.scaled(0.5).scaled(0.5), 0.25)):
        seen = {name: np.zeros(value.size, bool) for name, value in full.items()}
        for name, lo, hi, piece in change.pieces():
            assert hi - lo == piece.size <= 5 and not seen[name][lo:hi].any()
            seen[name][lo:hi] = True
            np.testing.assert_array_equal(piece, full[name][lo:hi] * np.float32(factor))
        assert all(covered.all() for covered in seen.values())


def test_a_huge_but_finite_change_is_not_taken_for_inf(global_weights):
    """Squares summed in float32 overflow at ~1.8e19 per value: the check sums again in float64
    before it calls a change non-finite."""
    local = {name: value + np.float32(3e19) for name, value in global_weights.items()}
    record = it.encode_update(local, global_weights, it.BF16_DELTA)
    spec = it.spec_of(global_weights, it.BF16_DELTA)
    checked = it.check_update(record, it.digest(record), spec, it.BF16_DELTA, global_weights)
    assert checked.reason == "" and checked.change_norm == pytest.approx(3e19 * np.sqrt(15), rel=1e-2)


def test_bf16_decodes_in_one_float32_buffer():
    """No uint32 temporaries beside the result: a SmolVLA change is 400 MB decoded."""
    import tracemalloc

    bits = it.to_bf16_bits(np.random.default_rng(5).normal(size=1_000_000).astype(np.float32))
    tracemalloc.start()
    decoded = it.from_bf16_bits(bits)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < decoded.nbytes + 2**16
    np.testing.assert_array_equal(decoded.view(np.uint32), bits.astype(np.uint32) << 16)
