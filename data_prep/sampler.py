"""Deterministic sampling order over packed rows, resumable in O(1) from a single counter.

The order is a function of (seed, epoch) only, so the position in the stream (`consumed`,
the number of rows handed out so far, summed over all ranks) is the whole sampler state:
resuming never replays or re-reads data.
"""

from __future__ import annotations

import numpy as np


class RowSampler:
    def __init__(self, num_rows: int, seed: int, shuffle: bool = True):
        if num_rows <= 0:
            raise ValueError("RowSampler needs at least one row")
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self._epoch, self._order = -1, np.arange(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(self.num_rows) if self.shuffle else np.arange(self.num_rows)
            self._epoch = epoch
        return self._order

    def rows(self, start: int, count: int) -> np.ndarray:
        """Row ids at global stream positions [start, start + count), crossing epochs as needed."""
        out = np.empty(count, dtype=np.int64)
        for i, g in enumerate(range(start, start + count)):
            epoch, offset = divmod(g, self.num_rows)
            out[i] = self._epoch_order(epoch)[offset]
        return out
