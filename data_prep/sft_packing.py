"""Pack tokenized SFT samples into `seq_len` rows without ever splitting a sample across rows.

best_fit: each sample goes into the open row with the least room that still fits it; when too many
rows are open the fullest is written (streaming, memory bounded). pad: one sample per row.
Rows are filled up with pad tokens (labels -100, positions restarting, so padding is its own
segment). position_ids restart at every sample, so packed and unpacked training see the same
attention and loss. Over-long samples follow `overlong`: drop, truncate or split; all counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

IGNORE = -100
Row = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class SftStats:
    samples: int = 0
    rows: int = 0
    tokens: int = 0
    """Sample tokens written (not padding)."""
    target_tokens: int = 0
    pad_tokens: int = 0
    overlong_samples: int = 0
    dropped_samples: int = 0
    """Over-long samples dropped, plus samples left without any target token."""
    truncated_tokens: int = 0
    dropped_pieces: int = 0
    """`overlong: split` pieces dropped for holding no target token (a sample left with none is also
    counted in dropped_samples)."""
    dropped_piece_tokens: int = 0
    split_lost_targets: int = 0
    """`overlong: split`: targets at the start of a later piece, unpredictable there (their context is in the
    piece before)."""

    def as_dict(self) -> dict:
        return asdict(self)


class SftPacker:
    """Streams (input_ids, labels) samples in, yields (input_ids, position_ids, labels) rows."""

    def __init__(
        self, seq_len: int, pad_id: int, mode: str = "best_fit", overlong: str = "drop", open_rows: int = 64
    ):
        self.seq_len, self.pad_id, self.mode, self.overlong = seq_len, pad_id, mode, overlong
        self.open_rows = open_rows if mode == "best_fit" else 1
        self.stats = SftStats()
        self._rows: list[list[tuple[list[int], list[int]]]] = []  # open rows, each a list of samples
        self._used: list[int] = []

    def _pieces(self, ids: list[int], labels: list[int]) -> list[tuple[list[int], list[int]]]:
        if len(ids) <= self.seq_len:
            return [(ids, labels)]
        self.stats.overlong_samples += 1
        if self.overlong == "drop":
            return []
        if self.overlong == "truncate":
            self.stats.truncated_tokens += len(ids) - self.seq_len
            return [(ids[: self.seq_len], labels[: self.seq_len])]
        n = self.seq_len
        return [(ids[i : i + n], labels[i : i + n]) for i in range(0, len(ids), n)]

    def add(self, ids: list[int], labels: list[int]) -> Iterator[Row]:
        """Place one sample (labels aligned with ids); yield the rows that were closed."""
        self.stats.samples += 1
        raw = self._pieces(ids, labels)
        self.stats.split_lost_targets += sum(lab[0] != IGNORE for _, lab in raw[1:])
        pieces = [(i, [IGNORE, *lab[1:]]) for i, lab in raw]  # a start is never a target
        kept = [p for p in pieces if any(t != IGNORE for t in p[1])]
        if len(pieces) > 1:  # a split sample: its pieces without a target are dropped, and counted
            self.stats.dropped_pieces += len(pieces) - len(kept)
            self.stats.dropped_piece_tokens += sum(len(p[0]) for p in pieces) - sum(len(p[0]) for p in kept)
        pieces = kept
        if not pieces:
            self.stats.dropped_samples += 1
            return
        for piece in pieces:
            n = len(piece[0])
            fits = [
                k for k, used in enumerate(self._used) if used + n <= self.seq_len and self.mode == "best_fit"
            ]
            if fits:
                k = max(fits, key=lambda k: self._used[k])  # least room left that still fits
            else:
                if len(self._rows) >= self.open_rows:
                    yield self._close(max(range(len(self._rows)), key=lambda k: self._used[k]))
                self._rows.append([])
                self._used.append(0)
                k = len(self._rows) - 1
            self._rows[k].append(piece)
            self._used[k] += n

    def finish(self) -> Iterator[Row]:
        """Write the rows still open, in the order they were opened."""
        while self._rows:
            yield self._close(0)

    def _close(self, k: int) -> Row:
        samples = self._rows.pop(k)
        self._used.pop(k)
        ids, pos, labels = [], [], []
        for s_ids, s_labels in samples:
            ids += s_ids
            pos += range(len(s_ids))
            labels += s_labels
        pad = self.seq_len - len(ids)
        self.stats.rows += 1
        self.stats.tokens += len(ids)
        self.stats.target_tokens += sum(t != IGNORE for t in labels)
        self.stats.pad_tokens += pad
        return (
            np.asarray(ids + [self.pad_id] * pad, dtype=np.uint32),
            np.asarray(pos + list(range(pad)), dtype=np.uint32),
            np.asarray(labels + [IGNORE] * pad, dtype=np.int32),
        )
