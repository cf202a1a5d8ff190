"""Sample-weighted averaging that folds each update in as its reply arrives.

A round keeps one running sum (float64, the precision the average always had) and the one reply
being folded, whatever the number of nodes: server memory no longer grows with the federation.
"""

from __future__ import annotations

from collections.abc import Mapping

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
