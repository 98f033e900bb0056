"""Synthetic training data held in memory, shaped like real data, for the throughput benchmark.

- `full`: rows of uniform random tokens, one document per row (the best case: no padding, no masking).
- `sft`: samples with an alpaca-like length distribution, lognormal with median 300 and mean 412 tokens
  (mu = ln 300, sigma = sqrt(2 ln(412 / 300)) = 0.797), clipped to [16, seq_len]; the first third of each
  sample is the prompt (no loss). Packed by our SFT packer (best fit, samples never split).
- `cpt`: web-like documents, lognormal with median 500 and sigma 1.1 (mean ~916 tokens, a long tail),
  at least 32 tokens, packed by our CPT packer with document boundaries (positions restart per document).

Token ids are uniform random: the cost of a step does not depend on which tokens they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from data_prep.packing import CptPacker, labels_for
from data_prep.sft_packing import IGNORE, SftPacker

SFT_MEDIAN, SFT_MEAN, SFT_MIN = 300, 412, 16
CPT_MEDIAN, CPT_SIGMA, CPT_MIN = 500, 1.1, 32
KINDS = ("full", "sft", "cpt")


@dataclass
class SyntheticRows:
    """Packed rows plus, for SFT, the unpacked samples a padding peer consumes instead."""

    input_ids: np.ndarray
    position_ids: np.ndarray
    labels: np.ndarray
    real: np.ndarray
    """Non-pad tokens per row."""
    samples: list[tuple[np.ndarray, np.ndarray]] | None = None
    source_labels: tuple[str, ...] = ("synthetic",)

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, rows) -> dict[str, torch.Tensor]:
        """Same contract as data_prep.shards.MixedRows.batch, so train_step takes it as is."""
        rows = np.asarray(rows, dtype=np.int64)
        return {
            "input_ids": torch.from_numpy(self.input_ids[rows].astype(np.int64)),
            "position_ids": torch.from_numpy(self.position_ids[rows].astype(np.int64)),
            "labels": torch.from_numpy(self.labels[rows].astype(np.int64)),
            "source": torch.zeros(len(rows), dtype=torch.int64),
        }

    def real_tokens(self, rows) -> int:
        return int(self.real[np.asarray(rows, dtype=np.int64)].sum())


def sft_lengths(rng: np.random.Generator, n: int, seq_len: int) -> np.ndarray:
    sigma = math.sqrt(2 * math.log(SFT_MEAN / SFT_MEDIAN))
    lengths = rng.lognormal(math.log(SFT_MEDIAN), sigma, n).round().astype(np.int64)
    return lengths.clip(SFT_MIN, seq_len)


def cpt_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.lognormal(math.log(CPT_MEDIAN), CPT_SIGMA, n).round().astype(np.int64).clip(CPT_MIN)


def _full(rng, rows, seq_len, vocab) -> SyntheticRows:
    ids = rng.integers(0, vocab, (rows, seq_len), dtype=np.int64)
    pos = np.broadcast_to(np.arange(seq_len), ids.shape).copy()
    return SyntheticRows(ids, pos, labels_for(ids, pos), np.full(rows, seq_len))


def _cpt(rng, rows, seq_len, vocab, bos, eos) -> SyntheticRows:
    packer, ids, pos = CptPacker(seq_len, bos, eos), [], []
    while sum(len(r) for r in ids) < rows:
        docs = [rng.integers(0, vocab, n) for n in cpt_lengths(rng, 64)]
        batch_ids, batch_pos = packer.add_batch(np.concatenate(docs), np.array([len(d) for d in docs]))
        ids.append(batch_ids)
        pos.append(batch_pos)
    ids, pos = (np.concatenate(a)[:rows].astype(np.int64) for a in (ids, pos))
    return SyntheticRows(ids, pos, labels_for(ids, pos), np.full(rows, seq_len))


def _sft(rng, rows, seq_len, vocab, pad) -> SyntheticRows:
    packer, out, samples = SftPacker(seq_len, pad), [], []
    while len(out) < rows:
        for n in sft_lengths(rng, 64, seq_len):
            ids = rng.integers(0, vocab, n)
            ids[ids == pad] = (pad + 1) % vocab  # the pad id only ever means padding: count real tokens by it
            labels = ids.copy()
            labels[: n // 3] = IGNORE
            samples.append((ids, labels))
            out.extend(packer.add(ids.tolist(), labels.tolist()))
    ids, pos, labels = (np.stack([r[i] for r in out[:rows]]).astype(np.int64) for i in range(3))
    return SyntheticRows(ids, pos, labels, (ids != pad).sum(axis=1), samples)


def make_rows(kind: str, rows: int, seq_len: int, config, seed: int) -> SyntheticRows:
    """`rows` packed rows of `kind` (full, sft, cpt) for a model with this HF `config`."""
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic data kind '{kind}'; choose from {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    vocab = config.vocab_size
    if kind == "full":
        return _full(rng, rows, seq_len, vocab)
    if kind == "cpt":
        return _cpt(rng, rows, seq_len, vocab, config.bos_token_id, config.eos_token_id)
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    return _sft(rng, rows, seq_len, vocab, pad)
