"""What crosses the wire, and the checks on it.

Weights travel packed: one ArrayRecord with two arrays, ``layout`` (UTF-8 JSON
``[[name, shape], ...]``, the trainable parameters in the policy's order) and ``values`` (all of
them concatenated, flat). Flower moves every array as its own object, one HTTP round trip each
(arrays above 5 MiB in 5 MiB pieces). Packed, SmolVLA's train message is 84 objects instead of 298
and its bf16 reply 47 instead of 315 (bench/wire_bytes.py); the tiny test policy's 47 tensors
become 2 objects. At ~0.1 s per object on a loaded 2-core node, that was most of a round's
transfer time.

Both directions carry a SHA-256 digest over the arrays (name, dtype, shape, stype, bytes, in
name order): the server puts the digest of the global weights in the train config, the client
puts the digest of its update in the reply. The digest catches corruption and mix-ups, not a
malicious peer (that needs signatures, i.e. TLS plus node authentication).

Uplink encodings (of ``values``):
- ``fp32``: the client's trainable weights as float32.
- ``bf16-delta``: (local - global) rounded to bfloat16 (half the bytes); the server adds the
  decoded delta to its own fp32 master copy, so rounding never accumulates in the global model.
  numpy has no bfloat16, so these values travel as raw little-endian bytes with
  ``dtype="bfloat16"`` and ``stype=RAW_STYPE``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from numpy.typing import NDArray

FP32 = "fp32"
BF16_DELTA = "bf16-delta"
ENCODINGS = (FP32, BF16_DELTA)
RAW_STYPE = "zk0.raw-le"  # raw little-endian element bytes, no header
LAYOUT, VALUES = "layout", "values"  # the two arrays of a packed record

WIRE_DTYPE = {FP32: "float32", BF16_DELTA: "bfloat16"}

ArraySpec = Mapping[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype) expected on the wire


class PackingError(ValueError):
    """A record that is not a well-formed packed set of weights (the message says what is wrong)."""


def digest(record: ArrayRecord) -> str:
    h = hashlib.sha256()
    for name in sorted(record.keys()):
        array = record[name]
        header = json.dumps([name, array.dtype, list(array.shape), array.stype]).encode()
        h.update(len(header).to_bytes(8, "little") + header)
        h.update(len(array.data).to_bytes(8, "little"))
        h.update(array.data)
    return h.hexdigest()


def payload_bytes(record: ArrayRecord) -> int:
    """The bytes a record's arrays put on the wire (what zk0 records as bytes down/up)."""
    return sum(len(array.data) for array in record.values())


def pack(arrays: Mapping[str, NDArray[np.float32]], values: Array) -> ArrayRecord:
    """The packed record of ``arrays``' layout and their already encoded, concatenated ``values``."""
    layout = json.dumps([[name, [int(d) for d in value.shape]] for name, value in arrays.items()]).encode()
    return ArrayRecord({LAYOUT: Array(np.frombuffer(layout, dtype=np.uint8)), VALUES: values})


def flat(arrays: Mapping[str, NDArray[np.float32]]) -> NDArray[Any]:
    """All arrays as one contiguous float32 vector, in insertion order."""
    if not arrays:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in arrays.values()])


def to_record(arrays: Mapping[str, NDArray[np.float32]]) -> ArrayRecord:
    """float32 arrays into a packed ArrayRecord (insertion order kept)."""
    return pack(arrays, Array(flat(arrays)))


def from_record(record: ArrayRecord) -> dict[str, NDArray[np.float32]]:
    """The float32 arrays of a packed record; PackingError if it is not one."""
    layout = read_layout(record)
    return split(decode_array(record[VALUES]), layout)


def read_layout(record: ArrayRecord) -> list[tuple[str, tuple[int, ...]]]:
    if set(record.keys()) != {LAYOUT, VALUES}:
        raise PackingError(f"expected the arrays '{LAYOUT}' and '{VALUES}', got {_few(sorted(record.keys()))}")
    try:
        entries = json.loads(bytes(record[LAYOUT].numpy().astype(np.uint8)).decode("utf-8"))
        return [(str(name), tuple(int(d) for d in shape)) for name, shape in entries]
    except (ValueError, TypeError) as exc:
        raise PackingError(f"unreadable layout ({exc})") from None


def split(values: NDArray[Any], layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, NDArray[np.float32]]:
    """Cut a flat vector into the layout's arrays (views, no copy)."""
    needed = sum(math.prod(shape) for _, shape in layout)
    if values.ndim != 1 or values.size != needed:
        raise PackingError(f"payload has {values.size} values, the layout needs {needed}")
    out, offset = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = values[offset : offset + size].reshape(shape)
        offset += size
    return out


def spec_of(arrays: Mapping[str, NDArray[np.float32]], encoding: str) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: (tuple(value.shape), WIRE_DTYPE[encoding]) for name, value in arrays.items()}


# ---------------------------------------------------------------- bfloat16 by hand


def to_bf16_bits(values: NDArray[Any]) -> NDArray[Any]:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even, NaN kept NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def from_bf16_bits(bits: NDArray[Any]) -> NDArray[Any]:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def bf16_array(values: NDArray[Any]) -> Array:
    bits = to_bf16_bits(values).astype("<u2")
    return Array(dtype="bfloat16", shape=tuple(int(d) for d in values.shape), stype=RAW_STYPE, data=bits.tobytes())


def decode_array(array: Array) -> NDArray[Any]:
    """float32 view of a float32 numpy Array or a raw bfloat16 Array."""
    if array.stype == RAW_STYPE and array.dtype == "bfloat16":
        bits = np.frombuffer(array.data, dtype="<u2").reshape(array.shape)
        return from_bf16_bits(bits)
    return np.asarray(array.numpy(), dtype=np.float32)


# ---------------------------------------------------------------- updates


def encode_update(
    local: Mapping[str, NDArray[np.float32]], global_: Mapping[str, NDArray[np.float32]], encoding: str
) -> ArrayRecord:
    if encoding == FP32:
        return to_record(local)
    if encoding == BF16_DELTA:
        return pack(local, bf16_array(flat(local) - flat({name: global_[name] for name in local})))
    raise ValueError(f"unknown uplink encoding {encoding!r}")


@dataclass(frozen=True)
class CheckedUpdate:
    weights: dict[str, NDArray[np.float32]] | None  # full fp32 trainable weights when accepted
    reason: str  # why it was rejected; "" when accepted


def check_update(
    record: ArrayRecord, claimed_digest: str, spec: ArraySpec, encoding: str, global_: Mapping[str, NDArray[np.float32]]
) -> CheckedUpdate:
    """Verify one client update and turn it into full fp32 weights, or say why it is rejected."""
    if encoding not in ENCODINGS:
        return CheckedUpdate(None, f"unknown uplink encoding {encoding!r}")
    actual = digest(record)
    if actual != claimed_digest:
        return CheckedUpdate(None, f"digest mismatch (claimed {claimed_digest[:12]}, got {actual[:12]})")
    try:
        layout = read_layout(record)
    except PackingError as exc:
        return CheckedUpdate(None, f"malformed update: {exc}")
    names = {name for name, _ in layout}
    if names != set(spec):
        missing, extra = [n for n in spec if n not in names], [n for n, _ in layout if n not in spec]
        return CheckedUpdate(None, f"wrong parameter names (missing {_few(missing)}; unexpected {_few(extra)})")
    for name, shape in layout:
        if shape != tuple(spec[name][0]):
            return CheckedUpdate(None, f"wrong shape for {name}: {shape}, expected {tuple(spec[name][0])}")
    wire = record[VALUES]
    if wire.dtype != WIRE_DTYPE[encoding]:
        return CheckedUpdate(None, f"wrong dtype for {VALUES}: {wire.dtype}, expected {WIRE_DTYPE[encoding]}")
    try:
        values = split(decode_array(wire), layout)
    except (ValueError, TypeError) as exc:
        return CheckedUpdate(None, f"undecodable {VALUES}: {exc}")
    weights = {}
    for name, value in values.items():
        if not np.isfinite(value).all():
            return CheckedUpdate(None, f"non-finite values (NaN/Inf) in {name}")
        weights[name] = value + global_[name] if encoding == BF16_DELTA else value
    return CheckedUpdate(weights, "")


def _few(names: list[str], limit: int = 3) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
