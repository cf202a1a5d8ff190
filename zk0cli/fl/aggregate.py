"""How a round's accepted updates become the next global weights.

``mean`` (default, FedProx's sample-weighted average) folds each update into one running sum as
its reply arrives: server memory does not grow with the number of nodes. ``trimmed-mean``,
``median``, ``krum`` and ``multi-krum`` need every update: they are spilled to disk and
aggregated piece by piece, and each update's cosine to the aggregate's change is measured.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

CHUNK = 1 << 16  # elements per multiply: 512 KiB of float64 beside the sums, whatever the tensor's size
PIECE_ELEMENTS = 1 << 20  # values of all nodes read from the spill at once by a robust rule (4 MiB)


class RunningMean:
    """sum(weight_i * arrays_i) / sum(weight_i), tensor by tensor, without keeping any arrays_i."""

    def __init__(self) -> None:
        self._sums: dict[str, NDArray[np.float64]] = {}
        self.total_weight = 0.0
        self.count = 0
        self._taken = False

    def add(self, arrays: Mapping[str, NDArray[np.float32]], weight: float) -> None:
        """Fold one update in; its arrays may be dropped as soon as this returns."""
        self._check_not_taken()
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight}")
        if not self._sums:
            self._sums = {name: np.zeros(np.shape(value), dtype=np.float64) for name, value in arrays.items()}
        elif arrays.keys() != self._sums.keys():
            raise ValueError("an update's tensors differ from the first update's")
        for name, value in arrays.items():
            total, values = self._sums[name].reshape(-1), np.asarray(value).reshape(-1)
            for start in range(0, values.size, CHUNK):  # a float64 temporary of CHUNK elements at most
                end = start + CHUNK
                total[start:end] += np.multiply(values[start:end], weight, dtype=np.float64)
        self.total_weight += weight
        self.count += 1

    def result(self) -> dict[str, NDArray[np.float32]]:
        """The average, taken once (a round's mean): each float64 sum is released as its float32
        average is made, so the peak stays at the sums' size."""
        self._check_not_taken()
        if not self.count:
            raise ValueError("no update was folded in")
        self._taken = True
        averaged = {}
        for name in list(self._sums):
            total = self._sums.pop(name)
            total /= self.total_weight
            averaged[name] = total.astype(np.float32)
        return averaged

    def _check_not_taken(self) -> None:
        if self._taken:
            raise ValueError("this mean was taken already: a new round starts a new RunningMean")


ROBUST_RULES = ("trimmed-mean", "median", "krum", "multi-krum")


class SpilledUpdates:
    """Robust rules need every update: each accepted one is written to a float32 memmap file in
    ``spill_dir`` as it arrives, and the aggregate is taken piece by piece (a slice of one tensor
    across all nodes, :meth:`_pieces`), so memory holds a fixed number of values, never the
    nodes' models: beyond the result, it does not grow with the number of nodes.

    - ``median``, ``trimmed-mean``: Flower's ``aggregate_median`` / ``aggregate_trimmed_avg`` per
      tensor, unweighted as Flower's are.
    - ``krum``, ``multi-krum``: Flower's Krum rule (each update scored by the squared distances to
      its n - f - 2 nearest others; krum keeps the best, multi-krum averages the n - f best by
      samples, as Flower's ``aggregate_krum``). Flower's function flattens every model into one
      matrix, so the distance matrix is summed here piece by piece instead, with its
      ``_compute_distances``; the scoring is Flower's, written for that matrix.

    After :meth:`result`, ``cosines[i]`` is update i's change against the aggregate's change and
    ``excluded`` the updates krum / multi-krum left out."""

    def __init__(
        self,
        spill_dir: Path,
        rule: str,
        trim_fraction: float = 0.0,
        *,
        byzantine_nodes: int = 0,
        reference: Mapping[str, NDArray[np.float32]] | None = None,
    ) -> None:
        if rule not in ROBUST_RULES:
            raise ValueError(f"unknown rule {rule!r}")
        self.spill_dir, self.rule, self.trim_fraction = spill_dir, rule, trim_fraction
        self.byzantine_nodes = byzantine_nodes
        self.reference = reference  # the round's global: changes are measured from it
        self._layout: list[tuple[str, tuple[int, ...]]] = []
        self._files: list[Path] = []
        self._weights: list[float] = []
        self.count = 0
        self.cosines: list[float | None] = []
        self.excluded: list[int] = []

    def add(self, arrays: Mapping[str, NDArray[np.float32]], weight: float) -> None:
        self._weights.append(weight)  # used by multi-krum only: Flower's median and trimmed mean weigh nodes alike
        if not self._layout:
            self._layout = [(name, tuple(np.shape(value))) for name, value in arrays.items()]
            self.spill_dir.mkdir(parents=True, exist_ok=True)
        elif [name for name, _ in self._layout] != list(arrays):
            raise ValueError("an update's tensors differ from the first update's")
        path = self.spill_dir / f"update-{self.count}.f32"
        spilled = np.memmap(path, dtype=np.float32, mode="w+", shape=(self._size(),))
        offset = 0
        for name, shape in self._layout:
            size = math.prod(shape)
            spilled[offset : offset + size] = np.asarray(arrays[name], dtype=np.float32).ravel()
            offset += size
        spilled.flush()
        del spilled
        self._files.append(path)
        self.count += 1

    def result(self) -> dict[str, NDArray[np.float32]]:
        if not self.count:
            raise ValueError("no update was folded in")
        updates = [np.memmap(path, dtype=np.float32, mode="r", shape=(self._size(),)) for path in self._files]
        try:
            selected = self._krum_selection(updates) if self.rule in ("krum", "multi-krum") else None
            if selected is not None:
                self.excluded = [i for i in range(self.count) if i not in selected]
            averaged = {name: np.empty(shape, dtype=np.float32) for name, shape in self._layout}
            for name, lo, hi, piece in self._pieces(updates):
                averaged[name].reshape(-1)[lo:hi] = self._aggregate_piece(piece, selected)
            self.cosines = self._cosines_to(averaged, updates)
        finally:
            del updates
            shutil.rmtree(self.spill_dir, ignore_errors=True)
        return averaged

    def _pieces(self, updates: list[np.memmap[Any, Any]]) -> Iterator[tuple[str, int, int, list[NDArray[np.float32]]]]:
        """(tensor name, lo, hi, every update's flat values [lo:hi] of it): about
        PIECE_ELEMENTS values of all nodes together in memory, however many nodes and however
        large a tensor. Every rule here is per value or a sum over values, so pieces are exact."""
        step = max(1024, PIECE_ELEMENTS // max(1, self.count))
        offset = 0
        for name, shape in self._layout:
            size = math.prod(shape)
            for lo in range(0, size, step):
                hi = min(size, lo + step)
                yield name, lo, hi, [np.array(update[offset + lo : offset + hi]) for update in updates]
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

    def _krum_selection(self, updates: list[np.memmap[Any, Any]]) -> list[int]:
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

    def _cosines_to(
        self, averaged: Mapping[str, NDArray[np.float32]], updates: list[np.memmap[Any, Any]]
    ) -> list[float | None]:
        """Each update's change (update - reference) against the aggregate's, piece by piece."""
        if self.reference is None:
            return [None] * self.count
        dots, norms, aggregate_norm = np.zeros(self.count), np.zeros(self.count), 0.0
        for name, lo, hi, piece in self._pieces(updates):
            reference = np.asarray(self.reference[name]).reshape(-1)[lo:hi]
            step = np.subtract(averaged[name].reshape(-1)[lo:hi], reference, dtype=np.float64)
            aggregate_norm += float(step @ step)
            for i, values in enumerate(piece):
                change = np.subtract(values, reference, dtype=np.float64)
                dots[i] += float(change @ step)
                norms[i] += float(change @ change)
        scale = np.sqrt(norms * aggregate_norm)
        return [float(d / s) if s > 0 else None for d, s in zip(dots, scale, strict=True)]

    def _size(self) -> int:
        return sum(math.prod(shape) for _, shape in self._layout)
