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

Wire encodings (run-config ``wire-encoding``, of ``values``), both ways:
- ``fp32``: full float32 weights (the client's trainable weights up, the global down).
- ``bf16-delta``: a change (local - global up; new global - the node's last global down,
  :mod:`zk0cli.fl.wire`) rounded to bfloat16: half the bytes. numpy has no bfloat16, so these
  values travel as raw little-endian bytes with ``dtype="bfloat16"`` and ``stype=RAW_STYPE``.
- ``int8-delta``: the change in blocks of ``int8-block-size`` values, each block one float32
  scale (its largest magnitude / 127) and int8 values rounded to nearest: a quarter of the
  bytes plus 4 per block, in a third array ``scales``. Rounding is deterministic, not stochastic:
  error feedback (:mod:`zk0cli.fl.wire`) carries each rounding error into the next change, so
  an unbiased rounding buys nothing, and a deterministic one lets the server compute bit for
  bit the global a node rebuilds (its digest is checked).
The server always keeps fp32 master weights: rounding never accumulates in the global model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType
from numpy.typing import NDArray

FP32 = "fp32"
BF16_DELTA = "bf16-delta"
INT8_DELTA = "int8-delta"
ENCODINGS = (FP32, BF16_DELTA, INT8_DELTA)
DELTA_ENCODINGS = (BF16_DELTA, INT8_DELTA)
RAW_STYPE = "zk0.raw-le"  # raw little-endian element bytes, no header
LAYOUT, VALUES, SCALES = "layout", "values", "scales"  # the arrays of a packed record (scales: int8 only)
INT8_LEVELS = 127  # symmetric: -127..127, so a block's scale maps its largest magnitude exactly

WIRE_DTYPE = {FP32: "float32", BF16_DELTA: "bfloat16", INT8_DELTA: "int8"}

ArraySpec = Mapping[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype) expected on the wire
Layout = list[tuple[str, tuple[int, ...]]]  # the packed tensors' names and shapes, in order


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


def layout_of(arrays: Mapping[str, Any]) -> Layout:
    return [(name, tuple(int(d) for d in np.shape(value))) for name, value in arrays.items()]


def pack(layout: Layout, values: Array, scales: Array | None = None) -> ArrayRecord:
    """The packed record of a ``layout`` (names and shapes) and its tensors' already encoded,
    concatenated ``values`` (and int8 block ``scales``)."""
    text = json.dumps([[name, list(shape)] for name, shape in layout]).encode()
    packed = {LAYOUT: Array(np.frombuffer(text, dtype=np.uint8)), VALUES: values}
    if scales is not None:
        packed[SCALES] = scales
    return ArrayRecord(packed)


def flat(arrays: Mapping[str, NDArray[np.float32]]) -> NDArray[Any]:
    """All arrays as one contiguous float32 vector, in insertion order."""
    if not arrays:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in arrays.values()])


def to_record(arrays: Mapping[str, NDArray[np.float32]]) -> ArrayRecord:
    """float32 arrays into a packed ArrayRecord (insertion order kept)."""
    return pack(layout_of(arrays), _flat_array(arrays))


def _flat_array(arrays: Mapping[str, NDArray[np.float32]]) -> Array:
    """``Array(flat(arrays))`` byte for byte (np.save's format, as Flower writes it), written
    tensor by tensor into the one buffer the Array keeps: ``flat`` beside it was another 400 MB
    each time the server packs a SmolVLA global."""
    size = sum(int(np.size(value)) for value in arrays.values())
    header = {"descr": np.dtype(np.float32).str, "fortran_order": False, "shape": (size,)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)  # type: ignore[no-untyped-call]  # untyped in numpy
    for value in arrays.values():
        buffer.write(np.ascontiguousarray(value, dtype=np.float32).data)
    return Array(dtype="float32", shape=(size,), stype=SType.NUMPY, data=buffer.getvalue())


def from_record(record: ArrayRecord) -> dict[str, NDArray[np.float32]]:
    """The float32 arrays of a packed record; PackingError if it is not one."""
    layout = read_layout(record)
    return split(decode_array(record[VALUES]), layout)


def read_layout(record: ArrayRecord) -> Layout:
    if set(record.keys()) not in ({LAYOUT, VALUES}, {LAYOUT, VALUES, SCALES}):
        raise PackingError(f"expected the arrays '{LAYOUT}' and '{VALUES}', got {_few(sorted(record.keys()))}")
    try:
        entries = json.loads(bytes(record[LAYOUT].numpy().astype(np.uint8)).decode("utf-8"))
        return [(str(name), tuple(int(d) for d in shape)) for name, shape in entries]
    except (ValueError, TypeError) as exc:
        raise PackingError(f"unreadable layout ({exc})") from None


def split(values: NDArray[Any], layout: Layout) -> dict[str, NDArray[np.float32]]:
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


BF16_CHUNK = 1 << 16  # values rounded at once: the temporaries stay this small beside the result


def to_bf16_bits(values: NDArray[Any]) -> NDArray[Any]:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even, NaN kept NaN. In chunks:
    whole-array temporaries were ~3 GB for SmolVLA's 100M values (the server rounds every change)."""
    flat_values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    rounded = np.empty(flat_values.size, dtype=np.uint16)
    for start in range(0, flat_values.size, BF16_CHUNK):
        chunk = flat_values[start : start + BF16_CHUNK]
        bits = chunk.view(np.uint32)
        # uint32 wraps only for NaN bit patterns, which are replaced
        nearest_even = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded[start : start + BF16_CHUNK] = np.where(np.isnan(chunk), 0x7FC0, nearest_even)
    return rounded.reshape(np.shape(values))


def from_bf16_bits(bits: NDArray[Any], out: NDArray[np.float32] | None = None) -> NDArray[Any]:
    """bfloat16 bit patterns -> float32, built in the one float32 buffer it returns (``out`` when
    given): widening and shifting in place leaves no full-size uint32 temporaries (a SmolVLA
    update: 400 MB each)."""
    values = np.empty(np.shape(bits), dtype=np.float32) if out is None else out
    widened = values.view(np.uint32)
    widened[...] = bits  # uint16 -> uint32 element by element, through numpy's small cast buffer
    widened <<= 16
    return values


def decode_array(array: Array) -> NDArray[Any]:
    """float32 view of a float32 numpy Array or a raw bfloat16 Array."""
    if array.stype == RAW_STYPE and array.dtype == "bfloat16":
        bits = np.frombuffer(array.data, dtype="<u2").reshape(array.shape)
        return from_bf16_bits(bits)
    return np.asarray(array.numpy(), dtype=np.float32)


# ---------------------------------------------------------------- int8 blocks


def quantize_int8(values: NDArray[Any], block: int) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """Flat float32 -> (int8 values, one float32 scale per ``block`` values; the last block may be short)."""
    padded = np.zeros(-(-values.size // block) * block, dtype=np.float32)
    padded[: values.size] = values
    blocks = padded.reshape(-1, block)
    scales = (np.abs(blocks).max(axis=1) / INT8_LEVELS).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))[:, None]
    with np.errstate(invalid="ignore"):  # a NaN/Inf change makes its block's scale non-finite: refused there
        quantized = np.clip(np.nan_to_num(np.rint(blocks / safe)), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return quantized.ravel()[: values.size], scales


def dequantize_int8(quantized: NDArray[np.int8], scales: NDArray[np.float32], block: int) -> NDArray[np.float32]:
    """int8 values times their block's scale, in the one float32 buffer returned (no repeated scales)."""
    values = quantized.astype(np.float32)
    scales = scales.astype(np.float32, copy=False)  # a float64 scale would round the products differently
    whole = values.size - values.size % block  # values in full blocks; the rest is the short last block
    blocks = values[:whole].reshape(-1, block)  # a view: multiplied in place
    with np.errstate(invalid="ignore"):  # a non-finite scale decodes to NaN, refused by the finite check
        blocks *= scales[: whole // block, None]
        values[whole:] *= scales[whole // block :]
    return values


# ---------------------------------------------------------------- changes (deltas)


def encode_delta(delta: NDArray[Any], encoding: str, block: int) -> tuple[dict[str, Array], NDArray[np.float32]]:
    """A flat float32 change on the wire: (its arrays, ``values`` and for int8 ``scales``; the
    change exactly as the receiver decodes it, for error feedback and the server's own copy)."""
    encoder = DeltaEncoder(delta.size, encoding, block)
    decoded = encoder.encode(0, np.ravel(delta))
    return encoder.arrays(), decoded


class DeltaEncoder:
    """One change encoded into its wire arrays a piece at a time, in order, every piece but the
    last a whole number of int8 blocks: the same arrays as encoding it whole, without the whole
    change and its decoded copy in float32 (800 MB at SmolVLA's size, each time the server
    publishes a global)."""

    def __init__(self, size: int, encoding: str, block: int) -> None:
        if encoding not in DELTA_ENCODINGS:
            raise ValueError(f"{encoding!r} is not a delta encoding (one of {', '.join(DELTA_ENCODINGS)})")
        self.encoding, self.block = encoding, block
        self._values = np.empty(size, dtype="<u2" if encoding == BF16_DELTA else np.int8)
        self._scales = np.empty(-(-size // block), dtype=np.float32)  # int8 only

    def encode(self, start: int, piece: NDArray[Any]) -> NDArray[np.float32]:
        """Encode the change's values from ``start``; return them as the receiver decodes them."""
        end = start + piece.size
        if self.encoding == BF16_DELTA:
            bits = to_bf16_bits(piece)
            self._values[start:end] = bits
            return from_bf16_bits(bits)
        if start % self.block:
            raise ValueError(f"an int8 piece must start on a block boundary, not at {start}")
        quantized, scales = quantize_int8(piece, self.block)
        self._values[start:end] = quantized
        self._scales[start // self.block : start // self.block + scales.size] = scales
        return dequantize_int8(quantized, scales, self.block)

    def arrays(self) -> dict[str, Array]:
        if self.encoding == BF16_DELTA:
            return {VALUES: raw_bf16(self._values)}
        return {VALUES: Array(self._values), SCALES: Array(self._scales)}


def decode_steps(record: ArrayRecord, encoding: str, block: int, size: int) -> list[NDArray[np.float32]]:
    """The changes of a packed delta record, each ``size`` values: several when a node that
    missed rounds gets the chain of changes since the global it holds. PackingError if malformed."""
    wire = record[VALUES]
    if wire.dtype != WIRE_DTYPE[encoding]:
        raise PackingError(f"wrong dtype for {VALUES}: {wire.dtype}, expected {WIRE_DTYPE[encoding]}")
    values = decode_array(wire) if encoding == BF16_DELTA else np.asarray(wire.numpy()).ravel()
    if size == 0 or values.size % size:
        raise PackingError(f"payload has {values.size} values, not a whole number of changes of {size}")
    steps = values.reshape(-1, size)
    if encoding == BF16_DELTA:
        return list(steps)
    if SCALES not in record.keys():
        raise PackingError(f"an {INT8_DELTA} record needs the array '{SCALES}'")
    scales = np.asarray(record[SCALES].numpy(), dtype=np.float32).ravel()
    per_step = -(-size // block)
    if scales.size != per_step * len(steps) or (scales < 0).any():  # NaN/Inf ones: named per tensor later
        raise PackingError(f"'{SCALES}' needs {per_step * len(steps)} non-negative block scales")
    return [
        dequantize_int8(step.astype(np.int8), scales[i * per_step : (i + 1) * per_step], block)
        for i, step in enumerate(steps)
    ]


def join_steps(encoded: list[dict[str, Array]], encoding: str) -> tuple[Array, Array | None]:
    """Several encoded changes as one ``values`` (and ``scales``) array, in order. One change is
    its own arrays, shared, not copied: a steady round's message (~200 MB at SmolVLA's size)."""
    if len(encoded) == 1:
        return encoded[0][VALUES], encoded[0].get(SCALES)
    if encoding == BF16_DELTA:
        bits = [np.frombuffer(step[VALUES].data, dtype="<u2") for step in encoded]
        return raw_bf16(np.concatenate(bits) if bits else np.zeros(0, "<u2")), None
    values = [step[VALUES].numpy() for step in encoded]
    scales = [step[SCALES].numpy() for step in encoded]
    return (
        Array(np.concatenate(values) if values else np.zeros(0, np.int8)),
        Array(np.concatenate(scales) if scales else np.zeros(0, np.float32)),
    )


def raw_bf16(bits: NDArray[Any]) -> Array:
    """bfloat16 bit patterns as the raw little-endian Array the wire carries."""
    data = np.ascontiguousarray(bits, dtype="<u2")
    return Array(dtype="bfloat16", shape=(int(data.size),), stype=RAW_STYPE, data=data.tobytes())


# ---------------------------------------------------------------- updates


def encode_update(
    local: Mapping[str, NDArray[np.float32]],
    global_: Mapping[str, NDArray[np.float32]],
    encoding: str,
    block: int = 256,
) -> ArrayRecord:
    """A client's update without error feedback (:class:`zk0cli.fl.wire.NodeWire` adds it)."""
    if encoding == FP32:
        return to_record(local)
    arrays, _ = encode_delta(flat(local) - flat({name: global_[name] for name in local}), encoding, block)
    return pack(layout_of(local), arrays[VALUES], arrays.get(SCALES))


PIECE = 1 << 18  # values of a change decoded at once: one reused 1 MiB float32 buffer, cache-sized


@dataclass(frozen=True)
class WireChange:
    """An update's change to the global weights, read from its wire values a piece at a time: the
    server never makes a full-size float32 copy of a reply (400 MB at SmolVLA's size), and each
    pass over it (the check, then the fold) stays in the CPU's cache."""

    layout: Layout
    encoding: str
    values: NDArray[Any]  # flat, as on the wire: bf16 bits (uint16), int8, or fp32 weights
    global_: Mapping[str, NDArray[np.float32]]  # what an fp32 update's change is measured from
    scales: NDArray[np.float32] | None = None  # int8 block scales
    block: int = 256
    factor: float = 1.0  # clipping scales the change

    def pieces(self) -> Iterator[tuple[str, int, int, NDArray[np.float32]]]:
        """(tensor name, lo, hi, the change in that tensor's flat values [lo:hi]), in layout
        order. Every piece is the same buffer, the caller's to change, valid until the next."""
        buffer = np.empty(PIECE, dtype=np.float32)
        offset = 0
        for name, shape in self.layout:
            size = math.prod(shape)
            for lo in range(0, size, PIECE):
                hi = min(size, lo + PIECE)
                piece = buffer[: hi - lo]
                self._decode(offset + lo, offset + hi, piece)
                if self.encoding == FP32:
                    piece -= self.global_[name].reshape(-1)[lo:hi]
                if self.factor != 1.0:
                    piece *= np.float32(self.factor)
                yield name, lo, hi, piece
            offset += size

    def scaled(self, factor: float) -> WireChange:
        return replace(self, factor=self.factor * factor)

    def weights(self) -> dict[str, NDArray[np.float32]]:
        """global + change, full size: the weights the node sent (the server's fold never makes them)."""
        if self.encoding == FP32 and self.factor == 1.0:
            return split(self.values.astype(np.float32), self.layout)  # exactly what was sent
        weights = {name: np.array(self.global_[name], dtype=np.float32) for name, _ in self.layout}
        for name, lo, hi, piece in self.pieces():
            weights[name].reshape(-1)[lo:hi] += piece
        return weights

    def _decode(self, start: int, end: int, out: NDArray[np.float32]) -> None:
        if self.encoding == BF16_DELTA:
            from_bf16_bits(self.values[start:end], out)
        elif self.encoding == INT8_DELTA:
            assert self.scales is not None
            with np.errstate(invalid="ignore"):  # a non-finite scale decodes to NaN, refused by the check
                np.multiply(self.values[start:end], self.scales[np.arange(start, end) // self.block], out=out)
        else:
            out[...] = self.values[start:end]


@dataclass(frozen=True)
class CheckedUpdate:
    change: WireChange | None  # the update's change to the global, when accepted
    reason: str  # why it was rejected; "" when accepted
    change_norm: float = 0.0  # L2 norm of that change, when accepted


def check_update(
    record: ArrayRecord,
    claimed_digest: str,
    spec: ArraySpec,
    encoding: str,
    global_: Mapping[str, NDArray[np.float32]],
    block: int = 256,
) -> CheckedUpdate:
    """Verify one client update, or say why it is rejected: digest, names, shapes, dtype, then one
    pass over its decoded change for NaN/Inf (named per tensor) and the change's norm."""
    if encoding not in ENCODINGS:
        return CheckedUpdate(None, f"unknown wire encoding {encoding!r}")
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
        change = _wire_change(record, layout, encoding, global_, block)
    except (ValueError, TypeError) as exc:
        return CheckedUpdate(None, f"undecodable {VALUES}: {exc}")
    squares = 0.0
    for name, _, _, piece in change.pieces():
        square = sum_of_squares(piece)
        if not math.isfinite(square):
            return CheckedUpdate(None, f"non-finite values (NaN/Inf) in {name}")
        squares += square
    return CheckedUpdate(change, "", math.sqrt(squares))


def _wire_change(
    record: ArrayRecord, layout: Layout, encoding: str, global_: Mapping[str, NDArray[np.float32]], block: int
) -> WireChange:
    """The record's values as one change of the layout's size (PackingError if they are not)."""
    wire = record[VALUES]
    if encoding == BF16_DELTA:
        if wire.stype != RAW_STYPE:
            raise PackingError(f"bfloat16 values must be raw ({RAW_STYPE}), got {wire.stype!r}")
        values = np.frombuffer(wire.data, dtype="<u2")
    else:
        values = np.asarray(wire.numpy()).reshape(-1)
        if values.dtype != np.dtype(WIRE_DTYPE[encoding]):  # the bytes, not the label: a peer can lie
            raise PackingError(f"the bytes hold {values.dtype}, the array says {wire.dtype}")
    size = sum(math.prod(shape) for _, shape in layout)
    if values.size != size:
        raise PackingError(f"payload has {values.size} values, the layout needs {size}")
    if encoding != INT8_DELTA:
        return WireChange(layout, encoding, values, global_)
    if SCALES not in record.keys():
        raise PackingError(f"an {INT8_DELTA} record needs the array '{SCALES}'")
    scales = np.asarray(record[SCALES].numpy(), dtype=np.float32).reshape(-1)
    if scales.size != -(-size // block) or (scales < 0).any():  # NaN/Inf ones: named per tensor by the check
        raise PackingError(f"'{SCALES}' needs {-(-size // block)} non-negative block scales")
    return WireChange(layout, encoding, values, global_, scales, block)


def sum_of_squares(values: NDArray[np.float32]) -> float:
    """Of a float32 piece, NaN or Inf anywhere making it non-finite: float32 BLAS (4x faster than
    a float64 sum), again in float64 when that overflows, so a finite change is never refused."""
    flat_values = values.reshape(-1)
    square = float(np.dot(flat_values, flat_values))
    if not math.isfinite(square):
        square = float(np.einsum("i,i->", flat_values, flat_values, dtype=np.float64))
    return square


def _few(names: list[str], limit: int = 3) -> str:
    if not names:
        return "none"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
