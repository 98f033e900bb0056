"""Named datasets of the recipes -> hub id, files and adapter; and the resolved form of a source.

A source names a registry entry (`name: alpaca_zh`), or gives a hub id / local path with an adapter.
A local `path` always wins over the hub id, for offline clusters; a registry entry that is one folder of
a hub repo (the SynE sources) finds that folder in a `path` holding a snapshot of the whole repo.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from data_prep.adapters import AdapterOptions, check_adapter, suggest
from data_prep.errors import DataError


@dataclass(frozen=True)
class Entry:
    hub_id: str
    adapter: str
    data_files: str | None = None
    split: str = "train"
    langs: tuple[str, ...] | None = None
    messages_key: str | None = None


SYNE = "survivi/Llama-3-SynE-Dataset"
SYNE_FOLDERS = (
    "book-cn",
    "book-en",
    "code-en",
    "encyclopedia-cn",
    "encyclopedia-en",
    "math-en",
    "paper-en",
    "qa_forum-cn",
    "qa_forum-en",
    "synthesis-en",
    "web-cn",
    "web-en",
)

DATASETS: dict[str, Entry] = {
    **{
        "syne_" + f.replace("-", "_"): Entry(SYNE, "text", data_files=f"data/{f}/*.parquet")
        for f in SYNE_FOLDERS
    },
    "stem_zh_instruction": Entry("hfl/stem_zh_instruction", "alpaca"),
    "alpaca_zh": Entry("llamafactory/alpaca_zh", "alpaca"),
    "alpaca_gpt4_zh": Entry("llamafactory/alpaca_gpt4_zh", "alpaca"),
    # The repo holds the same 2,449 questions twice (gpt-4o and gpt-4-turbo answers); the whole repo would train
    # each question twice with different answers. The gpt-4o file is the current one.
    "ruozhiba_gpt4": Entry("hfl/ruozhiba_gpt4", "alpaca", data_files="ruozhiba_qa2449_gpt4o.json"),
    # Schema unconfirmed (datasets.md section 6): messages-style rows, anything else fails by row.
    "llama3_8b_chat": Entry("codingsteven/Llama-3-8B-chat", "messages"),
    "oasst2_en_top1": Entry("OpenAssistant/oasst2", "oasst_top1", split="train+validation", langs=("en",)),
    "oasst1_21k_ja": Entry("llm-jp/oasst1-21k-ja", "sharegpt"),
    "swallow_instruct_v0_1": Entry(
        "tokyotech-llm/Swallow-Instruct-v0.1", "messages", messages_key="conversation"
    ),
}


@dataclass(frozen=True)
class Source:
    """A fully resolved source: where the rows are and how to adapt them."""

    label: str
    adapter: str
    options: AdapterOptions
    path: str | None = None
    hub_id: str | None = None
    data_files: str | None = None
    split: str = "train"
    revision: str | None = None


def lookup(name: str) -> Entry:
    """The registry entry for `name`, or a DataError with the nearest name."""
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset name '{name}'.{suggest(name, DATASETS)} Known: {', '.join(DATASETS)}."
        )
    return DATASETS[name]


def resolve(spec) -> Source:
    """Any object with source attributes (a SourceConfig, a test double) -> a Source; unset ones default."""
    name = getattr(spec, "name", None)
    entry = lookup(name) if name else None
    path, hub_id = getattr(spec, "path", None), getattr(spec, "hub_id", None)
    adapter = getattr(spec, "adapter", None) or (entry.adapter if entry else "text")
    langs = getattr(spec, "langs", None)
    options = AdapterOptions(
        text_key=getattr(spec, "text_key", None) or "text",
        messages_key=getattr(spec, "messages_key", None) or (entry.messages_key if entry else None),
        alpaca_input=getattr(spec, "alpaca_input", None) or "system",
        langs=tuple(langs) if langs is not None else (entry.langs if entry else None),
    )
    if path is None and hub_id is None and entry is None:
        raise DataError("a data source needs a 'name' from the registry, a 'path' or a 'hub_id'")
    label = getattr(spec, "label", None) or name or path or hub_id
    split = getattr(spec, "split", None)
    if split is not None and path is not None and not (Path(path) / "dataset_dict.json").is_file():
        raise DataError(  # a file or glob has no splits: every row would train
            f"data source '{label}': split '{split}' selects a split of a hub dataset or of a DatasetDict "
            f"save_to_disk folder, and {path} is neither: drop split, or point path at the split's files"
        )
    data_files = getattr(spec, "data_files", None)
    if entry is not None and entry.data_files and data_files is None:
        if path is None and hub_id in (None, entry.hub_id):
            data_files = entry.data_files
        elif path is not None and Path(path).is_dir():
            # a local snapshot of the whole hub repo: only the entry's files (folder or file)
            if glob.glob(str(Path(path) / entry.data_files)):
                path = str(Path(path) / entry.data_files)
            elif (Path(path) / Path(entry.data_files).parts[0]).is_dir():
                raise DataError(f"{path}: the snapshot has no {entry.data_files} for '{name}'")
    return Source(
        label=label,
        adapter=check_adapter(adapter),
        options=options,
        path=path,
        hub_id=None if path else (hub_id or entry.hub_id),
        data_files=None if path else data_files,
        revision=None if path else getattr(spec, "revision", None),
        split=split or (entry.split if entry else "train"),
    )
