"""Token-weighted, staged mixtures over per-source shards, as a pure function of the stream position.

Each stage has per-source weights in tokens and a token budget (the last stage may be open-ended and
keeps its mixture past its budget). Within a stage, positions run in blocks of `block` rows whose
slots are given to sources in proportion to their weights and spread evenly over the block, so any
prefix is within one row per source of the target ratio. A source's k-th row is row k of its own
epoch permutation (wrapping = upsampling, stopping early = downsampling); with shuffle off
(curriculum order) it is simply its k-th stored row. Because everything is computed from the global
position, resuming needs only the consumed-rows counter: O(1), never a replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_prep.errors import DataError
from data_prep.sampler import RowSampler

BLOCK = 10_000


@dataclass
class _Stage:
    start: int
    rows: int | None
    counts: np.ndarray
    slot_source: np.ndarray
    slot_rank: np.ndarray
    before: np.ndarray
    """Rows each source gave in earlier stages."""


def _slots(weights: np.ndarray, block: int) -> np.ndarray:
    """Largest-remainder split of `block` slots in proportion to `weights`."""
    raw = weights / weights.sum() * block
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[: block - counts.sum()]] += 1
    return counts


class MixtureSampler:
    """Stream position -> global row id for staged, token-weighted mixtures of sources."""

    def __init__(
        self,
        source_rows: Sequence[int],
        stages: Sequence[tuple[int | None, Sequence[float]]],
        seed: int,
        shuffle: bool = True,
        block: int = BLOCK,
    ):
        self.sizes = np.asarray(source_rows, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.seed, self.shuffle, self.block = seed, shuffle, block
        self._stages: list[_Stage] = []
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        start, before = 0, np.zeros(len(self.sizes), dtype=np.int64)
        for rows, weights in stages:
            weights = np.asarray(weights, dtype=np.float64)
            counts = _slots(weights, block)
            if np.any((weights > 0) & (counts == 0)):
                raise DataError(
                    f"a mixture weight is below 1/{block} of its stage: raise it or drop the source"
                )
            src = np.repeat(np.arange(len(counts)), counts)
            rank = np.concatenate([np.arange(c) for c in counts])
            order = np.lexsort((src, (rank + 0.5) / counts[src]))  # spread each source evenly
            stage = _Stage(start, rows, counts, src[order], rank[order], before.copy())
            self._stages.append(stage)
            if rows is not None:
                before = before + self._taken(stage, rows)
                start += rows

    def _taken(self, stage: _Stage, t: int) -> np.ndarray:
        full, part = divmod(t, self.block)
        return full * stage.counts + np.bincount(stage.slot_source[:part], minlength=len(self.sizes))

    def _stage_of(self, g: int) -> _Stage:
        for stage in reversed(self._stages):
            if g >= stage.start:
                return stage
        raise AssertionError("stage 0 starts at 0")

    def consumed_per_source(self, position: int) -> list[int]:
        """Rows each source has given before stream `position` (for logs and checkpoints)."""
        stage = self._stage_of(position)
        return (stage.before + self._taken(stage, position - stage.start)).tolist()

    def _row_in_source(self, source: int, n: int) -> int:
        epoch, offset = divmod(n, int(self.sizes[source]))
        if not self.shuffle:
            return offset
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.sizes):  # keep only recent epochs
                self._perms.clear()
            self._perms[key] = np.random.default_rng([self.seed, source, epoch]).permutation(
                self.sizes[source]
            )
        return int(self._perms[key][offset])

    def rows(self, start: int, count: int) -> np.ndarray:
        """Global row ids at stream positions [start, start + count)."""
        out = np.empty(count, dtype=np.int64)
        for i, g in enumerate(range(start, start + count)):
            stage = self._stage_of(g)
            b, o = divmod(g - stage.start, self.block)
            src = int(stage.slot_source[o])
            n = int(stage.before[src] + b * stage.counts[src] + stage.slot_rank[o])
            out[i] = self.offsets[src] + self._row_in_source(src, n)
        return out


def make_sampler(data, data_cfg, seed: int):
    """The sampler for a prepared MixedRows: plain shuffled rows, or a mixture when weights or stages are set.

    `data_cfg` needs `shuffle`, `sources` (with optional `weight`) and optional `stages`
    (each with `tokens` and `weights`: source label -> token weight)."""
    stages = getattr(data_cfg, "stages", None) or []
    source_weights = [getattr(s, "weight", None) for s in data_cfg.sources]
    if not stages and all(w is None for w in source_weights):
        return RowSampler(len(data), seed, data_cfg.shuffle)
    if not stages:
        stages = [_OpenStage({label: w for label, w in zip(data.source_labels, source_weights, strict=True)})]
    tpr = np.asarray([s.tokens_per_row for s in data.shards])
    plan = []
    for stage in stages:
        unknown = set(stage.weights) - set(data.source_labels)
        if unknown:
            raise DataError(
                f"stage weights name unknown sources {sorted(unknown)}; sources: {data.source_labels}"
            )
        tokens = np.asarray([stage.weights.get(label, 0.0) for label in data.source_labels], dtype=np.float64)
        row_weights = tokens / tpr  # weights are in tokens; rows of SFT shards hold fewer real tokens
        probs = row_weights / row_weights.sum()
        rows = None if stage.tokens is None else max(1, round(stage.tokens / float(probs @ tpr)))
        plan.append((rows, row_weights))
    return MixtureSampler([len(s) for s in data.shards], plan, seed, data_cfg.shuffle)


@dataclass
class _OpenStage:
    weights: dict[str, float]
    tokens: int | None = None
