"""Read raw rows from local files (jsonl, json, gzipped jsonl/json, parquet, csv, arrow, `save_to_disk` folders)
with row numbers.

Unreadable input raises a DataError naming the file and the line, so training never starts on
silently broken data.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from data_prep.errors import BadRow, DataError

SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet", ".csv", ".arrow")
# Names that look like data we cannot read (another compression, tsv): a source naming them is refused,
# since silently leaving them out trains on part of the data.
UNREAD_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4", ".zip", ".tar", ".tsv", ".ndjson")
# Array fields that make a JSON object one conversation, not a {"key": [rows]} wrapper: the adapters'
# MESSAGE_KEYS and ShareGPT's field.
CONVERSATION_KEYS = ("messages", "dialog", "conversation", "conversations")
csv.field_size_limit(2**31 - 1)  # long documents are legitimate (default limit 128 KiB); fits any C long


def _suffix(path: Path) -> str | None:
    """The data format of a file name (".jsonl.gz" included), or None for a file we do not read."""
    return next((s for s in SUFFIXES if path.name.endswith(s)), None)


def _data_files(paths, where: str) -> list[Path]:
    """The readable data files among `paths`; files that look like data but are not readable are an error."""
    files = [f for f in paths if f.is_file()]
    unread = [f for f in files if _suffix(f) is None and f.name.endswith(UNREAD_SUFFIXES)]
    if unread:
        shown = ", ".join(map(str, unread[:5])) + (f" and {len(unread) - 5} more" if len(unread) > 5 else "")
        raise DataError(
            f"{where}: {len(unread)} file(s) look like data in a format that is not read: {shown}. Data files "
            f"end in {', '.join(sorted(SUFFIXES))}: convert them, or select the files to read with a glob path"
        )
    return sorted(f for f in files if _suffix(f))


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
        files = _data_files(p.rglob("*"), str(p))
    elif p.is_file():
        if _suffix(p) is None:
            raise DataError(f"{p}: unsupported file type; data files end in {', '.join(sorted(SUFFIXES))}")
        files = [p]
    else:
        files = _data_files(map(Path, glob.glob(pattern, recursive=True)), f"data source '{pattern}'")
    if not files:
        raise DataError(f"data source '{pattern}' matches no data file ({', '.join(sorted(SUFFIXES))})")
    return files


def _open(path: Path):
    """The file as bytes, decompressed if its name ends in .gz."""
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def _lines(path: Path, f) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of an open file; a corrupt gzip stream (or a read error) is a DataError naming the
    line reached."""
    lines, lineno = iter(f), 0
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            return
        except (OSError, EOFError, zlib.error) as e:  # gzip raises all three for truncated or bad data
            raise DataError(f"{path}:{lineno + 1}: cannot read the file from this line on ({e})") from None
        lineno += 1
        yield lineno, raw


def _rows_jsonl(path: Path) -> Iterator[tuple[int, object]]:
    with _open(path) as f:  # decoded per line, so one bad byte is one bad row
        for lineno, raw in _lines(path, f):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # yielded, not raised, so `on_error: skip` can go on
                yield lineno, BadRow(f"line is not valid UTF-8 (byte {e.start + 1})")
                continue
            if lineno == 1:  # a byte order mark (Windows editors) is not part of the row
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, BadRow(f"line is not valid JSON ({e.msg} at column {e.colno})")
            except RecursionError:  # json's decoder recurses per nesting level
                yield lineno, BadRow("line is not valid JSON (nested too deeply)")


def _not_utf8(path: Path) -> DataError:
    """The error for a file that is not UTF-8, naming the line of its first bad byte."""
    with _open(path) as f:  # decoded per line: a newline byte is never inside a character
        for lineno, raw in _lines(path, f):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return DataError(f"{path}:{lineno}: not valid UTF-8; re-encode the file as UTF-8")
    return DataError(f"{path}: not valid UTF-8; re-encode the file as UTF-8")  # rewritten since it failed


def _read_text(path: Path) -> str:
    """The whole file as text; utf-8-sig drops a byte order mark, which json.loads would refuse."""
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip raises all three for truncated or bad data
        raise DataError(f"{path}: cannot read the file ({e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _rows_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _looks_like_json_lines(text: str) -> bool:
    """One of the first two lines is an object on its own (the first may be the broken row)."""
    for line in [line for line in text.splitlines() if line.strip()][:2]:
        try:
            if isinstance(json.loads(line), dict):
                return True
        except ValueError:
            pass
    return False


def _rows_json(path: Path) -> Iterator[tuple[int | str, object]]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except RecursionError:  # json's decoder recurses per nesting level; the array is one document
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    except json.JSONDecodeError as e:
        # JSON lines with a .json name are read per line; an array or a pretty-printed object is one
        # document, so its error is where json found it
        if not text.lstrip().startswith("[") and ("Extra data" in e.msg or _looks_like_json_lines(text)):
            yield from _rows_jsonl(path)
            return
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):
        # a wrapper ({"data": [...]}) holds an array of rows; a row's own arrays hold strings or pairs
        # (tags, Alpaca's history) or are its conversation
        wrapped = [k for k, v in data.items() if _rows_array(v)]
        if list(data.values()) == [[]]:
            data = []  # an empty wrapper: no rows
        elif not wrapped or any(k in CONVERSATION_KEYS for k in data):
            data = [data]  # one row, as the same object on one line of a JSON lines file would be
        elif len(wrapped) == 1:
            data = data[wrapped[0]]
        else:
            raise DataError(
                f"{path}: a JSON object holding several arrays of rows ({', '.join(wrapped)}) is neither a row "
                "nor a wrapper of one array of rows; write the rows as a JSON array or as JSON lines"
            )
    if not isinstance(data, list):
        raise DataError(
            f"{path}: a JSON file must hold an array of objects (or be JSON lines), found {type(data).__name__}"
        )
    # an array is one document, often pretty-printed: its rows are elements, not lines
    yield from ((f"element {i}", row) for i, row in enumerate(data, 1))


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
    batches, row = pf.iter_batches(columns=[key] if key else None, batch_size=4096), 0
    while True:
        try:  # pages are decoded while iterating: a corrupt one fails here, not in ParquetFile()
            batch = next(batches, None)
            values = batch.to_pylist() if batch is not None else []
        except Exception as e:  # pyarrow raises OSError, ArrowInvalid, ... for corrupt data
            raise DataError(f"{path}: cannot read parquet data from row {row + 1} on ({e})") from None
        if batch is None:
            return
        for value in values:
            row += 1
            yield row, value


def _rows_csv(path: Path) -> Iterator[tuple[int, object]]:
    """Rows as csv.DictReader gives them, numbered by their first line (a quoted field may span lines)."""
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: a byte order mark is not the header's
        reader, header = csv.reader(f), None
        while True:
            first = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:  # text is decoded in blocks: the reader's line is not the bad byte's
                raise _not_utf8(path) from None
            except csv.Error as e:
                raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
            if header is None:
                header = values
            elif values:  # blank lines are skipped, as csv.DictReader does
                row = dict(zip(header, values, strict=False))  # rows may be shorter or longer
                row.update({h: None for h in header[len(values) :]})
                if len(values) > len(header):
                    row[None] = values[len(header) :]
                yield first, row


def _rows_arrow(path: Path) -> Iterator[tuple[int, object]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_file(str(path))
    except Exception as e:  # datasets and pyarrow raise several types for broken folders and files
        raise DataError(f"{path}: cannot read the dataset ({e})") from None
    rows, row = iter(ds), 0  # a Dataset: resolve_files gives a DatasetDict's split folders
    while True:
        try:
            value = next(rows)
        except StopIteration:
            return
        except Exception as e:  # batches are decoded while iterating: corrupt data fails here
            raise DataError(f"{path}: cannot read the dataset from row {row + 1} on ({e})") from None
        row += 1
        yield row, value


def iter_rows(path: Path, key: str | None = None) -> Iterator[tuple[int | str, object]]:
    """(where, row) pairs of one local file: where is the line for jsonl (the first line for csv),
    "element N" for a JSON array, the row number (from 1) for parquet and arrow.
    An unparsable line comes as a BadRow in place of the row.

    `key` limits columnar formats to that column; None reads whole rows."""
    if path.is_dir() or path.suffix == ".arrow":
        return _rows_arrow(path)
    return {
        ".jsonl": lambda: _rows_jsonl(path),
        ".jsonl.gz": lambda: _rows_jsonl(path),
        ".json": lambda: _rows_json(path),
        ".json.gz": lambda: _rows_json(path),
        ".parquet": lambda: _rows_parquet(path, key),
        ".csv": lambda: _rows_csv(path),
    }[_suffix(path)]()


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
