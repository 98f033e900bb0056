"""Llama-3 chat rendering: exact token ids, one BOS, loss only on assistant content + <|eot_id|>."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from data_prep.chat import IGNORE, encode_chat
from data_prep.records import iter_records
from data_prep.registry import resolve

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "datasets"
BOS, START, END, EOT, NL = 2042, 2044, 2045, 2046, 198  # tiny tokenizer ids
ADAPTER_SAMPLES = [
    {"name": "stem_zh_instruction", "path": "stem_zh_instruction.json"},
    {"adapter": "alpaca", "path": "oaast_sft_zh.jsonl"},
    {"name": "llama3_8b_chat", "path": "llama3_8b_chat.jsonl"},
    {"name": "swallow_instruct_v0_1", "path": "swallow_instruct.jsonl"},
    {"name": "oasst1_21k_ja", "path": "oasst1_21k_ja.jsonl"},
    {"name": "oasst2_en_top1", "path": "oasst2_messages.jsonl"},
]


@pytest.fixture(scope="module")
def tok():
    from train.model import TINY_TOKENIZER

    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)


def expected(tok, messages):
    """The Llama-3 layout built piece by piece: BOS, then header + content + <|eot_id|> per turn."""
    ids, labels = [BOS], [IGNORE]
    for m in messages:
        enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        header = [START, *enc(m["role"]), END, NL, NL]
        body = [*enc(m["content"].strip()), EOT]
        ids += header + body
        labels += [IGNORE] * len(header) + (body if m["role"] == "assistant" else [IGNORE] * len(body))
    return ids, labels


def test_literal_ids_for_a_short_chat(tok):
    ids, labels = encode_chat(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "2"}])
    assert ids == [
        BOS,
        START,
        391,
        271,
        END,
        NL,
        NL,
        39,
        72,
        EOT,
        START,
        345,
        1345,
        83,
        373,
        83,
        END,
        NL,
        NL,
        17,
        EOT,
    ]
    assert labels == [IGNORE] * 19 + [17, EOT]


@pytest.mark.parametrize("spec", ADAPTER_SAMPLES, ids=lambda s: s.get("name") or s["path"])
def test_one_sample_per_adapter(tok, spec):
    src = resolve(SimpleNamespace(**{**spec, "path": str(FIX / spec["path"])}))
    record = next(iter_records(src))
    ids, labels = encode_chat(tok, record["messages"])
    assert (ids, labels) == expected(tok, record["messages"])
    assert ids.count(BOS) == 1


def test_mixed_training_keeps_the_prompt(tok):
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    ids, labels = encode_chat(tok, msgs, train_on_prompt=True)
    assert labels == [IGNORE, *ids[1:]]


def test_a_template_that_adds_text_to_the_answer_is_refused(tok):
    bad = tok.chat_template.replace("message['content'] | trim", "message['content'] | trim + ' (end)'")
    clone = AutoTokenizer.from_pretrained(tok.name_or_path)
    clone.chat_template = bad
    with pytest.raises(ValueError, match="not exactly the assistant's content"):
        encode_chat(clone, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])


def test_special_token_strings_in_contents_are_refused(tok):
    msgs = [{"role": "user", "content": "What does <|eot_id|> mean?"}, {"role": "assistant", "content": "A"}]
    with pytest.raises(ValueError, match=r"turn 0 \(user\): content holds the special token '<\|eot_id\|>'"):
        encode_chat(tok, msgs)
