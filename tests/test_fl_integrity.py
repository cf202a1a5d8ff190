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
    assert checked.reason == ""
    tolerance = 0 if encoding == it.FP32 else 1e-4  # bf16 keeps ~3 significant digits of the 1e-2 delta
    for name in local:
        np.testing.assert_allclose(checked.weights[name], local[name], atol=tolerance, rtol=0)


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
    record = it.pack({"w": delta}, arrays[it.VALUES], arrays[it.SCALES])
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
    assert checked.weights is None and "digest mismatch" in checked.reason


@pytest.mark.parametrize("encoding", it.ENCODINGS)
def test_nan_or_inf_is_rejected(global_weights, encoding):
    for bad in (np.nan, np.inf):
        local = local_from(global_weights)
        local["expert.w"][1, 1] = bad
        record = it.encode_update(local, global_weights, encoding)
        checked = it.check_update(
            record, it.digest(record), it.spec_of(global_weights, encoding), encoding, global_weights
        )
        assert checked.weights is None and "non-finite" in checked.reason and "expert.w" in checked.reason


def test_wrong_shape_is_rejected(global_weights):
    local = local_from(global_weights)
    local["expert.w"] = local["expert.w"].T.copy()
    record = it.to_record(local)
    checked = it.check_update(record, it.digest(record), it.spec_of(global_weights, it.FP32), it.FP32, global_weights)
    assert checked.weights is None and "wrong shape for expert.w" in checked.reason


def test_wrong_dtype_and_encoding_mismatch_are_rejected(global_weights):
    record = it.pack(global_weights, Array(it.flat(global_weights).astype(np.float64)))
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
    assert checked.weights is None and "undecodable values" in checked.reason


def test_a_record_that_is_not_packed_is_rejected_as_malformed(global_weights):
    record = ArrayRecord({name: Array(value) for name, value in global_weights.items()})  # one array per tensor
    checked = it.check_update(record, it.digest(record), it.spec_of(global_weights, it.FP32), it.FP32, global_weights)
    assert checked.weights is None and "malformed update: expected the arrays 'layout' and 'values'" in checked.reason


@pytest.mark.parametrize("encoding", it.ENCODINGS)
def test_a_checked_update_carries_the_norm_of_its_change(global_weights, encoding):
    """Measured from the decoded change in the same pass as the NaN/Inf check: what the strategy
    records and clips by, equal to the norm of weights - global to float tolerance."""
    from zk0cli.fl.update_checks import change_norm

    rng = np.random.default_rng(4)
    local = {
        name: value + rng.normal(0, 1e-2, value.shape).astype(np.float32) for name, value in global_weights.items()
    }
    record = it.encode_update(local, global_weights, encoding)
    checked = it.check_update(record, it.digest(record), it.spec_of(global_weights, encoding), encoding, global_weights)
    assert checked.change_norm == pytest.approx(change_norm(checked.weights, global_weights), rel=1e-5)


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
