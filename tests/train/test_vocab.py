"""Vocabulary expansion for CPT: new rows start as the mean of their pieces, and the exported model
and tokenizer know the new tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import SMOKE, run_entry
from train.config import load_config
from train.model import build_for_training, build_model, build_tokenizer

NEW = ["東京都庁", "continualm", "ステップごとの答え"]


@pytest.fixture
def token_file(tmp_path):
    f = tmp_path / "new_tokens.txt"
    # "the" and 東京 are tokens already (東京's vocabulary key is its byte symbols): skipped
    f.write_text("\n".join([*NEW, "the", "東京", ""]) + "\n")
    return f


def test_new_rows_are_the_mean_of_their_pieces(token_file):
    cfg = load_config(SMOKE, [f"model.add_tokens={token_file}"])
    torch.manual_seed(cfg.seed)
    base_tok = build_tokenizer(cfg.model.model_copy(update={"add_tokens": None}))
    model = build_for_training(cfg)
    tok = build_tokenizer(cfg.model)
    assert len(tok) == len(base_tok) + 3 == model.config.vocab_size
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    for token in NEW:
        new_id = tok.convert_tokens_to_ids(token)
        pieces = base_tok(token, add_special_tokens=False)["input_ids"]
        assert len(pieces) > 1 and new_id >= len(base_tok)
        torch.testing.assert_close(emb[new_id], emb[pieces].mean(0), rtol=0, atol=0)
        torch.testing.assert_close(head[new_id], head[pieces].mean(0), rtol=0, atol=0)
    assert emb.requires_grad and head.requires_grad


@pytest.mark.slow
def test_exported_model_and_tokenizer_round_trip_new_tokens(tmp_path, data_cache, token_file):
    out = tmp_path / "run"
    r = run_entry(
        "train.py",
        "--config",
        str(SMOKE),
        "--set",
        f"output_dir={out}",
        "--set",
        f"data.cache_dir={data_cache}",
        "--set",
        f"model.add_tokens={token_file}",
        "--set",
        "train.max_steps=2",
        "--set",
        "tracking=none",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    tok = AutoTokenizer.from_pretrained(out / "export")
    model = AutoModelForCausalLM.from_pretrained(out / "export")
    assert model.config.vocab_size == len(tok)
    assert model.config.continualm_added_tokens["count"] == 3
    text = "答え: 東京都庁 uses continualm"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("東京都庁") in ids and tok.convert_tokens_to_ids("continualm") in ids
    assert tok.decode(ids) == text


@pytest.mark.parametrize("rows", [2056, 2049])  # padding with room for the new tokens, and without
def test_padded_embedding_keeps_its_rows_and_new_tokens_get_the_tokenizers_ids(token_file, rows):
    cfg = load_config(SMOKE, [f"model.add_tokens={token_file}", f"model.overrides.vocab_size={rows}"])
    base_tok = build_tokenizer(cfg.model.model_copy(update={"add_tokens": None}))
    assert len(base_tok) < rows  # the embedding really is padded past the tokenizer
    torch.manual_seed(cfg.seed)
    base = build_model(cfg.model)
    torch.manual_seed(cfg.seed)
    model = build_for_training(cfg)
    tok = build_tokenizer(cfg.model)
    new_ids = [tok.convert_tokens_to_ids(t) for t in NEW]

    size = max(rows, max(new_ids) + 1)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == model.config.vocab_size == size
    assert model.config.continualm_added_tokens["first_id"] == min(new_ids) == len(base_tok)
    old = [i for i in range(rows) if i not in new_ids]  # every other row, padding included, is kept
    torch.testing.assert_close(emb[old], base.get_input_embeddings().weight[old], rtol=0, atol=0)
    torch.testing.assert_close(head[old], base.get_output_embeddings().weight[old], rtol=0, atol=0)
    for token, new_id in zip(NEW, new_ids, strict=True):
        pieces = base_tok(token, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(emb[new_id], emb[pieces].mean(0), rtol=0, atol=0)
        torch.testing.assert_close(head[new_id], head[pieces].mean(0), rtol=0, atol=0)
