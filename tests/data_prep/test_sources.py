"""Bad input is reported with the file, the row and the fix; good input of each format is read."""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.adapters import MESSAGE_KEYS
from data_prep.errors import DataError
from data_prep.records import Skips, iter_records
from data_prep.registry import resolve
from data_prep.shards import prepare
from data_prep.sources import CONVERSATION_KEYS, iter_rows, source_identity
from train.model import TINY_TOKENIZER


@dataclass
class Spec:
    path: str | None = None
    text_key: str = "text"
    split: str | None = None


@dataclass
class Data:
    sources: list
    seq_len: int
    cache_dir: object


def _docs(path, **kw):
    return [r["text"] for r in iter_records(resolve(Spec(path=str(path), **kw)))]


def test_reads_jsonl_json_parquet_csv_and_globs(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "meta": {"url": "x"}}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"content": "three"}]))
    pq.write_table(pa.table({"text": ["four", "five"], "id": [1, 2]}), tmp_path / "c.parquet")
    (tmp_path / "d.csv").write_text("text,lang\nsix,en\n")
    assert _docs(tmp_path / "a.jsonl") == ["one", "two"]
    assert _docs(tmp_path / "b.json", text_key="content") == ["three"]
    assert _docs(tmp_path / "c.parquet") == ["four", "five"]
    assert _docs(tmp_path / "d.csv") == ["six"]
    assert _docs(tmp_path / "*.jsonl") == ["one", "two"]


def test_reads_a_save_to_disk_folder_and_an_arrow_file(tmp_path):
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"text": ["one", "two"], "id": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    assert _docs(tmp_path / "ds") == ["one", "two"]
    (arrow,) = (tmp_path / "ds").glob("*.arrow")
    assert _docs(arrow) == ["one", "two"]


def test_a_datasetdict_folder_gives_only_the_configured_split(tmp_path):
    datasets.disable_progress_bars()
    splits = {"train": ["t1", "t2"], "test": ["x1"], "validation": ["v1"]}
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {name: datasets.Dataset.from_dict({"text": texts}) for name, texts in splits.items()}
    ).save_to_disk(str(folder))
    assert _docs(folder) == ["t1", "t2"]  # the default split
    assert _docs(folder, split="test") == ["x1"]
    assert _docs(folder, split="train+validation") == ["t1", "t2", "v1"]
    ids = [r["id"] for r in iter_records(resolve(Spec(path=str(folder), split="test")))]
    assert ids == [f"{folder / 'test'}:1"]
    identity = {
        split: source_identity(resolve(Spec(path=str(folder), split=split))) for split in ("test", "train")
    }
    assert identity["test"] != identity["train"]
    with pytest.raises(
        DataError, match=rf"{folder}: no split 'dev' .*its splits are: train, test, validation"
    ):
        _docs(folder, split="dev")
    plain = tmp_path / "rows.jsonl"  # a file has no splits: its every row would train
    plain.write_text('{"text": "a"}\n')
    with pytest.raises(
        DataError, match=rf"split 'test' selects a split .* and {plain} is neither: drop split"
    ):
        resolve(Spec(path=str(plain), split="test"))


def test_a_hub_source_is_identified_by_its_files_and_revision():
    def hub(**kw):
        return source_identity(resolve(SimpleNamespace(hub_id="wikimedia/wikipedia", **kw)))

    glob = "20231101.ja/*.parquet"
    assert hub(data_files=glob) != hub() and hub(data_files=glob, revision="b04c8d1") != hub(data_files=glob)
    assert hub(revision="b04c8d1")["revision"] == "b04c8d1"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"text": "ok"}\n{"text": "broken\n', r":2: line is not valid JSON"),
        ('{"text": null}\n', r":1: field 'text' is null \(adapter"),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path, text, error):
    f = tmp_path / "bad.jsonl"
    f.write_text(text)
    with pytest.raises(DataError, match=rf"{f}{error}"):
        _docs(f)


def test_invalid_utf8_is_a_bad_row_in_jsonl_and_a_file_error_in_json_and_csv(tmp_path):
    f = tmp_path / "bytes.jsonl"
    f.write_bytes(b'{"text": "ok"}\n{"text": "caf\xff"}\n{"text": "after"}\n')
    with pytest.raises(DataError, match=rf"{f}:2: line is not valid UTF-8 \(byte 14\)"):
        _docs(f)
    skips = Skips()
    assert [r["text"] for r in iter_records(resolve(Spec(path=str(f))), "skip", skips)] == ["ok", "after"]
    assert skips.count == 1
    for name, body in (
        ("bytes.json", b'[{"text": "ok"},\n{"text": "\xff"}]'),
        ("bytes.csv", b"text\n\xff\n"),
    ):
        (tmp_path / name).write_bytes(body)
        with pytest.raises(DataError, match=rf"{tmp_path / name}.*not valid UTF-8"):
            _docs(tmp_path / name)


def test_a_bad_byte_in_csv_names_its_line(tmp_path):
    f = tmp_path / "bytes.csv"
    f.write_bytes(b"text\ncaf\xff\n")
    with pytest.raises(DataError, match=rf"{f}:2: not valid UTF-8"):
        _docs(f)
    f.write_bytes(b"text\n" + b"ok\n" * 10_000 + b"caf\xff\n")  # past the first decoded block
    with pytest.raises(DataError, match=rf"{f}:10002: not valid UTF-8"):
        _docs(f)


@pytest.mark.parametrize("body", ["5", "null", '"a string"'])
def test_json_that_is_not_an_array_is_an_error(tmp_path, body):
    f = tmp_path / "rows.json"
    f.write_text(body)
    with pytest.raises(
        DataError, match=rf"{f}: a JSON file must hold an array of objects \(or be JSON lines\)"
    ):
        _docs(f)


def test_a_broken_json_array_names_its_line_and_is_never_read_as_json_lines(tmp_path):
    f = tmp_path / "rows.json"
    lines = json.dumps([{"text": f"row {i}"} for i in range(50)], indent=2).splitlines()
    lines[92] = lines[92].replace(":", "", 1)  # line 93: '"text" "row 30"'
    f.write_text("\n".join(lines))
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError, match=rf"{f}:93: not valid JSON \(Expecting ':' delimiter"):
            list(iter_records(resolve(Spec(path=str(f))), on_error))
    f.write_text(json.dumps({"data": [{"text": "a"}, {"text": "b"}]}, indent=2).replace('"b"', "b"))
    with pytest.raises(DataError, match=rf"{f}:7: not valid JSON \(Expecting value"):  # a wrapper, too
        _docs(f)
    f.write_text('{"text": "one"}\n{"text": "two"}\n')  # JSON lines named .json still read
    assert _docs(f) == ["one", "two"]
    f.write_text('{"text": "one"\n{"text": "two"}\n')  # its first row broken: still JSON lines
    skips = Skips()
    assert [r["text"] for r in iter_records(resolve(Spec(path=str(f))), "skip", skips)] == ["two"]
    assert skips.count == 1 and skips.reasons[0].startswith(f"{f}:1:")


def test_unsupported_file_extension_lists_the_supported_ones(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("some text\n")
    with pytest.raises(
        DataError,
        match=rf"{f}: unsupported file type; .*\.arrow, \.csv, \.json, \.json\.gz, \.jsonl, \.jsonl\.gz, \.parquet",
    ):
        _docs(f)


def test_long_csv_fields_are_read_and_csv_errors_name_the_line(tmp_path):
    f = tmp_path / "long.csv"
    f.write_text("text,lang\nshort,en\n" + "x" * 200_000 + ",en\n")
    assert [len(d) for d in _docs(f)] == [5, 200_000]
    old = csv.field_size_limit(1000)  # any other csv.Error is a DataError with file and line too
    try:
        with pytest.raises(DataError, match=rf"{f}:3: not valid CSV \(field larger than field limit"):
            _docs(f)
    finally:
        csv.field_size_limit(old)


def test_folders_named_like_data_files_are_not_data_files(tmp_path):
    (tmp_path / "d" / "sub.jsonl").mkdir(parents=True)
    with pytest.raises(DataError, match="matches no data file"):
        source_identity(resolve(Spec(path=str(tmp_path / "d"))))
    with pytest.raises(DataError, match="matches no data file"):
        _docs(tmp_path / "d" / "*.jsonl")
    (tmp_path / "d" / "a.jsonl").write_text('{"text": "one"}\n')
    assert [
        Path(f).name for f, _, _ in source_identity(resolve(Spec(path=str(tmp_path / "d"))))["files"]
    ] == ["a.jsonl"]
    assert _docs(tmp_path / "d") == _docs(tmp_path / "d" / "*.jsonl") == ["one"]


def test_a_broken_dataset_folder_or_arrow_file_names_the_path(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "state.json").write_text('{"bogus": true}')
    with pytest.raises(DataError, match=rf"{folder}: cannot read the dataset"):
        _docs(folder)
    f = tmp_path / "garbage.arrow"
    f.write_bytes(b"not an arrow file at all")
    with pytest.raises(DataError, match=rf"{f}: cannot read the dataset"):
        _docs(f)


def test_missing_text_field_lists_existing_fields(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"content": "a", "url": "u"}\n')
    with pytest.raises(
        DataError, match=r"x.jsonl:1: text field 'text' is missing; the row has: content, url"
    ):
        _docs(f)


def test_missing_parquet_column_lists_columns(tmp_path):
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"text column 'text' not found; the columns are: body"):
        _docs(tmp_path / "p.parquet")


def test_non_string_text_is_rejected(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": 5}\n')
    with pytest.raises(DataError, match=r"x.jsonl:1: field 'text' must be a string, found int"):
        _docs(f)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="matches no data file"):
        _docs(tmp_path / "nope.jsonl")


def test_empty_dataset_is_an_error(tmp_path):
    from transformers import AutoTokenizer

    f = tmp_path / "empty.jsonl"
    f.write_text('{"text": ""}\n')
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    with pytest.raises(DataError, match="no text in the data source"):
        prepare(Data([Spec(path=str(f))], 16, tmp_path / "cache"), tok)
    assert not any((tmp_path / "cache").iterdir())  # nothing half-built left behind


def test_cache_is_reused_and_rebuilt_when_data_changes(tmp_path):
    from transformers import AutoTokenizer

    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"text": f"document number {i} " * 5}) + "\n" for i in range(20)))
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    first = prepare(Data([Spec(path=str(f))], 32, tmp_path / "cache"), tok)
    again = prepare(Data([Spec(path=str(f))], 32, tmp_path / "cache"), tok)
    assert again.shards[0].folder == first.shards[0].folder
    f.write_text(f.read_text() + json.dumps({"text": "one more"}) + "\n")
    assert (
        prepare(Data([Spec(path=str(f))], 32, tmp_path / "cache"), tok).shards[0].folder
        != first.shards[0].folder
    )
    batch = first.batch([0, 1])
    assert batch["input_ids"][0, 0].item() == tok.bos_token_id
    assert batch["input_ids"].shape == (2, 32)


def _where(path, **kw):
    return [r["id"].rsplit(":", 1)[1] for r in iter_records(resolve(Spec(path=str(path), **kw)))]


def test_a_corrupt_parquet_page_names_the_file_and_the_row_reached(tmp_path):
    f = tmp_path / "c.parquet"
    texts = [f"document {i} " + "word " * (i % 7) for i in range(4200)]  # a batch is 4096 rows
    pq.write_table(
        pa.table({"text": texts}), f, row_group_size=4096, compression="snappy", use_dictionary=False
    )
    chunk = pq.ParquetFile(f).metadata.row_group(1).column(0)
    end = chunk.data_page_offset + chunk.total_compressed_size
    body = bytearray(f.read_bytes())
    body[end - 40 : end] = b"\xff" * 40  # the second row group's page data; the footer stays readable
    f.write_bytes(bytes(body))
    with pytest.raises(DataError, match=rf"{f}: cannot read parquet data from row 4097 on \(.+\)"):
        _docs(f)


def test_a_corrupt_arrow_batch_names_the_file_and_the_row_reached(tmp_path, monkeypatch):
    f = tmp_path / "d.arrow"
    f.write_bytes(b"")

    def broken():  # what a bad record batch does: raise while the rows are iterated
        yield {"text": "one"}
        raise OSError("Invalid IPC message")

    monkeypatch.setattr(datasets.Dataset, "from_file", lambda path: broken())
    with pytest.raises(
        DataError, match=rf"{f}: cannot read the dataset from row 2 on \(Invalid IPC message\)"
    ):
        _docs(f)


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path):
    bom = "\ufeff"
    (tmp_path / "a.csv").write_text(f"{bom}text,id\nhello,1\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(f'{bom}{{"text": "one"}}\n{{"text": "two"}}\n', encoding="utf-8")
    (tmp_path / "c.json").write_text(f'{bom}[{{"text": "three"}}]', encoding="utf-8")
    (tmp_path / "d.json").write_text(f'{bom}{{"text": "four"}}\n{{"text": "five"}}\n', encoding="utf-8")
    assert _docs(tmp_path / "a.csv") == ["hello"]
    assert _docs(tmp_path / "b.jsonl") == ["one", "two"]
    assert _docs(tmp_path / "c.json") == ["three"]
    assert _docs(tmp_path / "d.json") == ["four", "five"]


def test_gzipped_json_lines_and_json_are_read_like_plain_ones(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "one"}\n')
    with gzip.open(folder / "b.jsonl.gz", "wt", encoding="utf-8") as g:
        g.write('{"text": "two"}\n\n{"text": "three"}\n')
    with gzip.open(folder / "c.json.gz", "wt", encoding="utf-8") as g:  # mC4's name for JSON lines
        g.write('{"text": "four"}\n{"text": "five"}\n')
    with gzip.open(folder / "d.json.gz", "wt", encoding="utf-8") as g:
        g.write('[{"text": "six"}]')
    (folder / "README.md").write_text("not data")
    assert _docs(folder) == ["one", "two", "three", "four", "five", "six"]
    assert _where(folder / "b.jsonl.gz") == ["1", "3"]
    assert _docs(folder / "*.gz") == ["two", "three", "four", "five", "six"]
    assert len(source_identity(resolve(Spec(path=str(folder))))["files"]) == 4


def test_a_truncated_gzip_file_names_the_file_and_the_line_reached(tmp_path):
    f = tmp_path / "b.jsonl.gz"
    f.write_bytes(gzip.compress("".join(f'{{"text": "row {i}"}}\n' for i in range(2000)).encode())[:-200])
    with pytest.raises(DataError, match=rf"{f}:\d+: cannot read the file from this line on \(.+\)"):
        _docs(f)


def test_data_files_in_a_format_that_is_not_read_are_an_error_naming_them(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"text": "one"}\n')
    (folder / "sub" / "b.jsonl.zst").write_bytes(b"zstd")
    (folder / "c.csv.gz").write_bytes(gzip.compress(b"text\ntwo\n"))
    match = rf"{folder}: 2 file\(s\) look like data in a format that is not read: {folder / 'c.csv.gz'}, "
    with pytest.raises(DataError, match=match + rf"{folder / 'sub' / 'b.jsonl.zst'}\. Data files end in"):
        source_identity(resolve(Spec(path=str(folder))))
    with pytest.raises(DataError, match=r"1 file\(s\) look like data .*c\.csv\.gz"):
        _docs(folder / "*")
    assert _docs(folder / "*.jsonl") == ["one"]  # a glob selects what to read
    with pytest.raises(DataError, match=rf"{folder / 'c.csv.gz'}: unsupported file type"):
        _docs(folder / "c.csv.gz")


def test_csv_rows_are_numbered_by_their_first_line(tmp_path):
    f = tmp_path / "ml.csv"
    f.write_text('text,id\n"multi\nline\nrow",1\n\nok,2\n"two\nlines",3\nlast,4\n')
    assert _where(f) == ["2", "6", "7", "9"]
    assert _docs(f) == ["multi\nline\nrow", "ok", "two\nlines", "last"]
    for body in ('text,id\n"multi\nline",1\n\nok,2\n', "text,id\nshort\nlong,1,extra\n"):
        f.write_text(body)  # blank lines, short and long rows: the same rows as csv.DictReader gives
        with f.open(newline="") as g:
            assert [r for _, r in iter_rows(f)] == list(csv.DictReader(g))


def test_a_json_object_is_one_row_unless_it_wraps_one_array_of_rows(tmp_path):
    f = tmp_path / "rows.json"
    f.write_text('{"text": "only"}')  # one row, as the same line in a JSON lines file is
    assert _docs(f) == ["only"]
    chat = {"id": 7, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    f.write_text(json.dumps(chat, indent=2))  # its one array is the conversation, not a list of rows
    assert [r for _, r in iter_rows(f)] == [chat]
    f.write_text(json.dumps({"version": "1", "data": [{"text": "a"}, {"text": "b"}]}))
    assert _docs(f) == ["a", "b"]
    alpaca = {"instruction": "and then?", "output": "done", "history": [["hi", "yo"]]}
    tagged = {"text": "doc", "tags": ["news", "zh"], "scores": []}
    for row in (alpaca, tagged):  # arrays of strings, pairs or nothing are the row's own fields
        f.write_text(json.dumps(row))
        assert [r for _, r in iter_rows(f)] == [row]
    f.write_text(json.dumps({"data": []}))
    assert list(iter_rows(f)) == []
    f.write_text(json.dumps({"train": [{"text": "a"}], "test": [{"text": "b"}], "tags": ["x"]}))
    with pytest.raises(
        DataError, match=rf"{f}: a JSON object holding several arrays of rows \(train, test\)"
    ):
        _docs(f)


def test_conversation_keys_cover_the_adapters_fields():
    assert set(MESSAGE_KEYS) | {"conversations"} <= set(CONVERSATION_KEYS)


def test_json_array_rows_are_named_by_element(tmp_path):
    f = tmp_path / "rows.json"
    f.write_text(json.dumps([{"text": "one"}, {"text": "two"}], indent=2))  # pretty-printed: not lines
    assert _where(f) == ["element 1", "element 2"]
    f.write_text(json.dumps([{"text": "one"}, {"txt": "two"}], indent=2))
    with pytest.raises(DataError, match=rf"{f}:element 2: text field 'text' is missing"):
        _docs(f)


def test_deeply_nested_json_is_a_bad_row_or_a_file_error(tmp_path):
    f = tmp_path / "deep.jsonl"
    f.write_text('{"text": "ok"}\n' + "[" * 200_000 + "\n")
    with pytest.raises(DataError, match=rf"{f}:2: line is not valid JSON \(nested too deeply\)"):
        _docs(f)
    skips = Skips()
    assert [r["text"] for r in iter_records(resolve(Spec(path=str(f))), "skip", skips)] == ["ok"]
    assert skips.count == 1
    g = tmp_path / "deep.json"
    g.write_text("[" * 200_000)
    with pytest.raises(DataError, match=rf"{g}: not valid JSON \(nested too deeply\)"):
        _docs(g)
