"""How a round's accepted updates become the change to the next global weights.

Every rule works on the updates' changes (update - global), read from their wire values a piece
at a time (:class:`zk0cli.fl.integrity.WireChange`): mean, median, trimmed mean and the Krum
distances are all the same of weights and of changes, and a change needs no copy of the global.
``mean`` (default, FedProx's sample-weighted average) folds each change into one running sum as
its reply arrives: server memory does not grow with the number of nodes. ``trimmed-mean``,
``median``, ``krum`` and ``multi-krum`` need every update: they are spilled to disk and
aggregated piece by piece, and each update's cosine to the aggregate's change is measured.
The spill is written and read with plain file I/O, never mapped: mapped file pages count in the
server's resident memory, N updates of 400 MB each at SmolVLA's size.
"""

from __future__ import annotations

import io
import math
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from zk0cli.core.errors import env_not_ready
from zk0cli.fl.integrity import Layout, WireChange

PIECE_ELEMENTS = 1 << 20  # values of all nodes read from the spill at once by a robust rule (4 MiB)
VALUE_BYTES = 4  # the spill is float32


class RunningMean:
    """sum(weight_i * change_i) / sum(weight_i), without keeping any change_i. The sum is float32:
    changes arrive rounded to bf16 (or int8), so a float64 sum bought no accuracy the result
    keeps, and cost half the time of a fold and twice the memory (800 MB at SmolVLA's size)."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        # Written now, at the round's start while the nodes train: np.zeros' pages are faulted in
        # at the first write, which took ~0.2 s of the first reply's fold at SmolVLA's size.
        self._sums = {name: np.full(shape, 0.0, dtype=np.float32) for name, shape in layout}
        self.total_weight = 0.0
        self.count = 0
        self._taken = False

    def add(self, change: WireChange, weight: float) -> None:
        """Fold one change in, piece by piece: nothing of it is kept."""
        self._check_not_taken()
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight}")
        _check_same_layout(self._layout, change.layout)
        for name, lo, hi, piece in change.pieces():
            piece *= np.float32(weight)
            self._sums[name].reshape(-1)[lo:hi] += piece
        self.total_weight += weight
        self.count += 1

    def result(self) -> dict[str, NDArray[np.float32]]:
        """The mean change, taken once (a round's): its arrays are the sums', divided in place."""
        self._check_not_taken()
        if not self.count:
            raise ValueError("no update was folded in")
        self._taken = True
        averaged, self._sums = self._sums, {}
        for total in averaged.values():
            total /= np.float32(self.total_weight)
        return averaged

    def _check_not_taken(self) -> None:
        if self._taken:
            raise ValueError("this mean was taken already: a new round starts a new RunningMean")


def _check_same_layout(expected: Layout, layout: Layout) -> None:
    if layout != expected:  # both from layout_of or read_layout: names and tuple shapes
        raise ValueError("an update's tensors differ from the round's")


ROBUST_RULES = ("trimmed-mean", "median", "krum", "multi-krum")


class SpilledUpdates:
    """Robust rules need every update: each accepted one is written to a float32 file in
    ``spill_dir`` as it arrives, and the aggregate is taken piece by piece (a slice of one tensor
    across all nodes, :meth:`_pieces`, read into one reused buffer), so memory holds a fixed
    number of values, never the nodes' models: beyond the result, it does not grow with the
    number of nodes. Before an update is written, the disk must have room for it and for every
    update still ``expected`` this round; otherwise the round fails with what is needed.

    - ``median``, ``trimmed-mean``: Flower's ``aggregate_median`` / ``aggregate_trimmed_avg`` per
      tensor, unweighted as Flower's are.
    - ``krum``, ``multi-krum``: Flower's Krum rule (each update scored by the squared distances to
      its n - f - 2 nearest others; krum keeps the best, multi-krum averages the n - f best by
      samples, as Flower's ``aggregate_krum``). Flower's function flattens every model into one
      matrix, so the distance matrix is summed here piece by piece instead, with its
      ``_compute_distances``; the scoring is Flower's, written for that matrix.

    :meth:`result` is the aggregate change; after it, ``cosines[i]`` is update i's change against
    it and ``excluded`` the updates krum / multi-krum left out."""

    def __init__(
        self,
        spill_dir: Path,
        rule: str,
        trim_fraction: float = 0.0,
        *,
        byzantine_nodes: int = 0,
        expected: int = 1,
    ) -> None:
        if rule not in ROBUST_RULES:
            raise ValueError(f"unknown rule {rule!r}")
        self.spill_dir, self.rule, self.trim_fraction = spill_dir, rule, trim_fraction
        self.byzantine_nodes = byzantine_nodes
        self.expected = expected  # updates this round may spill (the nodes sampled)
        self._layout: Layout = []
        self._files: list[Path] = []
        self._weights: list[float] = []
        self.count = 0
        self.cosines: list[float | None] = []
        self.excluded: list[int] = []

    def add(self, change: WireChange, weight: float) -> None:
        self._weights.append(weight)  # used by multi-krum only: Flower's median and trimmed mean weigh nodes alike
        if not self._layout:
            self._layout = change.layout
            self.spill_dir.mkdir(parents=True, exist_ok=True)
        _check_same_layout(self._layout, change.layout)
        self._check_room()
        path = self.spill_dir / f"update-{self.count}.f32"
        with path.open("wb") as spilled:
            for _, _, _, piece in change.pieces():
                piece.tofile(spilled)
        self._files.append(path)
        self.count += 1

    def _check_room(self) -> None:
        """Room on disk for this update and the ones still expected, or the round fails here: a
        full disk mid-write would fail it later, having filled the disk for nothing."""
        needed = max(1, self.expected - self.count) * self._size() * VALUE_BYTES
        free = shutil.disk_usage(self.spill_dir).free
        if free < needed:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            raise env_not_ready(
                f"aggregation {self.rule} spills each update to {self.spill_dir}: {needed / 2**30:.1f} GiB "
                f"needed for {max(1, self.expected - self.count)} more, {free / 2**30:.1f} GiB free",
                hint="free disk space on the server, or use aggregation=mean (it spills nothing)",
            )

    def result(self) -> dict[str, NDArray[np.float32]]:
        if not self.count:
            raise ValueError("no update was folded in")
        updates = [path.open("rb", buffering=0) for path in self._files]
        try:
            selected = self._krum_selection(updates) if self.rule in ("krum", "multi-krum") else None
            if selected is not None:
                self.excluded = [i for i in range(self.count) if i not in selected]
            averaged = {name: np.empty(shape, dtype=np.float32) for name, shape in self._layout}
            for name, lo, hi, piece in self._pieces(updates):
                averaged[name].reshape(-1)[lo:hi] = self._aggregate_piece(piece, selected)
            self.cosines = self._cosines_to(averaged, updates)
        finally:
            for update in updates:
                update.close()
            shutil.rmtree(self.spill_dir, ignore_errors=True)
        return averaged

    def _pieces(self, updates: list[io.FileIO]) -> Iterator[tuple[str, int, int, list[NDArray[np.float32]]]]:
        """(tensor name, lo, hi, every update's flat values [lo:hi] of it): about
        PIECE_ELEMENTS values of all nodes together in memory, however many nodes and however
        large a tensor. Every rule here is per value or a sum over values, so pieces are exact.
        Each piece is read into the same buffer: it is valid until the next one is asked for."""
        step = max(1024, PIECE_ELEMENTS // max(1, self.count))
        buffer = np.empty((self.count, step), dtype=np.float32)
        offset = 0
        for name, shape in self._layout:
            size = math.prod(shape)
            for lo in range(0, size, step):
                hi = min(size, lo + step)
                piece = [row[: hi - lo] for row in buffer]
                for update, values in zip(updates, piece, strict=True):
                    _read_at(update, (offset + lo) * VALUE_BYTES, values)
                yield name, lo, hi, piece
            offset += size

    def _aggregate_piece(self, piece: list[NDArray[np.float32]], selected: list[int] | None) -> NDArray[np.float32]:
        from flwr.server.strategy.aggregate import aggregate, aggregate_median, aggregate_trimmed_avg

        if selected is not None:  # krum: the one best update; multi-krum: Flower's sample-weighted mean of the best
            (value,) = aggregate([([piece[i]], int(max(1, self._weights[i]))) for i in selected])
        elif self.rule == "median":
            (value,) = aggregate_median([([values], 1) for values in piece])
        else:
            (value,) = aggregate_trimmed_avg([([values], 1) for values in piece], proportiontocut=self.trim_fraction)
        return np.asarray(value, dtype=np.float32)

    def _krum_selection(self, updates: list[io.FileIO]) -> list[int]:
        """Indices Flower's Krum rule keeps: the best one (krum) or the n - f best (multi-krum)."""
        from flwr.server.strategy.aggregate import _compute_distances

        distances = np.zeros((self.count, self.count))
        for _, _, _, piece in self._pieces(updates):
            distances += _compute_distances([[values] for values in piece])  # squared L2, summed over pieces
        num_closest = max(1, self.count - self.byzantine_nodes - 2)
        scores = [float(np.sum(np.sort(row)[1 : num_closest + 1])) for row in distances]
        ranked = [int(i) for i in np.argsort(scores, kind="stable")]
        keep = 1 if self.rule == "krum" else max(1, self.count - self.byzantine_nodes)
        return sorted(ranked[:keep])

    def _cosines_to(self, averaged: Mapping[str, NDArray[np.float32]], updates: list[io.FileIO]) -> list[float | None]:
        """Each update's change against the aggregate's, piece by piece (None for a zero change)."""
        dots, norms, aggregate_norm = np.zeros(self.count), np.zeros(self.count), 0.0
        for name, lo, hi, piece in self._pieces(updates):
            step = averaged[name].reshape(-1)[lo:hi].astype(np.float64)
            aggregate_norm += float(step @ step)
            for i, change in enumerate(piece):
                dots[i] += float(change @ step)
                norms[i] += float(change.astype(np.float64) @ change)
        scale = np.sqrt(norms * aggregate_norm)
        return [float(d / s) if s > 0 else None for d, s in zip(dots, scale, strict=True)]

    def _size(self) -> int:
        return sum(math.prod(shape) for _, shape in self._layout)


def _read_at(spilled: io.FileIO, position: int, values: NDArray[np.float32]) -> None:
    """Fill ``values`` from the file at byte ``position`` (the spill is always long enough)."""
    spilled.seek(position)
    if spilled.readinto(values) != values.nbytes:
        raise OSError(f"{spilled.name}: the spilled update ends early")
