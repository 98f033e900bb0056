"""Tokenized, packed rows on disk, one shard folder per source: memory-mapped arrays plus a manifest.

A shard is keyed by a fingerprint of everything that changes its content (files, adapter and its
options, tokenizer, chat template for SFT, seq_len, packing), built once (streamed: memory stays
flat in corpus size) and reused while that key holds. A build writes to a temporary folder and
renames it when complete, so a crash never leaves a half-written shard that looks valid.
SFT shards also store labels, since loss masks cannot be derived from the tokens.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import fcntl
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data_prep import writers
from data_prep.adapters import record_kind
from data_prep.chat import bare_backend, encode_chat, template_fingerprint
from data_prep.errors import DataError
from data_prep.packing import CptPacker, flatten, labels_for
from data_prep.records import Skips, iter_records
from data_prep.registry import Source, resolve
from data_prep.sft_packing import SftPacker
from data_prep.sources import source_identity

log = logging.getLogger(__name__)
FORMAT_VERSION = 3
TOKENIZE_BATCH = 512
ENCODE_BATCH = 256


@dataclass(frozen=True)
class PackOptions:
    """The data settings that change what a shard holds (read from the data config by name)."""

    seq_len: int
    sft_packing: str = "best_fit"
    overlong: str = "drop"
    train_on_prompt: bool = False
    on_error: str = "raise"
    cpt_boundaries: str = "documents"
    num_proc: int = 1
    """Tokenizer worker processes; does not change the shard (not in its key)."""

    @classmethod
    def of(cls, data) -> PackOptions:
        names = ("sft_packing", "overlong", "train_on_prompt", "on_error", "cpt_boundaries", "num_proc")
        return cls(data.seq_len, **{n: getattr(data, n) for n in names if hasattr(data, n)})


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's full definition (vocab, merges, normalisation, special tokens). Truncation
    and padding are left out: shards are encoded without them, and transformers switches them per call."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if getattr(backend, "truncation", None) is not None or getattr(backend, "padding", None) is not None:
        backend = copy.deepcopy(backend)  # once per shard key: to_str() has no option to leave them out
        backend.no_truncation()
        backend.no_padding()
    blob = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    blob += json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shard_key(source: Source, tokenizer, opts: PackOptions) -> dict:
    """Everything that changes a shard's content."""
    kind = record_kind(source.adapter)
    key = {
        "version": FORMAT_VERSION,
        "kind": kind,
        "data": source_identity(source),
        "adapter": source.adapter,
        "adapter_options": asdict(source.options),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "seq_len": opts.seq_len,
        "on_error": opts.on_error,
    }
    if kind == "cpt":
        key.update(cpt_boundaries=opts.cpt_boundaries)
    else:
        key.update(
            template=template_fingerprint(tokenizer),
            sft_packing=opts.sft_packing,
            overlong=opts.overlong,
            train_on_prompt=opts.train_on_prompt,
        )
    return key


# Manifest entries added after checkpoints recorded shard digests (the rows' hash is compared on its own).
STATS_ADDED_LATER = ("dropped_pieces", "dropped_piece_tokens", "split_lost_targets", "content_sha256")


class PackedRows:
    """Read-only view of one built shard: rows of input_ids, position_ids (and labels for SFT)."""

    def __init__(self, folder: Path):
        self.folder = folder
        fix = "delete the folder to rebuild it"
        try:
            self.manifest = json.loads((folder / "manifest.json").read_text())
            shape = (int(self.manifest["rows"]), int(self.manifest["seq_len"]))
            sft = self.manifest["key"]["kind"] == "sft"
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{folder}: cannot read manifest.json ({e}); {fix}") from None
        # a cached shard is reused as is: a damaged one must not be read as (wrong) rows
        for name in ("input_ids.bin", "position_ids.bin", *(["labels.bin"] if sft else [])):
            f, size = folder / name, shape[0] * shape[1] * 4  # uint32 / int32
            if not f.is_file():
                raise DataError(f"{folder}: file {name} is missing; {fix}")
            if f.stat().st_size != size:
                raise DataError(
                    f"{folder}: file {name} has {f.stat().st_size} bytes, the manifest implies {size}; {fix}"
                )
        self.input_ids = np.memmap(folder / "input_ids.bin", dtype=np.uint32, mode="r", shape=shape)
        self.position_ids = np.memmap(folder / "position_ids.bin", dtype=np.uint32, mode="r", shape=shape)
        self.labels = np.memmap(folder / "labels.bin", dtype=np.int32, mode="r", shape=shape) if sft else None

    def __len__(self) -> int:
        return self.manifest["rows"]

    def summary(self, label: str) -> dict:
        """What the rows are, for comparing shards across ranks and resumes: a digest of the manifest without
        the inputs' paths and times (so a copied dataset matches), its row and token counts, and a hash of the
        rows themselves (`content`: documents reordered or edited at the same counts differ there). The source's
        `label` is today's (a shard is reused under a renamed label, and must digest as one built with it)."""
        kept = {k: v for k, v in self.manifest.items() if k != "skip_reasons"}  # reasons name file paths
        kept["label"] = label
        for (
            stat
        ) in STATS_ADDED_LATER:  # kept out, so a shard rebuilt today digests as its checkpoints recorded
            kept.pop(stat, None)
        kept["key"] = {k: v for k, v in kept["key"].items() if k != "data"}
        digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]
        out = {"digest": digest, "rows": self.manifest["rows"], "tokens": self.manifest["tokens_in_rows"]}
        if "content_sha256" in self.manifest:  # shards built before it have none
            out["content"] = self.manifest["content_sha256"][:16]
        return out

    @property
    def tokens_per_row(self) -> float:
        """Average real (non-padding) tokens per row, for token-weighted mixtures."""
        return self.manifest["tokens_in_rows"] / self.manifest["rows"]

    def arrays(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, pos = self.input_ids[rows], self.position_ids[rows]
        labels = self.labels[rows].astype(np.int64) if self.labels is not None else labels_for(ids, pos)
        return ids, pos, labels


class MixedRows:
    """All sources' shards behind one row index space (source k owns rows offsets[k]:offsets[k+1])."""

    def __init__(self, shards: list[PackedRows], source_labels: list[str]):
        self.shards, self.source_labels = shards, source_labels
        self.offsets = np.cumsum([0, *(len(s) for s in shards)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def summaries(self) -> dict[str, dict]:
        """{source label: PackedRows.summary}."""
        return {
            label: shard.summary(label) for label, shard in zip(self.source_labels, self.shards, strict=True)
        }

    def source_of(self, rows) -> np.ndarray:
        """The source index of each global row id."""
        return np.searchsorted(self.offsets, np.asarray(rows, dtype=np.int64), side="right") - 1

    def batch(self, rows) -> dict[str, torch.Tensor]:
        """Rows by global index, as int64 tensors: input_ids, position_ids, labels and source (per row)."""
        rows = np.asarray(rows, dtype=np.int64)
        which = self.source_of(rows)
        parts = [
            self.shards[k].arrays(np.asarray([r - self.offsets[k]])) for r, k in zip(rows, which, strict=True)
        ]
        ids, pos, labels = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return {
            "input_ids": torch.from_numpy(ids.astype(np.int64)),
            "position_ids": torch.from_numpy(pos.astype(np.int64)),
            "labels": torch.from_numpy(labels),
            "source": torch.from_numpy(which),
        }


def _cpt_rows(source: Source, tokenizer, opts: PackOptions, skips: Skips, stats: dict):
    """Yield blocks of (input_ids, position_ids, None) rows; fill `stats` when done."""
    packer = CptPacker(opts.seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id, opts.cpt_boundaries)
    records = iter_records(source, opts.on_error, skips)
    batches = iter(lambda: [r["text"] for r in itertools.islice(records, TOKENIZE_BATCH)], [])
    for flat, lengths in _in_workers(_tokenize_texts, batches, tokenizer, opts):
        ids, pos = packer.add_batch(flat, lengths)
        if len(ids):
            yield ids, pos, None
    packer.finish()
    s = packer.stats
    if s.documents == s.empty_documents:
        raise DataError(f"no text in the data source '{source.label}': {s.documents} rows, all empty or none")
    stats.update(
        documents=s.documents,
        empty_documents=s.empty_documents,
        tokens=s.tokens,
        tokens_in_rows=s.rows * opts.seq_len,
        dropped_tail_tokens=s.dropped_tail_tokens,
    )


_LOCK = ".building"  # in a build's temporary folder, flocked by its builder
_WORKER: tuple = ()  # (tokenizer, train_on_prompt), inherited by forked workers


def _tokenize_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> `flatten`ed token ids without special tokens. A special token's string in the text
    ("<|end_of_text|>" in a code file) is encoded as plain text, as Meta's Llama-3 tokenizer does, so raw
    text never ends a document early. The backend's encode_batch_fast gives the same ids as
    `tokenizer(texts, split_special_tokens=True)` without computing offsets (about 1.5x faster)."""
    tokenizer = _WORKER[0]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return flatten(tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    # truncation and padding off, as they are for a clean tokenizer; restored after, as are special tokens
    # (chat templates in this process need them)
    with bare_backend(tokenizer, special_tokens_as_text=True) as backend:
        return flatten(e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False))


def _encode_batch(records: list[dict]) -> list[tuple[list[int], list[int]] | str]:
    from jinja2.exceptions import TemplateError  # transformers renders chat templates with jinja2

    tokenizer, train_on_prompt = _WORKER
    out = []
    for record in records:
        try:
            out.append(encode_chat(tokenizer, record["messages"], train_on_prompt))
        except ValueError as e:
            out.append(f"{record['id']}: {e}")
        # a template may refuse a sample: raise_exception("System role not supported")
        except TemplateError as e:
            out.append(f"{record['id']}: the chat template failed: {e}")
    return out


def _no_tokenizer_threads() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: no oversubscription


def _in_workers(fn, batches: Iterator[list], tokenizer, opts: PackOptions) -> Iterator:
    """`fn` over batches, results in batch order; with num_proc > 1 in forked worker processes while
    this process reads, packs and writes. At most 2 batches per worker are in flight, so memory stays
    flat however fast the input is read."""
    global _WORKER
    _WORKER = (tokenizer, opts.train_on_prompt)
    procs = min(opts.num_proc, os.cpu_count() or 1)
    if procs == 1:
        yield from map(fn, batches)
        return
    pool = mp.get_context("fork").Pool(procs, initializer=_no_tokenizer_threads)
    try:
        pending = collections.deque()
        for batch in batches:
            pending.append(pool.apply_async(fn, (batch,)))
            if len(pending) >= 2 * procs:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()


def _encoded(
    records: Iterator[dict], tokenizer, opts: PackOptions, skips: Skips
) -> Iterator[tuple[list[int], list[int]]]:
    """(input_ids, labels) per record, in record order (chat rendering is Python-bound: num_proc helps).
    A sample that fails the chat checks is a bad row: it stops the run, or under on_error: skip is counted."""
    batches = iter(lambda: list(itertools.islice(records, ENCODE_BATCH)), [])
    for batch in _in_workers(_encode_batch, batches, tokenizer, opts):
        for item in batch:
            if isinstance(item, str):  # "file:row: reason"
                if opts.on_error == "raise":
                    raise DataError(f"{item} (or set data.on_error: skip)")
                skips.add(item)
                continue
            yield item


def _sft_rows(source: Source, tokenizer, opts: PackOptions, skips: Skips, stats: dict):
    """Yield (input_ids, position_ids, labels) rows; fill `stats` when done."""
    if not tokenizer.chat_template:
        raise DataError(
            f"{source.label}: chat data needs a chat template and the tokenizer has none "
            "(set model.chat_template: llama3)"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    packer = SftPacker(opts.seq_len, pad, opts.sft_packing, opts.overlong)
    for ids, labels in _encoded(iter_records(source, opts.on_error, skips), tokenizer, opts, skips):
        yield from packer.add(ids, labels)
    yield from packer.finish()
    stats.update(packer.stats.as_dict(), tokens_in_rows=packer.stats.tokens)


def _remove_killed_builds(folder: Path) -> None:
    """Delete the temporary folders of this host's earlier builds of `folder` whose builder is gone (a kill
    leaves partial shards of many GB behind); a live one (another rank's or another container's) is left alone."""
    ours = re.compile(rf"\.tmp-{re.escape(folder.name)}-{re.escape(socket.gethostname())}-(\d+)")
    for tmp in folder.parent.glob(f".tmp-{folder.name}-*"):
        match = ours.fullmatch(tmp.name)  # host "gpu" must not take host "gpu-2"'s folders for its own
        if match and not _builder_alive(tmp, int(match[1])):
            shutil.rmtree(tmp, ignore_errors=True)


def _builder_alive(tmp: Path, pid: int) -> bool:
    """A builder holds an flock on its folder's lock file until it ends, so the kernel frees it on a kill
    whatever the pid namespace (containers sharing a hostname); the pid is the fallback where there is no
    lock (a folder from before the lock, or a file system without flock)."""
    try:
        fd = os.open(tmp / _LOCK, os.O_RDWR)
    except OSError:
        return _process_alive(pid)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return _process_alive(pid)
    finally:
        os.close(fd)  # also drops the lock just taken
    return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _build(folder: Path, source: Source, tokenizer, opts: PackOptions, key: dict) -> None:
    _remove_killed_builds(folder)
    tmp = folder.with_name(f".tmp-{folder.name}-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lock = os.open(tmp / _LOCK, os.O_RDWR | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):  # no flock on this file system: the pid in the name still tells
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _write_shard(tmp, folder, source, tokenizer, opts, key)
    finally:
        os.close(lock)


def _write_shard(tmp: Path, folder: Path, source: Source, tokenizer, opts: PackOptions, key: dict) -> None:
    kind, skips, stats, rows = key["kind"], Skips(), {}, 0
    content = hashlib.sha256()  # of the rows as written: what a resume compares, whatever the inputs' paths
    produce = _cpt_rows if kind == "cpt" else _sft_rows
    try:
        with (
            open(tmp / "input_ids.bin", "wb") as f_ids,
            open(tmp / "position_ids.bin", "wb") as f_pos,
            open(tmp / "labels.bin", "wb") as f_lab,
        ):
            bar = tqdm(desc=f"tokenize+pack {source.label}", unit="tok", unit_scale=True, disable=None)
            for ids, pos, labels in produce(source, tokenizer, opts, skips, stats):
                for array, f in ((ids, f_ids), (pos, f_pos), (labels, f_lab)):
                    if array is not None:
                        array.tofile(f)
                        content.update(np.ascontiguousarray(array))
                rows += ids.size // opts.seq_len  # CPT gives blocks of rows, SFT one row at a time
                bar.update(ids.size)
            bar.close()
        skips.warn(source.label)
        if rows == 0:
            skipped = f"; {skips.count} rows skipped as bad, first: {skips.reasons[0]}" if skips.count else ""
            raise DataError(
                f"source '{source.label}' gives less than one row of data.seq_len={opts.seq_len} "
                f"({json.dumps(stats)}{skipped}): lower data.seq_len or add data"
            )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if kind == "cpt":
        (tmp / "labels.bin").unlink()
    manifest = {"key": key, "label": source.label, "rows": rows, "seq_len": opts.seq_len, **stats}
    manifest.update(skipped_rows=skips.count, skip_reasons=skips.reasons, content_sha256=content.hexdigest())
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    try:  # a rename onto a non-empty folder fails: two writers finishing at once cannot delete each other's
        os.rename(tmp, folder)
    except OSError:
        if (folder / "manifest.json").exists():  # another node's writer finished the same shard first
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder left by a killed writer
        os.rename(tmp, folder)
    (folder / _LOCK).unlink()  # only after the rename: until then the lock marks the folder as in use
    log.info("source '%s': %d rows of %d tokens; %s", source.label, rows, opts.seq_len, json.dumps(stats))


def shard_folder(source: Source, tokenizer, opts: PackOptions, cache_dir: str | Path) -> tuple[Path, dict]:
    key = shard_key(source, tokenizer, opts)
    fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{key['kind']}-{fp}", key


def _plan(data, tokenizer) -> tuple[PackOptions, list[Source], list[tuple[Path, dict]]]:
    opts = PackOptions.of(data)
    sources = [resolve(s) for s in data.sources]
    return opts, sources, [shard_folder(s, tokenizer, opts, data.cache_dir) for s in sources]


def prepare(data, tokenizer) -> MixedRows:
    """Build or reuse one shard per source of `data`: global rank 0 builds, then the local rank 0 of
    each node that cannot see the shards (node-local cache_dir); the other ranks wait, then all read.

    `data` is any object with `sources`, `seq_len`, `cache_dir` (and optionally the PackOptions names)."""
    rank, local_rank = writers.rank(), writers.local_rank()
    group = writers.waiting_group()
    try:
        folders, sources = _build_missing(data, tokenizer, group, rank, local_rank)
    finally:
        if group is not None:
            torch.distributed.destroy_process_group(group)
    log.info("using packed data %s", ", ".join(str(f) for f, _ in folders))
    return MixedRows([PackedRows(f) for f, _ in folders], [s.label for s in sources])


def _build_missing(data, tokenizer, group, rank: int, local_rank: int):
    """Both passes of `prepare` (rank 0, then node leaders); (folders, sources) once every build is done."""
    plan = None
    for node_pass in (False, True):
        failure = None
        try:  # resolving runs on every rank: a failure there, too, must reach the others
            plan = plan or _plan(data, tokenizer)
            opts, sources, folders = plan
            for source, (folder, key) in zip(sources, folders, strict=True):
                if writers.builds(rank, local_rank, node_pass, (folder / "manifest.json").exists()):
                    _build(folder, source, tokenizer, opts, key)
        except BaseException as e:
            failure = e
        writers.settle(failure, group)  # every rank waits here until this pass's builders are done
    return folders, sources
