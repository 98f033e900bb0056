"""Llama-3 chat rendering: exact token ids, one BOS, loss only on assistant content + <|eot_id|>."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from data_prep.chat import IGNORE, TEMPLATE_DATE, encode_chat
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


def test_a_template_that_writes_todays_date_renders_the_same_every_time(tok):
    # Llama-3.2's pattern, with a clock fine enough to differ between two renders
    dated = (
        '{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y %H:%M:%S.%f") %}'
        "{%- endif %}{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date_string }}"
        "<|eot_id|>"
    )
    clone = AutoTokenizer.from_pretrained(tok.name_or_path)
    clone.chat_template = dated + tok.chat_template.replace("bos_token + content", "content")
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    first, second = encode_chat(clone, chat), encode_chat(clone, chat)
    assert first == second
    assert f"Today Date: {TEMPLATE_DATE}" in tok.decode(first[0])


def test_special_token_strings_in_contents_are_refused(tok):
    msgs = [{"role": "user", "content": "What does <|eot_id|> mean?"}, {"role": "assistant", "content": "A"}]
    with pytest.raises(ValueError, match=r"turn 0 \(user\): content holds the special token '<\|eot_id\|>'"):
        encode_chat(tok, msgs)


LLAMA31_LIKE = (  # a shipped template that adds a dated system turn, as Llama-3.1's does
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023<|eot_id|>"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}"
    "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _tokenizer_folder(tmp_path: Path, template: str | None) -> Path:
    import shutil

    from train.model import TINY_TOKENIZER

    folder = tmp_path / "tokenizer"
    shutil.copytree(TINY_TOKENIZER, folder)
    (folder / "chat_template.jinja").unlink()
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    return folder


def test_the_llama3_format_is_pinned_unless_the_tokenizers_own_is_asked_for(tmp_path):
    from train.config import ModelConfig
    from train.model import LLAMA3_CHAT_TEMPLATE, TINY_TOKENIZER, build_tokenizer

    assert (TINY_TOKENIZER / "chat_template.jinja").read_text() == LLAMA3_CHAT_TEMPLATE.read_text()
    folder = _tokenizer_folder(tmp_path, LLAMA31_LIKE)
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "2"}]
    pinned = build_tokenizer(ModelConfig(preset="llama3_tiny", dtype="fp32", tokenizer=str(folder)))
    assert encode_chat(pinned, chat) == expected(pinned, chat)
    own = build_tokenizer(
        ModelConfig(preset="llama3_tiny", dtype="fp32", tokenizer=str(folder), chat_template="tokenizer")
    )
    assert "Cutting Knowledge Date" in own.decode(encode_chat(own, chat)[0])


def test_chat_data_without_a_template_names_the_source_and_the_fix(tmp_path):
    from data_prep.errors import DataError
    from data_prep.shards import prepare
    from tests.conftest import SMOKE
    from train.config import load_config
    from train.model import build_tokenizer

    folder = _tokenizer_folder(tmp_path, None)
    overrides = [
        f"data.cache_dir={tmp_path / 'cache'}",
        f"model.tokenizer={folder}",
        "model.chat_template=tokenizer",
    ]
    cfg = load_config(SMOKE.with_name("sft_tiny.yaml"), overrides)
    with pytest.raises(
        DataError, match=r"chat data needs a chat template .*\(set model.chat_template: llama3\)"
    ):
        prepare(cfg.data, build_tokenizer(cfg.model))


def test_the_llama3_format_needs_the_llama3_special_tokens(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from train.config import ModelConfig
    from train.errors import UserError
    from train.model import build_tokenizer

    vocab = {"<unk>": 0, "<s>": 1, "hi": 2}
    plain = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")), bos_token="<s>"
    )
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(
        UserError,
        match=r"lacks \['<\|start_header_id\|>', '<\|end_header_id\|>', '<\|eot_id\|>'\]: set model.chat_template: tokenizer",
    ):
        build_tokenizer(ModelConfig(preset="llama3_tiny", dtype="fp32", tokenizer=str(tmp_path / "plain")))
