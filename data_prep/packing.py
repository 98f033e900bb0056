"""Pack tokenized documents into fixed-length rows for causal LM pretraining.

Each document becomes BOS + tokens + EOS. Documents are concatenated and cut into `seq_len`
rows; `position_ids` restart at every document start, so attention stays inside documents
(transformers builds the per-document mask from them) and the loss never predicts a BOS
from the previous document. A last, incomplete row is not emitted and its tokens are counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PackStats:
    documents: int = 0
    empty_documents: int = 0
    tokens: int = 0
    rows: int = 0
    dropped_tail_tokens: int = 0
    extra: dict = field(default_factory=dict)


class CptPacker:
    """Streams documents in, yields (input_ids, position_ids) rows of exactly `seq_len` tokens."""

    def __init__(self, seq_len: int, bos_id: int, eos_id: int):
        self.seq_len, self.bos_id, self.eos_id = seq_len, bos_id, eos_id
        self.stats = PackStats()
        self._ids: list[int] = []
        self._pos: list[int] = []

    def add(self, token_ids: list[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Append one document's tokens (without special tokens); yield every row that became full."""
        self.stats.documents += 1
        if not token_ids:
            self.stats.empty_documents += 1
            return
        doc = [self.bos_id, *token_ids, self.eos_id]
        self.stats.tokens += len(doc)
        self._ids.extend(doc)
        self._pos.extend(range(len(doc)))
        while len(self._ids) >= self.seq_len:
            ids, pos = self._ids[: self.seq_len], self._pos[: self.seq_len]
            del self._ids[: self.seq_len], self._pos[: self.seq_len]
            if self._pos and self._pos[0] != 0:  # a document continues into the next row: restart there
                first = self._pos[0]
                cut = next((i for i, p in enumerate(self._pos) if p == 0), len(self._pos))
                self._pos[:cut] = [p - first for p in self._pos[:cut]]
            self.stats.rows += 1
            yield np.asarray(ids, dtype=np.uint32), np.asarray(pos, dtype=np.uint32)

    def finish(self) -> None:
        """Count the tokens of the incomplete last row (they are not trained on)."""
        self.stats.dropped_tail_tokens = len(self._ids)
        self._ids, self._pos = [], []


def pack_all(docs: Iterable[list[int]], seq_len: int, bos_id: int, eos_id: int):
    """Pack a whole iterable of documents in memory (for tests and small data)."""
    packer = CptPacker(seq_len, bos_id, eos_id)
    rows = [row for doc in docs for row in packer.add(doc)]
    packer.finish()
    ids = np.stack([r[0] for r in rows]) if rows else np.zeros((0, seq_len), np.uint32)
    pos = np.stack([r[1] for r in rows]) if rows else np.zeros((0, seq_len), np.uint32)
    return ids, pos, packer.stats


def labels_for(input_ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
    """Targets aligned with input_ids (the loss shifts them); -100 at document starts."""
    labels = input_ids.astype(np.int64)
    labels[position_ids == 0] = -100
    return labels
