"""Tokenized, packed rows on disk: memory-mapped arrays plus a manifest, keyed by a fingerprint.

Built once (streamed: memory stays flat in corpus size) and reused while the sources, tokenizer
and packing settings are unchanged. A build writes to a temporary folder and renames it when
complete, so a crash never leaves a half-written cache that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data_prep.errors import DataError
from data_prep.packing import CptPacker, labels_for
from data_prep.sources import SourceSpec, iter_documents, source_identity

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
TOKENIZE_BATCH = 512


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's full definition (vocab, merges, normalisation, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    blob += json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(sources: Sequence[SourceSpec], tokenizer, seq_len: int) -> str:
    key = {
        "version": FORMAT_VERSION,
        "sources": [source_identity(s) for s in sources],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "seq_len": seq_len,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class PackedRows:
    """Read-only view of a built cache: rows of input_ids and position_ids."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.manifest = json.loads((folder / "manifest.json").read_text())
        shape = (self.manifest["rows"], self.manifest["seq_len"])
        self.input_ids = np.memmap(folder / "input_ids.bin", dtype=np.uint32, mode="r", shape=shape)
        self.position_ids = np.memmap(folder / "position_ids.bin", dtype=np.uint32, mode="r", shape=shape)

    def __len__(self) -> int:
        return self.manifest["rows"]

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """Rows by index, as int64 tensors: input_ids, position_ids and labels."""
        ids = self.input_ids[rows]
        pos = self.position_ids[rows]
        return {
            "input_ids": torch.from_numpy(ids.astype(np.int64)),
            "position_ids": torch.from_numpy(pos.astype(np.int64)),
            "labels": torch.from_numpy(labels_for(ids, pos)),
        }


def _build(folder: Path, sources: Sequence[SourceSpec], tokenizer, seq_len: int, fp: str) -> None:
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    packer = CptPacker(seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)
    with open(tmp / "input_ids.bin", "wb") as f_ids, open(tmp / "position_ids.bin", "wb") as f_pos:
        bar = tqdm(desc="tokenize+pack", unit="doc", disable=None)
        for spec in sources:
            docs = iter_documents(spec)
            while True:
                batch = [d.text for _, d in zip(range(TOKENIZE_BATCH), docs, strict=False)]
                if not batch:
                    break
                for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
                    for row_ids, row_pos in packer.add(ids):
                        row_ids.tofile(f_ids)
                        row_pos.tofile(f_pos)
                bar.update(len(batch))
        bar.close()
    packer.finish()
    stats = packer.stats
    if stats.documents == stats.empty_documents:
        shutil.rmtree(tmp)
        where = ", ".join(s.path or s.hub_id for s in sources)
        raise DataError(f"no text in the data sources ({where}): {stats.documents} rows, all empty or none")
    if stats.rows == 0:
        shutil.rmtree(tmp)
        raise DataError(
            f"the data has {stats.tokens} tokens, less than one row of data.seq_len={seq_len}: "
            "lower data.seq_len or add data"
        )
    manifest = {
        "fingerprint": fp,
        "format_version": FORMAT_VERSION,
        "seq_len": seq_len,
        "rows": stats.rows,
        "documents": stats.documents,
        "empty_documents": stats.empty_documents,
        "tokens": stats.tokens,
        "dropped_tail_tokens": stats.dropped_tail_tokens,
        "sources": [source_identity(s) for s in sources],
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log.info(
        "packed %d documents (%d empty) into %d rows of %d tokens; %d tail tokens not used",
        stats.documents,
        stats.empty_documents,
        stats.rows,
        seq_len,
        stats.dropped_tail_tokens,
    )


def prepare(sources: Sequence[SourceSpec], tokenizer, seq_len: int, cache_dir: str | Path) -> PackedRows:
    """Build (on global rank 0 only, the others wait) or reuse the packed rows for these sources."""
    fp = fingerprint(sources, tokenizer, seq_len)
    folder = Path(cache_dir) / f"cpt-{fp}"
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    is_writer = not distributed or torch.distributed.get_rank() == 0
    failure = None
    if is_writer and not (folder / "manifest.json").exists():
        try:
            _build(folder, sources, tokenizer, seq_len, fp)
        except DataError as e:
            failure = e
    if distributed:  # one writer; the other ranks wait and learn whether it failed
        flag = [str(failure) if failure else None]
        torch.distributed.broadcast_object_list(flag, src=0)
        if flag[0] is not None and failure is None:
            failure = DataError(flag[0])
    if failure is not None:
        raise failure
    log.info("using packed data %s", folder)
    return PackedRows(folder)
