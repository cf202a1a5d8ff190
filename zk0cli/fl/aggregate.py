"""How a round's accepted updates become the next global weights.

``mean`` (default, FedProx's sample-weighted average) folds each update into one running sum as
its reply arrives: server memory does not grow with the number of nodes. ``trimmed-mean`` and
``median`` need every update: they are spilled to disk and aggregated tensor by tensor.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

CHUNK = 1 << 16  # elements per multiply: 512 KiB of float64 beside the sums, whatever the tensor's size


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


ROBUST_RULES = ("trimmed-mean", "median")


class SpilledUpdates:
    """Order statistics need every update: each accepted one is written to a float32 memmap file
    in ``spill_dir`` as it arrives, and the aggregate is taken tensor by tensor with Flower's own
    functions (``aggregate_median``, ``aggregate_trimmed_avg``), so memory holds the nodes' values
    of one tensor at a time, never the nodes' models. Unweighted, as Flower's rules are."""

    def __init__(self, spill_dir: Path, rule: str, trim_fraction: float = 0.0) -> None:
        if rule not in ROBUST_RULES:
            raise ValueError(f"unknown rule {rule!r}")
        self.spill_dir, self.rule, self.trim_fraction = spill_dir, rule, trim_fraction
        self._layout: list[tuple[str, tuple[int, ...]]] = []
        self._files: list[Path] = []
        self.count = 0

    def add(self, arrays: Mapping[str, NDArray[np.float32]], weight: float) -> None:
        del weight  # Flower's median and trimmed mean weigh every node alike
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
        from flwr.server.strategy.aggregate import aggregate_median, aggregate_trimmed_avg

        if not self.count:
            raise ValueError("no update was folded in")
        updates = [np.memmap(path, dtype=np.float32, mode="r", shape=(self._size(),)) for path in self._files]
        averaged, offset = {}, 0
        try:
            for name, shape in self._layout:
                size = math.prod(shape)
                layer = [([np.array(update[offset : offset + size])], 1) for update in updates]
                if self.rule == "median":
                    (value,) = aggregate_median(layer)
                else:
                    (value,) = aggregate_trimmed_avg(layer, proportiontocut=self.trim_fraction)
                averaged[name] = np.asarray(value, dtype=np.float32).reshape(shape)
                offset += size
        finally:
            del updates
            shutil.rmtree(self.spill_dir, ignore_errors=True)
        return averaged

    def _size(self) -> int:
        return sum(math.prod(shape) for _, shape in self._layout)
