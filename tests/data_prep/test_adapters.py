"""Each adapter on a fixture in the dataset's real raw schema gives exactly the expected records;
bad rows raise with file and row, or are counted with on_error: skip."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from data_prep.errors import DataError
from data_prep.records import Skips, iter_records
from data_prep.registry import DATASETS, resolve

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "datasets"


def records(on_error: str = "raise", skips: Skips | None = None, **spec) -> list[dict]:
    return list(iter_records(resolve(SimpleNamespace(**spec)), on_error, skips))


def conv(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def test_text_corpora_syne_parquet_and_llm_jp_jsonl():
    folder = FIX / "syne/data/synthesis-en"
    syne = records(name="syne_synthesis_en", path=str(folder))
    raw = pq.read_table(folder / "train-00000-of-00001.parquet").column("text").to_pylist()
    assert [r["text"] for r in syne] == raw and len(raw) == 2
    assert [r["text"][:22] for r in syne] == ["Question: Why does ice", "Question: What is 12 t"]
    assert syne[0]["source"] == "syne_synthesis_en"
    assert syne[0]["id"].endswith("synthesis-en/train-00000-of-00001.parquet:1")
    ja = records(path=str(FIX / "llm_jp_corpus.jsonl"))
    assert [{k: r[k] for k in ("text",)} for r in ja] == [{"text": "東京は日本の首都です。"}]


@pytest.mark.parametrize(
    "mode, second",
    [
        (
            "system",
            conv(
                ("system", "将以下数字分类。"),
                ("user", "输入：\n2、4、6、8"),
                ("assistant", "这是一个偶数序列。"),
            ),
        ),
        (
            "concat",
            conv(("user", "将以下数字分类。\n输入：\n2、4、6、8"), ("assistant", "这是一个偶数序列。")),
        ),
    ],
)
def test_alpaca_input_mapping(mode, second):
    out = records(name="stem_zh_instruction", path=str(FIX / "stem_zh_instruction.json"), alpaca_input=mode)
    assert [r["messages"] for r in out] == [
        conv(("user", "为什么金属导电性好？"), ("assistant", "金属中存在大量自由电子。")),
        second,
    ]
    assert out[1]["id"].endswith("stem_zh_instruction.json:element 2")  # a JSON array's rows are elements


@pytest.mark.parametrize("mode", ["system", "concat"])
def test_alpaca_row_with_only_an_input_is_a_user_turn(tmp_path, mode):
    # system mode made an empty system turn of the missing instruction: a bad row that stopped preparation
    f = tmp_path / "rows.jsonl"
    f.write_text(
        json.dumps({"instruction": "", "input": "只有输入", "output": "好"}, ensure_ascii=False) + "\n"
    )
    (out,) = records(adapter="alpaca", path=str(f), alpaca_input=mode)
    assert [(m["role"], m["content"].strip()) for m in out["messages"]] == [
        ("user", "只有输入"),
        ("assistant", "好"),
    ]


def test_alpaca_history_pairs_come_first():
    (out,) = records(adapter="alpaca", path=str(FIX / "oaast_sft_zh.jsonl"))
    assert out["messages"] == conv(
        ("user", "请给我写一个面试准备计划"),
        ("assistant", "首先，了解公司。"),
        ("user", "谢谢"),
        ("assistant", "不用谢！"),
    )


def test_alpaca_history_keeps_every_pair_in_order(tmp_path):
    f = tmp_path / "rows.jsonl"
    row = {"instruction": "U3", "input": "", "output": "A3", "history": [["U1", "A1"], ["U2", "A2"]]}
    f.write_text(json.dumps(row) + "\n")
    (out,) = records(adapter="alpaca", path=str(f))
    assert out["messages"] == conv(
        ("user", "U1"),
        ("assistant", "A1"),
        ("user", "U2"),
        ("assistant", "A2"),
        ("user", "U3"),
        ("assistant", "A3"),
    )


def test_messages_dialog_as_json_string_and_list():
    out = records(name="llama3_8b_chat", path=str(FIX / "llama3_8b_chat.jsonl"))
    assert [r["messages"] for r in out] == [
        conv(("system", "你是一个助手。"), ("user", "你好"), ("assistant", "你好！有什么可以帮你？")),
        conv(("user", "1+1=?"), ("assistant", "2")),
    ]


def test_swallow_conversation_singular_key():
    (out,) = records(name="swallow_instruct_v0_1", path=str(FIX / "swallow_instruct.jsonl"))
    assert out["messages"] == conv(
        ("user", "日本の首都は？"),
        ("assistant", "東京です。"),
        ("user", "人口は？"),
        ("assistant", "約1400万人です。"),
    )


def test_sharegpt_oasst1_ja():
    (out,) = records(name="oasst1_21k_ja", path=str(FIX / "oasst1_21k_ja.jsonl"))
    assert out["messages"] == conv(
        ("user", "モナドとは何ですか？"), ("assistant", "計算を連結するための構造です。")
    )


def test_oasst2_top1_threads_and_language_filter():
    out = records(name="oasst2_en_top1", path=str(FIX / "oasst2_messages.jsonl"))
    assert [r["messages"] for r in out] == [
        # rank-1 and deleted answers, a second prompter leaf, unranked sibling answers and the trees whose
        # root failed review are not threads
        conv(
            ("user", "What is a monad?"),
            ("assistant", "A monad chains computations."),
            ("user", "Give an example."),
            ("assistant", "Maybe is a monad."),
        ),
        # a lone unranked answer is kept; the first prompter reply after it is popped
        conv(("user", "Name a prime."), ("assistant", "Seven.")),
    ]
    everything = records(name="oasst2_en_top1", path=str(FIX / "oasst2_messages.jsonl"), langs=["en", "de"])
    assert len(everything) == 3  # the German tree too; not-ready and synthetic trees never
    with pytest.raises(DataError, match="source 'oasst2_en_top1' has no usable rows"):
        records(name="oasst2_en_top1", path=str(FIX / "oasst2_messages.jsonl"), langs=["fr"])


def test_the_oasst_export_read_twice_is_refused_not_multiplied(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):  # e.g. a snapshot holding the parquet files and the export
        (tmp_path / name).write_text((FIX / "oasst2_messages.jsonl").read_text())
    with pytest.raises(
        DataError, match=rf"b.jsonl:1: message_id '\S+' again \(first at {tmp_path}/a.jsonl:1\)"
    ):
        records(name="oasst2_en_top1", path=str(tmp_path))
    skips = Skips()
    once = records(name="oasst2_en_top1", path=str(FIX / "oasst2_messages.jsonl"))
    twice = records("skip", skips, name="oasst2_en_top1", path=str(tmp_path))
    assert [r["messages"] for r in twice] == [r["messages"] for r in once]
    assert skips.count == len((FIX / "oasst2_messages.jsonl").read_text().splitlines())


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("text", 5, "field 'text' must be a string, found int"),
        ("rank", "0", "field 'rank' must be a number or null, found str"),
        ("parent_id", ["a"], "field 'parent_id' must be a string or null, found list"),
        ("created_date", 20230101, "field 'created_date' must be a string or null, found int"),
    ],
)
def test_bad_oasst_field_types_name_file_and_row(tmp_path, field, value, reason):
    rows = [json.loads(line) for line in (FIX / "oasst2_messages.jsonl").read_text().splitlines()]
    rows[1][field] = value
    f = tmp_path / "o.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"o.jsonl:2: {reason}"):
        records(adapter="oasst_top1", path=str(f))
    skips = Skips()
    assert len(records("skip", skips, adapter="oasst_top1", path=str(f))) == 2  # of 3: its thread is lost
    assert skips.count == 1


def test_every_named_dataset_has_a_known_adapter():
    assert len([n for n in DATASETS if n.startswith("syne_")]) == 12
    for name in DATASETS:
        assert resolve(SimpleNamespace(name=name)).hub_id == DATASETS[name].hub_id


def test_oasst2_top1_reads_both_hub_splits_in_english():
    # the top-1 derivation uses train and validation together (datasets.md section 7)
    source = resolve(SimpleNamespace(name="oasst2_en_top1"))
    assert (source.hub_id, source.split, source.options.langs) == (
        "OpenAssistant/oasst2",
        "train+validation",
        ("en",),
    )


def test_data_files_select_files_of_the_hub_repo_or_of_a_local_snapshot():
    web_cn = "data/web-cn/*.parquet"
    assert resolve(SimpleNamespace(name="syne_web_cn")).data_files == web_cn
    glob = "20231101.ja/*.parquet"
    own = resolve(SimpleNamespace(hub_id="wikimedia/wikipedia", data_files=glob))
    assert (own.hub_id, own.data_files) == ("wikimedia/wikipedia", glob)
    # the ruozhiba repo holds each question twice (two answer files): one file is read
    assert resolve(SimpleNamespace(name="ruozhiba_gpt4")).data_files == "ruozhiba_qa2449_gpt4o.json"
    assert resolve(SimpleNamespace(name="ruozhiba_gpt4", data_files="x.json")).data_files == "x.json"
    # a local snapshot of the whole SynE repo reads only the entry's folder; a folder path stays as given
    snapshot = FIX / "syne"
    assert resolve(SimpleNamespace(name="syne_web_cn", path=str(snapshot))).path == str(snapshot / web_cn)
    folder = str(snapshot / "data" / "book-cn")
    assert resolve(SimpleNamespace(name="syne_web_cn", path=folder)).path == folder
    with pytest.raises(DataError, match="the snapshot has no data/math-en/\\*.parquet for 'syne_math_en'"):
        resolve(SimpleNamespace(name="syne_math_en", path=str(snapshot)))  # the fixture lacks that folder


def test_a_local_snapshot_of_ruozhiba_reads_only_the_gpt4o_answers(tmp_path):
    for name in ("ruozhiba_qa2449_gpt4o.json", "ruozhiba_qa2449_gpt4t.json", "README.md"):
        (tmp_path / name).write_text("[]")
    assert resolve(SimpleNamespace(name="ruozhiba_gpt4", path=str(tmp_path))).path == str(
        tmp_path / "ruozhiba_qa2449_gpt4o.json"
    )
    (tmp_path / "ruozhiba_qa2449_gpt4o.json").unlink()  # a folder of the user's own files stays as given
    assert resolve(SimpleNamespace(name="ruozhiba_gpt4", path=str(tmp_path))).path == str(tmp_path)


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"instruction": "q", "input": ""}', "field 'output' is missing"),
        ('{"instruction": 5, "input": "", "output": "a"}', "field 'instruction' must be a string, found int"),
        ('{"instruction": "q", "input": "", "output": "  "}', r"turn 1 \(assistant\): content is empty"),
    ],
)
def test_bad_alpaca_rows_name_file_and_row(tmp_path, line, reason):
    f = tmp_path / "a.jsonl"
    f.write_text('{"instruction": "q", "input": "", "output": "a"}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"a.jsonl:2: {reason}"):
        records(adapter="alpaca", path=str(f))


def test_bad_conversations(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text(
        '{"messages": []}\n'
        '{"messages": [{"role": "user", "content": "hi"}]}\n'
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        '{"messages": [\n'
    )
    with pytest.raises(DataError, match=r"m.jsonl:1: the conversation is empty"):
        records(adapter="messages", path=str(f))
    skips = Skips()
    out = records("skip", skips, adapter="messages", path=str(f))
    assert len(out) == 1 and skips.count == 3
    assert skips.reasons[1].endswith("m.jsonl:2: the conversation does not end with an assistant turn")
    assert "m.jsonl:4: line is not valid JSON" in skips.reasons[2]


def test_sharegpt_rows_read_as_messages_name_the_adapter_that_reads_them(tmp_path):
    # llama3_8b_chat's schema is unconfirmed: if its rows are ShareGPT, the error says what to set
    f = tmp_path / "c.jsonl"
    f.write_text('{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}\n')
    with pytest.raises(
        DataError, match=r"c.jsonl:1: no conversation field .*set the source's adapter: sharegpt"
    ):
        records(adapter="messages", path=str(f))
    assert records(adapter="sharegpt", path=str(f))[0]["messages"][1] == {
        "role": "assistant",
        "content": "yo",
    }


def test_empty_after_filtering_and_unknown_names(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text('{"messages": []}\n')
    with pytest.raises(DataError, match="has no usable rows .1 skipped as bad"):
        records("skip", adapter="messages", path=str(f))
    with pytest.raises(DataError, match="Did you mean 'alpaca_zh'"):
        resolve(SimpleNamespace(name="alpaca_zn"))
    with pytest.raises(DataError, match="Did you mean 'sharegpt'"):
        resolve(SimpleNamespace(path="x", adapter="sharegtp"))


GOOD = {
    "text": {"text": "ok"},
    "alpaca": {"instruction": "q", "input": "", "output": "a"},
    "messages": {"messages": conv(("user", "hi"), ("assistant", "yo"))},
    "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
}


@pytest.mark.parametrize(
    "adapter, row, reason",
    [
        ("text", {"text": "bad \ud800 x"}, r"field 'text' holds a lone surrogate \(\\ud800 at character 4\)"),
        ("alpaca", {"instruction": "q", "input": "", "output": "a \udfff"}, "field 'output' holds a lone"),
        (
            "alpaca",
            {"instruction": "q", "output": "a", "history": [["h \ud83d", "a"]]},
            r"history\[0\] holds",
        ),
        (
            "messages",
            {"messages": conv(("user", "hi \udc00"), ("assistant", "ok"))},
            "turn 0: 'content' holds",
        ),
        (
            "messages",
            {"dialog": json.dumps(conv(("user", "hi"), ("assistant", "\ud800")))},
            "turn 1: 'content'",
        ),
        ("sharegpt", {"conversations": [{"from": "human", "value": "\ud800"}]}, "turn 0: 'value' holds"),
    ],
)
def test_a_lone_surrogate_is_a_bad_row(tmp_path, adapter, row, reason):
    # valid JSON ("\ud800" escaped), but not Unicode text: the tokenizer would fail with a TypeError
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps(row) + "\n" + json.dumps(GOOD[adapter]) + "\n")
    with pytest.raises(DataError, match=rf"s.jsonl:1: {reason}"):
        records(adapter=adapter, path=str(f))
    skips = Skips()
    assert [r["id"] for r in records("skip", skips, adapter=adapter, path=str(f))] == [f"{f}:2"]
    assert skips.count == 1 and "lone surrogate" in skips.reasons[0]
    skips.reasons[0].encode("utf-8")  # the reason itself can be logged and written to the manifest


def test_a_lone_surrogate_in_oasst_text_is_a_bad_row(tmp_path):
    f = tmp_path / "o.jsonl"
    row = {"message_id": "m", "parent_id": None, "message_tree_id": "t", "role": "prompter", "text": "\udc00"}
    f.write_text(json.dumps(row) + "\n")
    skips = Skips()
    with pytest.raises(DataError, match="has no usable rows"):
        records("skip", skips, adapter="oasst_top1", path=str(f))
    assert skips.reasons == [
        f"{f}:1: field 'text' holds a lone surrogate (\\udc00 at character 0), which is not valid Unicode text"
    ]


def test_deeply_nested_dialog_string_is_a_bad_row(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"dialog": "[" * 100_000}) + "\n")
    with pytest.raises(
        DataError, match=r"d.jsonl:1: field 'dialog' is a string but not a JSON list of turns"
    ):
        records(adapter="messages", path=str(f))
