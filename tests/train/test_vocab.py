"""Vocabulary expansion for CPT: new rows start as the mean of their pieces, and the exported model
and tokenizer know the new tokens."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import SMOKE, run_entry
from train import checkpoint
from train import distributed as dist
from train.config import load_config
from train.engine import build_engine
from train.errors import UserError
from train.model import added_tokens, build_for_training, build_model, build_tokenizer

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


@pytest.fixture
def saved_with_tokens(tmp_path, token_file):
    """A real one-rank checkpoint of a run that added NEW, as the loop saves it."""
    dist.init()
    cfg = load_config(
        SMOKE, ["tracking=none", f"output_dir={tmp_path / 'run'}", f"model.add_tokens={token_file}"]
    )
    model = build_for_training(cfg)
    engine = build_engine(cfg, model, 1, cfg.total_steps())
    state = {"step": 1, "consumed_rows": 4, "tokens": 512, "added_tokens": added_tokens(model)}
    return checkpoint.save(engine, cfg, 1, state)


def test_export_uses_the_checkpoints_own_tokens_not_the_edited_file(saved_with_tokens, token_file, tmp_path):
    assert checkpoint.check_complete(saved_with_tokens)["added_tokens"] == NEW
    token_file.write_text("later\n" + "\n".join(reversed(NEW)) + "\n")  # edited after training
    out = checkpoint.export_hf(saved_with_tokens, tmp_path / "export")
    tok = AutoTokenizer.from_pretrained(out)
    assert [tok.convert_ids_to_tokens(i) for i in range(len(tok) - 3, len(tok))] == NEW
    assert "later" not in tok.get_vocab()
    token_file.unlink()  # and gone
    checkpoint.export_hf(saved_with_tokens, out, overwrite=True)


def test_a_checkpoint_from_before_the_record_with_another_vocabulary_is_a_clear_error(
    saved_with_tokens, token_file, tmp_path
):
    state_file = saved_with_tokens / checkpoint.STATE_FILE
    state = json.loads(state_file.read_text())
    del state["added_tokens"]
    state_file.write_text(json.dumps(state))
    token_file.write_text("\n".join(NEW[:2]) + "\n")  # one token fewer than it trained with
    with pytest.raises(UserError, match=r"shapes differ.*embed_tokens.*model\.add_tokens"):
        checkpoint.export_hf(saved_with_tokens, tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    ("now", "says"),
    [
        (
            NEW[:2],
            r"3 added tokens, model.add_tokens now gives 2 \(dropped \['ステップごとの答え'\], new \[\]\)",
        ),
        (list(reversed(NEW)), "the same tokens in another order"),
    ],
)
def test_resume_with_other_added_tokens_is_refused(now, says, tmp_path):
    with pytest.raises(UserError, match=says):
        checkpoint.check_same_added_tokens({"added_tokens": NEW}, now, tmp_path)
    checkpoint.check_same_added_tokens({"added_tokens": NEW}, list(NEW), tmp_path)
    checkpoint.check_same_added_tokens({}, now, tmp_path)  # before the record: the shapes decide


def test_resuming_into_a_model_of_other_shapes_says_so(saved_with_tokens, token_file, tmp_path):
    token_file.write_text("\n".join(NEW[:2]) + "\n")
    cfg = load_config(
        SMOKE, ["tracking=none", f"output_dir={tmp_path / 'run'}", f"model.add_tokens={token_file}"]
    )
    engine = build_engine(cfg, build_for_training(cfg), 1, cfg.total_steps())
    with pytest.raises(UserError, match=r"(?s)other shapes than this run's model \(.*embed_tokens"):
        checkpoint.load(engine, saved_with_tokens)
