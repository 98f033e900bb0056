"""Streaming safetensors I/O for weight arithmetic: one tensor in at a time, sharded output, atomic directories."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from train.merge_config import MergeError

INDEX = "model.safetensors.index.json"  # a sharded model's tensor name -> shard file map


def read_json(path: Path) -> Any:
    """A model folder's JSON file; a damaged or hand-broken one is a MergeError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8 text
        raise MergeError(f"{path} is not valid JSON: {err}") from None


def open_shard(file: Path) -> Any:
    """safe_open, with a truncated or garbage safetensors file reported as a MergeError naming it."""
    try:
        return safe_open(file, framework="pt")
    except (SafetensorError, OSError) as err:  # OSError: a shard the index names but the folder lacks
        raise MergeError(f"cannot read weights file {file}: {err}") from None


def weight_map(model: Path) -> dict[str, Path]:
    """Tensor name -> shard file, from the index or a single model.safetensors."""
    index, single = model / INDEX, model / "model.safetensors"
    if index.is_file() and single.is_file():  # transformers would load the single file, we the index
        raise MergeError(
            f"{model} holds both model.safetensors and {INDEX}: one is stale; move the one the model is not"
        )
    if index.is_file():
        entries = read_json(index)
        if not isinstance(entries, dict) or not isinstance(entries.get("weight_map"), dict):
            raise MergeError(f"{index} has no 'weight_map' object (tensor name -> shard file)")
        bad = [k for k, v in entries["weight_map"].items() if not isinstance(v, str)]
        if bad:
            raise MergeError(f"{index}: the weight_map entries of {bad[:3]} are not shard file names")
        return {k: model / v for k, v in entries["weight_map"].items()}
    if not single.is_file():
        raise FileNotFoundError(
            f"{model} has no model.safetensors(.index.json); only safetensors can be merged"
        )
    with open_shard(single) as f:
        return dict.fromkeys(f.keys(), single)


def tokenizer_vocab(model: Path) -> dict[str, int] | None:
    """Token -> id of ``model``'s tokenizer.json, added tokens included (None when it has none).

    Read from the JSON, not through AutoTokenizer: no tokenizer code runs."""
    path = model / "tokenizer.json"
    if not path.is_file():
        return None
    spec = read_json(path)
    vocab = spec.get("model", {}).get("vocab") or {}
    if isinstance(vocab, dict):
        tokens = dict(vocab)
    else:  # Unigram: a list of [piece, score]
        tokens = {str(p[0] if isinstance(p, list) and p else p): i for i, p in enumerate(vocab)}
    tokens.update({t["content"]: t["id"] for t in spec.get("added_tokens", [])})
    return tokens


def tokenizer_ids(model: Path) -> int | None:
    """One past the highest token id of ``model``'s tokenizer.json (None when it has none): a padded
    vocabulary's holes do not matter, since the question is which embedding rows the tokenizer can reach."""
    vocab = tokenizer_vocab(model)
    return max(vocab.values()) + 1 if vocab else None


class ShardReader:
    """Reads single tensors from several models, keeping at most one shard per model mapped at a time."""

    def __init__(self, models: list[Path]):
        self.maps = {m: weight_map(m) for m in models}
        self._open: dict[Path, tuple[Path, Any]] = {}

    def _by_file(self, model: Path) -> dict[Path, list[str]]:
        by_file: dict[Path, list[str]] = {}
        for name, file in self.maps[model].items():
            by_file.setdefault(file, []).append(name)
        return by_file

    def shapes(self, model: Path) -> dict[str, list[int]]:
        """Shape of every tensor the weight map names, read from the shard headers only.

        Each name is looked up in the shard the index gives it, so a stale or hand-edited index is
        refused here, before anything is written, not halfway through the merge."""
        out = {}
        for file, names in sorted(self._by_file(model).items()):
            with open_shard(file) as f:
                held = set(f.keys())
                for name in sorted(names):
                    if name not in held:
                        raise MergeError(
                            f"{model / INDEX} maps tensor '{name}' to shard {file}, which does not hold it; "
                            "fix the index (or re-save the model)"
                        )
                    out[name] = list(f.get_slice(name).get_shape())
        return out

    def get(self, model: Path, name: str) -> torch.Tensor:
        file = self.maps[model][name]
        current = self._open.get(model)
        if current is None or current[0] != file:
            # Dropping the old handle unmaps its shard, so its pages leave our resident set.
            self._open.pop(model, None)
            self._open[model] = (file, open_shard(file))
        return self._open[model][1].get_tensor(name)

    def ordered_names(self, model: Path) -> Iterator[str]:
        """``model``'s tensors grouped by its shards, so every input walks its shards roughly in turn."""
        by_file = self._by_file(model)
        for file in sorted(by_file):
            yield from sorted(by_file[file])

    def close(self) -> None:
        self._open.clear()


class ShardWriter:
    """Buffers tensors up to ``max_bytes`` per shard and writes HF-style sharded safetensors with an index."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffered = 0
        self.parts: list[list[str]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffered + size > self.max_bytes:
            self.flush()
        self.buffer[name] = tensor.contiguous()
        self.buffered += size
        self.total += size

    def flush(self) -> None:
        if self.buffer:
            save_file(self.buffer, self.directory / f"part-{len(self.parts)}", metadata={"format": "pt"})
            self.parts.append(list(self.buffer))
            self.buffer, self.buffered = {}, 0

    def finish(self) -> None:
        """Name the shards model-0000i-of-0000N.safetensors (N is only known now) and write the index."""
        self.flush()
        n, names_to_file = len(self.parts), {}
        for i, names in enumerate(self.parts):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.directory / f"part-{i}", self.directory / final)
            names_to_file.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total}, "weight_map": names_to_file}
        (self.directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")


def check_output(
    out: Path, inputs: Iterable[Path], overwrite: bool, overwrite_hint: str = "overwrite: true"
) -> None:
    """Refuse an output that is, holds or lies inside an input model folder (replacing it would delete
    that input, or write into it), and, unless ``overwrite``, one that is not empty."""
    target = out.resolve()
    for model in inputs:
        source = Path(model).resolve()
        if target.is_relative_to(source) or source.is_relative_to(target):
            raise MergeError(
                f"output {out} and input model {model} overlap (one is or holds the other); "
                "choose an output folder outside every input"
            )
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise MergeError(f"output {out} exists and is not empty; pass {overwrite_hint} to replace it")


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temp dir beside ``out`` that replaces ``out`` only if the block completes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp (0700): the output gets the mode any new folder gets under the umask
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if not out.exists():
            os.replace(tmp, out)
            return
        # Move the old output aside first, and put it back if the swap fails, so it is never lost.
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, aside / out.name)
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(aside / out.name, out)
            raise
        shutil.rmtree(aside)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
