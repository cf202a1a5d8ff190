"""What crosses the wire, and the checks on it.

Both directions carry a SHA-256 digest over the arrays (name, dtype, shape, stype, bytes, in
name order): the server puts the digest of the global weights in the train config, the client
puts the digest of its update in the reply. The digest catches corruption and mix-ups, not a
malicious peer (that needs signatures, i.e. TLS plus node authentication).

Uplink encodings:
- ``fp32``: the client's trainable weights as float32 arrays.
- ``bf16-delta``: (local - global) rounded to bfloat16 (half the bytes); the server adds the
  decoded delta to its own fp32 master copy, so rounding never accumulates in the global model.
  numpy has no bfloat16, so these arrays travel as raw little-endian bytes with
  ``dtype="bfloat16"`` and ``stype=RAW_STYPE``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

FP32 = "fp32"
BF16_DELTA = "bf16-delta"
ENCODINGS = (FP32, BF16_DELTA)
RAW_STYPE = "zk0.raw-le"  # raw little-endian element bytes, no header

WIRE_DTYPE = {FP32: "float32", BF16_DELTA: "bfloat16"}

ArraySpec = Mapping[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype) expected on the wire


def digest(record: ArrayRecord) -> str:
    h = hashlib.sha256()
    for name in sorted(record.keys()):
        array = record[name]
        header = json.dumps([name, array.dtype, list(array.shape), array.stype]).encode()
        h.update(len(header).to_bytes(8, "little") + header)
        h.update(len(array.data).to_bytes(8, "little"))
        h.update(array.data)
    return h.hexdigest()


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """float32 arrays into an ArrayRecord (insertion order kept)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value, dtype=np.float32)) for name, value in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: decode_array(record[name]) for name in record.keys()}


def spec_of(arrays: Mapping[str, np.ndarray], encoding: str) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: (tuple(value.shape), WIRE_DTYPE[encoding]) for name, value in arrays.items()}


# ---------------------------------------------------------------- bfloat16 by hand


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even, NaN kept NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def bf16_array(values: np.ndarray) -> Array:
    bits = to_bf16_bits(values).astype("<u2")
    return Array(dtype="bfloat16", shape=tuple(int(d) for d in values.shape), stype=RAW_STYPE, data=bits.tobytes())


def decode_array(array: Array) -> np.ndarray:
    """float32 view of a float32 numpy Array or a raw bfloat16 Array."""
    if array.stype == RAW_STYPE and array.dtype == "bfloat16":
        bits = np.frombuffer(array.data, dtype="<u2").reshape(array.shape)
        return from_bf16_bits(bits)
    return np.asarray(array.numpy(), dtype=np.float32)


# ---------------------------------------------------------------- updates


def encode_update(local: Mapping[str, np.ndarray], global_: Mapping[str, np.ndarray], encoding: str) -> ArrayRecord:
    if encoding == FP32:
        return to_record(local)
    if encoding == BF16_DELTA:
        return ArrayRecord({name: bf16_array(local[name] - global_[name]) for name in local})
    raise ValueError(f"unknown uplink encoding {encoding!r}")


@dataclass(frozen=True)
class CheckedUpdate:
    weights: dict[str, np.ndarray] | None  # full fp32 trainable weights when accepted
    reason: str  # why it was rejected; "" when accepted


def check_update(
    record: ArrayRecord, claimed_digest: str, spec: ArraySpec, encoding: str, global_: Mapping[str, np.ndarray]
) -> CheckedUpdate:
    """Verify one client update and turn it into full fp32 weights, or say why it is rejected."""
    if encoding not in ENCODINGS:
        return CheckedUpdate(None, f"unknown uplink encoding {encoding!r}")
    actual = digest(record)
    if actual != claimed_digest:
        return CheckedUpdate(None, f"digest mismatch (claimed {claimed_digest[:12]}, got {actual[:12]})")
    names, expected = set(record.keys()), set(spec)
    if names != expected:
        missing, extra = sorted(expected - names), sorted(names - expected)
        return CheckedUpdate(None, f"wrong parameter names (missing {_few(missing)}; unexpected {_few(extra)})")
    weights = {}
    for name in spec:
        array = record[name]
        shape, dtype = spec[name]
        if tuple(array.shape) != tuple(shape):
            return CheckedUpdate(None, f"wrong shape for {name}: {tuple(array.shape)}, expected {tuple(shape)}")
        if array.dtype != dtype:
            return CheckedUpdate(None, f"wrong dtype for {name}: {array.dtype}, expected {dtype}")
        try:
            values = decode_array(array)
        except (ValueError, TypeError) as exc:
            return CheckedUpdate(None, f"undecodable array {name}: {exc}")
        if values.shape != tuple(shape):
            return CheckedUpdate(None, f"payload of {name} does not match its shape {tuple(shape)}")
        if not np.isfinite(values).all():
            return CheckedUpdate(None, f"non-finite values (NaN/Inf) in {name}")
        weights[name] = values + global_[name] if encoding == BF16_DELTA else values
    return CheckedUpdate(weights, "")


def _few(names: list[str], limit: int = 3) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
