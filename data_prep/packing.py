"""Pack tokenized documents into fixed-length rows for causal LM pretraining.

`boundaries: documents` (default): each document becomes BOS + tokens + EOS. Documents are concatenated
and cut into `seq_len` rows; `position_ids` restart at every document start and at every row start, so
attention stays inside documents (transformers builds the per-document mask from them) and the loss
never predicts a BOS from the previous document.
`boundaries: reference` (Control-LLM's SynE packing, for exact reproduction): each document becomes
BOS + tokens without EOS, `position_ids` run 0..seq_len-1 over the whole row, so the causal mask spans
documents and every next token, a following document's BOS included, is a target.
Either way a last, incomplete row is not emitted and its tokens are counted.
Packing works on whole batches of documents with numpy (no per-token Python work).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

BOUNDARIES = ("documents", "reference")


@dataclass
class PackStats:
    documents: int = 0
    empty_documents: int = 0
    tokens: int = 0
    rows: int = 0
    dropped_tail_tokens: int = 0
    extra: dict = field(default_factory=dict)


def flatten(docs: Iterable[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (all tokens in one uint32 array, each document's length)."""
    docs = list(docs)
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    flat = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.uint32, count=int(lengths.sum()))
    return flat, lengths


class CptPacker:
    """Takes batches of documents, returns the (input_ids, position_ids) rows of `seq_len` that became full."""

    def __init__(self, seq_len: int, bos_id: int, eos_id: int, boundaries: str = "documents"):
        if boundaries not in BOUNDARIES:
            raise ValueError(f"unknown CPT boundaries '{boundaries}': choose one of {', '.join(BOUNDARIES)}")
        self.seq_len, self.bos_id, self.eos_id, self.boundaries = seq_len, bos_id, eos_id, boundaries
        self.stats = PackStats()
        # tokens not yet in a full row, and where each one's document starts (clipped at this row's start)
        self._ids = np.zeros(0, np.uint32)
        self._doc_start = np.zeros(0, np.int64)

    def add_batch(self, flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append documents given as `flatten` output (without special tokens); return the full rows
        as two (rows, seq_len) uint32 arrays."""
        lengths = np.asarray(lengths, dtype=np.int64)
        kept = lengths[lengths > 0]
        self.stats.documents += len(lengths)
        self.stats.empty_documents += len(lengths) - len(kept)
        with_eos = self.boundaries == "documents"
        sizes = kept + (2 if with_eos else 1)
        starts = len(self._ids) + np.cumsum(sizes) - sizes  # document starts in the pending buffer
        ids = np.empty(len(self._ids) + int(sizes.sum()), dtype=np.uint32)
        ids[: len(self._ids)] = self._ids
        is_text = np.ones(len(ids), dtype=bool)
        is_text[: len(self._ids)] = False
        is_text[starts] = False
        ids[starts] = self.bos_id
        if with_eos:
            ends = starts + sizes - 1
            is_text[ends] = False
            ids[ends] = self.eos_id
        ids[is_text] = flat
        doc_start = np.concatenate([self._doc_start, np.repeat(starts, sizes)])
        self.stats.tokens += int(sizes.sum())

        n_rows = len(ids) // self.seq_len
        cut = n_rows * self.seq_len
        index = np.arange(cut, dtype=np.int64)
        row_start = index - index % self.seq_len
        if with_eos:  # restart at each document and at each row (a document continuing into a new row)
            pos = index - np.maximum(doc_start[:cut], row_start)
        else:
            pos = index - row_start
        self._ids = ids[cut:]
        self._doc_start = np.maximum(doc_start[cut:] - cut, 0)
        self.stats.rows += n_rows
        shape = (n_rows, self.seq_len)
        return ids[:cut].reshape(shape), pos.astype(np.uint32).reshape(shape)

    def finish(self) -> None:
        """Count the tokens of the incomplete last row (they are not trained on)."""
        self.stats.dropped_tail_tokens = len(self._ids)
        self._ids, self._doc_start = np.zeros(0, np.uint32), np.zeros(0, np.int64)


def pack_all(
    docs: Iterable[list[int]], seq_len: int, bos_id: int, eos_id: int, boundaries: str = "documents"
):
    """Pack a whole iterable of documents in memory (for tests and small data)."""
    packer = CptPacker(seq_len, bos_id, eos_id, boundaries)
    ids, pos = packer.add_batch(*flatten(docs))
    packer.finish()
    return ids, pos, packer.stats


def labels_for(input_ids: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
    """Targets aligned with input_ids (the loss shifts them); -100 at document and row starts. A row's
    first label is never a target anyway, so with `boundaries: reference` every next token is one."""
    labels = input_ids.astype(np.int64)
    labels[position_ids == 0] = -100
    return labels
