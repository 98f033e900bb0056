"""Read raw rows from local files (jsonl, json, parquet, csv, arrow, `save_to_disk` folders) with row numbers.

Unreadable input raises a DataError naming the file and the line, so training never starts on
silently broken data.
"""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Iterator
from pathlib import Path

from data_prep.errors import BadRow, DataError

SUFFIXES = {".jsonl", ".json", ".parquet", ".csv", ".arrow"}
csv.field_size_limit(2**31 - 1)  # long documents are legitimate (default limit 128 KiB); fits any C long


def _split_folders(folder: Path, split: str) -> list[Path]:
    """The folders of `split` ("a+b" for several) in a DatasetDict `save_to_disk` folder."""
    try:
        available = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{folder}: cannot read the split list in dataset_dict.json ({e})") from None
    missing = [s for s in split.split("+") if s not in available]
    if missing:
        raise DataError(
            f"{folder}: no split '{missing[0]}' in this DatasetDict folder; its splits are: "
            f"{', '.join(available)}. Set the source's split."
        )
    return [folder / s for s in split.split("+")]


def resolve_files(pattern: str, split: str = "train") -> list[Path]:
    """A file, a glob or a folder -> the sorted data files it names. A `save_to_disk` folder stays whole;
    of a DatasetDict one (a folder per split) only `split` is read."""
    p = Path(pattern)
    if p.is_dir():
        if (p / "dataset_dict.json").exists():
            return _split_folders(p, split)
        if (p / "dataset_info.json").exists() or (p / "state.json").exists():
            return [p]
        files = sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and f.is_file())
    elif p.is_file():
        if p.suffix not in SUFFIXES:
            raise DataError(f"{p}: unsupported file type; data files end in {', '.join(sorted(SUFFIXES))}")
        files = [p]
    else:
        files = sorted(
            Path(f)
            for f in glob.glob(pattern, recursive=True)
            if Path(f).suffix in SUFFIXES and Path(f).is_file()
        )
    if not files:
        raise DataError(f"data source '{pattern}' matches no data file ({', '.join(sorted(SUFFIXES))})")
    return files


def _rows_jsonl(path: Path) -> Iterator[tuple[int, object]]:
    with path.open("rb") as f:  # decoded per line, so one bad byte is one bad row
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # yielded, not raised, so `on_error: skip` can go on
                yield lineno, BadRow(f"line is not valid UTF-8 (byte {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, BadRow(f"line is not valid JSON ({e.msg} at column {e.colno})")


def _not_utf8(path: Path) -> DataError:
    """The error for a file that is not UTF-8, naming the line of its first bad byte."""
    with path.open("rb") as f:  # decoded per line: a newline byte is never inside a character
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return DataError(f"{path}:{lineno}: not valid UTF-8; re-encode the file as UTF-8")
    return DataError(f"{path}: not valid UTF-8; re-encode the file as UTF-8")  # rewritten since it failed


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _rows_json(path: Path) -> Iterator[tuple[int, object]]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # probably JSON lines with a .json name; an array is one document, so its error is where it is
        if not text.lstrip().startswith("[") and (e.lineno > 1 or "Extra data" in e.msg):
            yield from _rows_jsonl(path)
            return
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):  # {"data": [...]} style wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of rows (or an object holding one array)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(
            f"{path}: a JSON file must hold an array of objects (or be JSON lines), found {type(data).__name__}"
        )
    yield from enumerate(data, 1)


def _rows_parquet(path: Path, key: str | None) -> Iterator[tuple[int, object]]:
    """Rows of a parquet file; with `key`, only that column is read (text corpora are wide)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read parquet file ({e})") from None
    if key is not None and key not in pf.schema_arrow.names:
        raise DataError(
            f"{path}: text column '{key}' not found; the columns are: {', '.join(pf.schema_arrow.names)}. "
            "Set the source's text_key."
        )
    row = 0
    for batch in pf.iter_batches(columns=[key] if key else None, batch_size=4096):
        for value in batch.to_pylist():
            row += 1
            yield row, value


def _rows_csv(path: Path) -> Iterator[tuple[int, object]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        try:
            yield from enumerate(reader, 2)
        except UnicodeDecodeError:  # text is decoded in blocks: the reader's line is not the bad byte's
            raise _not_utf8(path) from None
        except csv.Error as e:  # the DictReader's line_num lags a failed row; its reader's does not
            raise DataError(f"{path}:{reader.reader.line_num}: not valid CSV ({e})") from None


def _rows_arrow(path: Path) -> Iterator[tuple[int, object]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_file(str(path))
    except Exception as e:  # datasets and pyarrow raise several types for broken folders and files
        raise DataError(f"{path}: cannot read the dataset ({e})") from None
    yield from enumerate(ds, 1)  # a Dataset: resolve_files gives a DatasetDict's split folders


def iter_rows(path: Path, key: str | None = None) -> Iterator[tuple[int, object]]:
    """(row number, row) pairs of one local file; the row number is the line for text formats.
    An unparsable line comes as a BadRow in place of the row.

    `key` limits columnar formats to that column; None reads whole rows."""
    if path.is_dir() or path.suffix == ".arrow":
        return _rows_arrow(path)
    return {
        ".jsonl": lambda: _rows_jsonl(path),
        ".json": lambda: _rows_json(path),
        ".parquet": lambda: _rows_parquet(path, key),
        ".csv": lambda: _rows_csv(path),
    }[path.suffix]()


def source_identity(source) -> dict:
    """What identifies a source's content for cache fingerprints: local files by name, size and mtime; a
    hub dataset by id, split, files and revision (unpinned: the shard is not rebuilt on upstream changes)."""
    if source.path is None:
        ident = {"hub_id": source.hub_id, "split": source.split, "data_files": source.data_files}
        return ident | ({"revision": source.revision} if source.revision else {})
    files = []
    for f in resolve_files(source.path, source.split):
        stats = [f.stat()] if f.is_file() else [g.stat() for g in sorted(f.rglob("*")) if g.is_file()]
        files.append([str(f.resolve()), sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)])
    return {"files": files}
