"""Weight arithmetic on tiny random Llama models: exact formulas, vocab policies, streaming memory, atomicity."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import train.merge as merge_mod
import train.merge_io as merge_io
from train.merge import MergeConfigError, MergeError, load_config, merge

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "data_prep/assets/llama3_tiny_tokenizer"
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def make_model(
    path: Path, seed: int, dtype=torch.float32, shard="300KB", tokenizer=True, **overrides
) -> dict:
    """Save a tiny random Llama (several shards), with the tiny tokenizer unless not `tokenizer`, and return
    its state dict."""
    cfg = dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    cfg.update(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, **overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # norms too, so every tensor has a nonzero delta
    model.to(dtype).save_pretrained(path, max_shard_size=shard)
    if tokenizer:  # a merge refuses a tokenizer source without one
        for f in TOKENIZER.iterdir():
            shutil.copy(f, path / f.name)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_output(path: Path) -> dict:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(path / shard))
    assert set(out) == set(index["weight_map"])
    return out


def f32(sd: dict) -> dict:
    return {k: v.float() for k, v in sd.items()}


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> tuple[Path, dict]:
    """A base, a chat (with its own template) and a CPT model sharing one architecture and tokenizer."""
    root = tmp_path_factory.mktemp("trio")
    sds = {name: make_model(root / name, seed) for seed, name in enumerate(["base", "chat", "cpt", "chat2"])}
    (root / "chat/chat_template.jinja").write_text("CHAT TEMPLATE")
    cfg = json.loads((root / "chat/config.json").read_text())
    (root / "chat/config.json").write_text(json.dumps({**cfg, "eos_token_id": 7}))
    return root, sds


def test_task_arithmetic_equals_formula_exactly(trio, tmp_path):
    root, sd = trio
    cfg = {
        "method": "task_arithmetic",
        "models": {
            "base": str(root / "base"),
            "tasks": [
                {"path": str(root / "chat"), "weight": 0.7},
                {"path": str(root / "cpt"), "weight": -0.2},
            ],
        },
        "output": str(tmp_path / "out"),
        "max_shard_size": "300KB",
    }
    out = merge(load_config(cfg))
    got = load_output(out)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 2
    for k, base in sd["base"].items():
        expect = base + 0.7 * (sd["chat"][k] - base) + -0.2 * (sd["cpt"][k] - base)
        assert got[k].dtype == torch.float32 and torch.equal(got[k], expect), k


def test_chat_vector_equals_formula_and_takes_chat_files(trio, tmp_path):
    root, sd = trio
    vectors = [
        {"chat": str(root / "chat"), "base": str(root / "base")},
        {"chat": str(root / "chat2"), "base": str(root / "base"), "ratio": 0.5},
    ]
    cfg = {
        "method": "chat_vector",
        "models": {"cpt": str(root / "cpt"), "vectors": vectors},
        "output": str(tmp_path / "o"),
    }
    out = merge(load_config(cfg))
    got = load_output(out)
    for k, cpt in sd["cpt"].items():
        expect = cpt + 1.0 * (sd["chat"][k] - sd["base"][k]) + 0.5 * (sd["chat2"][k] - sd["base"][k])
        assert torch.equal(got[k], expect), k
    assert (out / "chat_template.jinja").read_text() == "CHAT TEMPLATE"
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 7
    model = LlamaForCausalLM.from_pretrained(out)
    assert torch.equal(model.state_dict()[EMBED], got[EMBED])


def test_tokenizer_from_cpt_keeps_cpt_tokenizer_and_inline_chat_template(trio, tmp_path):
    root, _ = trio
    chat = tmp_path / "chat_inline"
    shutil.copytree(root / "chat", chat)
    (chat / "chat_template.jinja").unlink()  # older layout: the template lives in tokenizer_config.json
    tok_config = json.loads((chat / "tokenizer_config.json").read_text())
    (chat / "tokenizer_config.json").write_text(json.dumps({**tok_config, "chat_template": "INLINE"}))
    cfg = chat_vector_cfg(root, root / "cpt", tmp_path / "out", tokenizer_from="cpt")
    cfg["models"]["vectors"][0]["chat"] = str(chat)
    out = merge(load_config(cfg))
    assert (out / "tokenizer_config.json").read_text() == (root / "cpt/tokenizer_config.json").read_text()
    assert (out / "chat_template.jinja").read_text() == "INLINE"
    # the CPT tokenizer ends at the chat model's EOS token, which it has too (recipes: EOS from the instruct)
    (chat / "tokenizer_config.json").write_text(
        json.dumps({**tok_config, "chat_template": "INLINE", "eos_token": "<|eot_id|>"})
    )
    out = merge(load_config({**cfg, "overwrite": True}))
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|eot_id|>"
    assert AutoTokenizer.from_pretrained(root / "cpt").eos_token == "<|end_of_text|>"


def test_expo_bf16_in_bf16_out(tmp_path):
    sft = f32(make_model(tmp_path / "sft", 0, dtype=torch.bfloat16))
    dpo = f32(make_model(tmp_path / "dpo", 1, dtype=torch.bfloat16))
    cfg = {"method": "expo", "models": {"dpo": str(tmp_path / "dpo"), "sft": str(tmp_path / "sft")}}
    out = merge(load_config({**cfg, "output": str(tmp_path / "out")}))
    got = load_output(out)
    assert set(got) == set(dpo)
    for k in dpo:  # every tensor, embeddings included
        expect = (dpo[k] + 0.3 * (dpo[k] - sft[k])).to(torch.bfloat16)
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], expect), k


def save_tokenizer(path: Path, added: int) -> None:
    """The tiny tokenizer (ids 0-2047) with `added` new tokens, as a vocabulary-expanded CPT run saves it."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    tok.add_tokens([f"新词{i}" for i in range(added)])
    tok.save_pretrained(path)


@pytest.fixture(scope="module")
def expanded(trio) -> Path:
    """A CPT model whose vocabulary grew from 2048 to 2304 rows, with its expanded tokenizer."""
    root, sd = trio
    make_model(root / "cpt_big", 9, vocab_size=2304)
    save_tokenizer(root / "cpt_big", 256)
    return root / "cpt_big"


def chat_vector_cfg(root: Path, cpt: Path, out: Path, **extra) -> dict:
    vectors = [{"chat": str(root / "chat"), "base": str(root / "base")}]
    return {
        "method": "chat_vector",
        "models": {"cpt": str(cpt), "vectors": vectors},
        "output": str(out),
        **extra,
    }


def test_vocab_mismatch_fails_by_default(trio, expanded, tmp_path):
    root, _ = trio
    with pytest.raises(
        MergeError, match=r"vocabulary mismatch for tensor '.*'.*\[2304, 64\].*\[2048, 64\].*vocab_policy"
    ):
        merge(load_config(chat_vector_cfg(root, expanded, tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_shared_rows_applies_vector_on_shared_rows_only(trio, expanded, tmp_path):
    root, sd = trio
    big = load_output(expanded)
    cfg = chat_vector_cfg(
        root,
        expanded,
        tmp_path / "out",
        vocab_policy="shared_rows",
        copy_rows=[5, 2000],
        tokenizer_from="cpt",
    )
    out = merge(load_config(cfg))
    assert len(AutoTokenizer.from_pretrained(out)) == 2304  # every CPT row stays reachable
    got = load_output(out)
    for k in (EMBED, HEAD):
        assert got[k].shape == (2304, 64)
        assert torch.equal(got[k][2048:], big[k][2048:])  # extra CPT rows untouched
        expect = big[k][:2048] + 1.0 * (sd["chat"][k] - sd["base"][k])
        for i in (5, 2000):
            expect[i] = sd["chat"][k][i]
        assert torch.equal(got[k][:2048], expect)
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(got[k], big[k] + 1.0 * (sd["chat"][k] - sd["base"][k]))


def test_skip_keeps_cpt_vocab_rows(trio, expanded, tmp_path):
    root, sd = trio
    big = load_output(expanded)
    cfg = chat_vector_cfg(root, expanded, tmp_path / "out", vocab_policy="skip", tokenizer_from="cpt")
    got = load_output(merge(load_config(cfg)))
    assert torch.equal(got[EMBED], big[EMBED]) and torch.equal(got[HEAD], big[HEAD])
    k = "model.norm.weight"
    assert torch.equal(got[k], big[k] + 1.0 * (sd["chat"][k] - sd["base"][k]))


@pytest.mark.parametrize("cpt_tokenizer", [True, False])
def test_chat_tokenizer_on_expanded_cpt_is_refused_before_writing(trio, expanded, tmp_path, cpt_tokenizer):
    root, _ = trio
    cpt = expanded
    if not cpt_tokenizer:  # only the grown embedding tells: 2304 rows against the chat model's 2048
        cpt = tmp_path / "cpt_weights_only"
        shutil.copytree(expanded, cpt, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    out = tmp_path / "merged" / "out"
    cfg = chat_vector_cfg(root, cpt, out, vocab_policy="shared_rows")  # tokenizer_from: chat by default
    with pytest.raises(
        MergeError, match=r"CPT vocabulary of 2304 tokens .* has 2048; set tokenizer_from: cpt"
    ):
        merge(load_config(cfg))
    assert not out.parent.exists()  # nothing written, not even a temp dir


def test_padded_vocabulary_fits_but_cpt_tokens_in_the_padding_do_not(tmp_path):
    """All models have 2112 embedding rows; the chat tokenizer reaches 2048 of them."""
    for seed, name in enumerate(["base", "chat", "cpt"]):
        make_model(tmp_path / name, seed, vocab_size=2112)
    for name in ("chat", "cpt"):
        save_tokenizer(tmp_path / name, 0)
    out = merge(load_config(chat_vector_cfg(tmp_path, tmp_path / "cpt", tmp_path / "same")))
    assert len(AutoTokenizer.from_pretrained(out)) == 2048  # padding alone is no mismatch
    save_tokenizer(tmp_path / "cpt", 20)  # CPT tokens 2048-2067 placed in the padding rows
    with pytest.raises(MergeError, match=r"CPT vocabulary of 2068 tokens \(2112 embedding rows.*has 2048"):
        merge(load_config(chat_vector_cfg(tmp_path, tmp_path / "cpt", tmp_path / "expanded")))
    out = merge(
        load_config(chat_vector_cfg(tmp_path, tmp_path / "cpt", tmp_path / "fixed", tokenizer_from="cpt"))
    )
    assert len(AutoTokenizer.from_pretrained(out)) == 2068


def test_chat_tokenizer_past_the_cpt_rows_is_refused(trio, tmp_path):
    root, _ = trio
    chat = tmp_path / "chat_sft_tokens"  # a chat model that grew to 2112 rows for 20 tokens of its own
    make_model(chat, 5, vocab_size=2112)
    save_tokenizer(chat, 20)
    cfg = chat_vector_cfg(root, root / "cpt", tmp_path / "out", vocab_policy="shared_rows")
    cfg["models"]["vectors"][0]["chat"] = str(chat)
    with pytest.raises(MergeError, match=r"ids up to 2067, but the output embedding .* only 2048 rows"):
        merge(load_config(cfg))
    assert not (tmp_path / "out").exists()


def test_an_eos_past_the_output_rows_is_refused(trio, tmp_path):
    # the chat model's EOS is a token of its own (id 2049) that the CPT's 2048 rows lack: it would never stop
    root, _ = trio
    chat = tmp_path / "chat_own_eos"
    make_model(chat, 5, vocab_size=2050)
    cfg = json.loads((chat / "config.json").read_text())
    (chat / "config.json").write_text(json.dumps({**cfg, "eos_token_id": 2049}))
    cfg = chat_vector_cfg(
        root, root / "cpt", tmp_path / "out", vocab_policy="shared_rows", tokenizer_from="cpt"
    )
    cfg["models"]["vectors"][0]["chat"] = str(chat)
    with pytest.raises(
        MergeError, match=r"stop at EOS id \[2049\] \(config.json\), past the 2048 embedding rows"
    ):
        merge(load_config(cfg))
    assert not (tmp_path / "out").exists()


def test_named_chat_templates_follow_the_default_one(trio, tmp_path):
    root, _ = trio
    chat = tmp_path / "chat_tools"
    shutil.copytree(root / "chat", chat)
    (chat / "additional_chat_templates").mkdir()
    (chat / "additional_chat_templates" / "tool_use.jinja").write_text("TOOLS")
    cfg = chat_vector_cfg(root, root / "cpt", tmp_path / "out", tokenizer_from="cpt")
    cfg["models"]["vectors"][0]["chat"] = str(chat)
    out = merge(load_config(cfg))
    assert (out / "additional_chat_templates" / "tool_use.jinja").read_text() == "TOOLS"
    # the older layout: a list of named templates inside tokenizer_config.json
    shutil.rmtree(chat / "additional_chat_templates")
    (chat / "chat_template.jinja").unlink()
    tok_config = json.loads((chat / "tokenizer_config.json").read_text())
    named = [{"name": "default", "template": "DEFAULT"}, {"name": "tool_use", "template": "TOOLS"}]
    (chat / "tokenizer_config.json").write_text(json.dumps({**tok_config, "chat_template": named}))
    out = merge(load_config({**cfg, "overwrite": True}))
    assert (out / "chat_template.jinja").read_text() == "DEFAULT"
    assert (out / "additional_chat_templates" / "tool_use.jinja").read_text() == "TOOLS"
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == {"default": "DEFAULT", "tool_use": "TOOLS"}


def test_a_stale_single_file_beside_an_index_and_a_nan_coefficient_are_refused(trio, tmp_path):
    root, _ = trio
    sft = tmp_path / "sft"
    shutil.copytree(root / "base", sft)
    make_model(tmp_path / "single", 5, shard="100MB")
    shutil.copy(tmp_path / "single" / "model.safetensors", sft)  # which one would be the model?
    cfg = {
        "method": "expo",
        "models": {"dpo": str(root / "chat"), "sft": str(sft)},
        "output": str(tmp_path / "o"),
    }
    with pytest.raises(MergeError, match="holds both model.safetensors and model.safetensors.index.json"):
        merge(load_config(cfg))
    with pytest.raises(MergeConfigError, match="'alpha'.*finite"):
        load_config({**cfg, "alpha": float("nan")})
    (sft / "model.safetensors").unlink()
    (sft / "config.json").write_text("[]")
    with pytest.raises(MergeError, match=rf"{sft}/config.json is not a JSON object"):
        merge(load_config(cfg))


def test_custom_code_files_are_copied(trio, tmp_path):
    root, _ = trio
    cpt, chat = tmp_path / "cpt", tmp_path / "chat"
    shutil.copytree(root / "cpt", cpt)
    shutil.copytree(root / "chat", chat)
    config = json.loads((cpt / "config.json").read_text())
    auto_map = {"AutoModelForCausalLM": "modeling_pico.PicoForCausalLM"}
    (cpt / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}))
    (cpt / "modeling_pico.py").write_text("# cpt modeling\n")
    (cpt / "shared.py").write_text("# cpt shared\n")
    (chat / "tokenization_pico.py").write_text("# chat tokenizer code\n")
    (chat / "shared.py").write_text("# chat shared\n")
    cfg = chat_vector_cfg(root, cpt, tmp_path / "out")
    cfg["models"]["vectors"][0]["chat"] = str(chat)
    out = merge(load_config(cfg))
    assert json.loads((out / "config.json").read_text())["auto_map"] == auto_map
    assert (out / "modeling_pico.py").read_text() == "# cpt modeling\n"
    assert (out / "tokenization_pico.py").read_text() == "# chat tokenizer code\n"  # goes with the tokenizer
    assert (out / "shared.py").read_text() == "# cpt shared\n"  # config.json is the CPT's, so its code wins


def test_copy_rows_out_of_range_and_without_shared_rows(trio, expanded, tmp_path):
    root, _ = trio
    with pytest.raises(MergeError, match=r"copy_rows \[2100\]"):
        merge(
            load_config(
                chat_vector_cfg(root, expanded, tmp_path / "o", vocab_policy="shared_rows", copy_rows=[2100])
            )
        )
    with pytest.raises(MergeConfigError, match="copy_rows only applies with vocab_policy: shared_rows"):
        load_config(chat_vector_cfg(root, expanded, tmp_path / "o", copy_rows=[1]))


def test_architecture_mismatch_names_config_key(trio, tmp_path):
    root, _ = trio
    make_model(tmp_path / "deep", 3, num_hidden_layers=3)
    with pytest.raises(MergeError, match=r"'num_hidden_layers' resolves to 3 in .*deep, 2 in .*chat"):
        merge(load_config(chat_vector_cfg(root, tmp_path / "deep", tmp_path / "out")))


def test_configs_compare_resolved_values_not_raw_keys(trio, tmp_path):
    """Llama-3 configs written by transformers 4.40 omit head_dim, our (transformers 5) exports write it."""
    root, sd = trio
    for name in ("chat", "base"):
        shutil.copytree(root / name, tmp_path / name)
        config = json.loads((tmp_path / name / "config.json").read_text())
        del config["head_dim"], config["tie_word_embeddings"]  # both at their Llama defaults (16, false)
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    assert "head_dim" in json.loads((root / "cpt/config.json").read_text())
    out = merge(load_config(chat_vector_cfg(tmp_path, root / "cpt", tmp_path / "out")))
    k = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(load_output(out)[k], sd["cpt"][k] + 1.0 * (sd["chat"][k] - sd["base"][k]))
    # A head_dim that really differs (64 / 4 heads resolves to 16) is still refused, as is an unknown type.
    config = json.loads((tmp_path / "chat/config.json").read_text())
    (tmp_path / "chat/config.json").write_text(json.dumps({**config, "head_dim": 32}))
    with pytest.raises(MergeError, match=r"'head_dim' resolves to 16 in .*cpt, 32 in .*chat, 16 in .*base"):
        merge(load_config(chat_vector_cfg(tmp_path, root / "cpt", tmp_path / "out2")))
    for name in ("chat", "base"):
        (tmp_path / name / "config.json").write_text(json.dumps({**config, "model_type": "picollama"}))
    with pytest.raises(MergeError, match=r"'model_type' resolves to 'llama' in .*cpt, 'picollama' in .*chat"):
        merge(load_config(chat_vector_cfg(tmp_path, root / "cpt", tmp_path / "out3")))


def test_shape_mismatch_names_tensor_and_both_shapes(trio, tmp_path):
    root, _ = trio
    make_model(tmp_path / "wide", 3, intermediate_size=96)
    # Same config.json as the others, different weights: only the tensor check can catch it.
    shutil.copy(root / "cpt/config.json", tmp_path / "wide/config.json")
    msg = r"shape mismatch for tensor 'model\.layers\.0\.mlp\.down_proj\.weight': \[64, 96\] in .*wide but \[64, 128\]"
    with pytest.raises(MergeError, match=msg):
        merge(load_config(chat_vector_cfg(root, tmp_path / "wide", tmp_path / "out")))


def test_missing_tensor_is_refused_not_skipped(trio, tmp_path):
    root, _ = trio
    shutil.copytree(root / "cpt", tmp_path / "cpt")
    index = json.loads((tmp_path / "cpt/model.safetensors.index.json").read_text())
    del index["weight_map"]["model.norm.weight"]
    (tmp_path / "cpt/model.safetensors.index.json").write_text(json.dumps(index))
    cfg = chat_vector_cfg(root, root / "chat2", tmp_path / "out")
    cfg["models"]["vectors"][0]["base"] = str(tmp_path / "cpt")
    with pytest.raises(
        MergeError, match=r"tensor sets differ .* missing in the latter \['model\.norm\.weight'\]"
    ):
        merge(load_config(cfg))


def test_failed_merge_leaves_no_output_and_keeps_existing(trio, tmp_path, monkeypatch):
    root, _ = trio

    def boom(self):
        raise OSError("disk full")

    monkeypatch.setattr(merge_io.ShardWriter, "finish", boom)
    with pytest.raises(OSError, match="disk full"):
        merge(load_config(chat_vector_cfg(root, root / "cpt", tmp_path / "new", max_shard_size="100KB")))
    assert list(tmp_path.iterdir()) == []  # no output, no temp dir
    (tmp_path / "old").mkdir()
    (tmp_path / "old/keep.txt").write_text("precious")
    with pytest.raises(OSError, match="disk full"):
        merge(load_config(chat_vector_cfg(root, root / "cpt", tmp_path / "old", overwrite=True)))
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["keep.txt"]


def test_existing_output_needs_overwrite(trio, tmp_path):
    root, _ = trio
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep.txt").write_text("x")
    cfg = chat_vector_cfg(root, root / "cpt", tmp_path / "out")
    with pytest.raises(MergeError, match="overwrite: true"):
        merge(load_config(cfg))
    out = merge(load_config({**cfg, "overwrite": True}))
    assert not (out / "keep.txt").exists() and (out / "model.safetensors.index.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # refused before hub ids are resolved (a download of every model), not after
    hub = {
        "method": "chat_vector",
        "models": {"cpt": "org/cpt", "vectors": [{"chat": "org/chat", "base": "org/base"}]},
    }
    with pytest.raises(MergeError, match="exists and is not empty"):
        merge(load_config({**hub, "output": str(out)}))


def test_a_hub_input_pins_its_revision_after_an_at(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from train.merge import resolve_model

    pinned, moved = "a" * 40, "b" * 40  # two snapshots of org/m; the default branch is at the second
    for commit in (pinned, moved):
        (tmp_path / "models--org--m/snapshots" / commit).mkdir(parents=True)
    (tmp_path / "models--org--m/refs").mkdir()
    (tmp_path / "models--org--m/refs/main").write_text(moved)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert resolve_model(f"org/m@{pinned}").name == pinned and resolve_model("org/m").name == moved
    with pytest.raises(MergeError, match="could not fetch 'org/m@c+' from the Hugging Face hub"):
        resolve_model("org/m@" + "c" * 40)
    for bad in ("org/m@", "org@x"):
        with pytest.raises(MergeError, match="nor a hub id like org/name or org/name@revision"):
            resolve_model(bad)


@pytest.mark.parametrize(
    "output", ["models", "models/cpt", "models/cpt/merged"], ids=["holds", "is", "inside"]
)
def test_output_overlapping_an_input_is_refused_even_with_overwrite(trio, tmp_path, output):
    root, _ = trio
    models = tmp_path.resolve() / "models"
    for name in ("base", "chat", "cpt"):
        shutil.copytree(root / name, models / name)
    before = sorted(tmp_path.rglob("*"))
    cfg = chat_vector_cfg(models, models / "cpt", tmp_path.resolve() / output, overwrite=True)
    msg = f"output {tmp_path.resolve() / output} and input model {models / 'cpt'} overlap"
    with pytest.raises(MergeError, match=re.escape(msg)):
        merge(load_config(cfg))
    assert sorted(tmp_path.rglob("*")) == before  # the inputs untouched, nothing written


def test_output_folder_has_the_mode_the_umask_gives(trio, tmp_path):
    root, _ = trio
    umask = os.umask(0o027)
    try:
        out = merge(load_config(chat_vector_cfg(root, root / "cpt", tmp_path / "out")))
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # not mkdtemp's 0700


def test_index_naming_a_shard_without_the_tensor_is_refused_before_writing(trio, tmp_path):
    root, _ = trio
    cpt = tmp_path / "cpt"
    shutil.copytree(root / "cpt", cpt)
    index = json.loads((cpt / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    wrong = next(f for f in shards if f != index["weight_map"]["model.norm.weight"])
    index["weight_map"]["model.norm.weight"] = wrong
    (cpt / "model.safetensors.index.json").write_text(json.dumps(index))
    msg = (
        f"{cpt.resolve() / 'model.safetensors.index.json'} maps tensor 'model.norm.weight' to shard "
        f"{cpt.resolve() / wrong}, which does not hold it"
    )
    with pytest.raises(MergeError, match=re.escape(msg)):
        merge(load_config(chat_vector_cfg(root, cpt, tmp_path / "out")))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["expo", "task_arithmetic"])
def test_vocab_mismatch_without_vocab_policy_says_vocabularies_must_match(trio, expanded, tmp_path, method):
    root, _ = trio
    if method == "expo":
        models = {"dpo": str(expanded), "sft": str(root / "base")}
    else:
        models = {"base": str(expanded), "tasks": [{"path": str(root / "base")}]}
    cfg = {"method": method, "models": models, "output": str(tmp_path / "out")}
    with pytest.raises(
        MergeError, match=f"vocabulary mismatch .*; {method} needs the same vocabulary"
    ) as err:
        merge(load_config(cfg))
    assert "set vocab_policy" not in str(err.value)  # an option these methods reject


def test_tokenizer_source_without_a_tokenizer_is_refused_naming_it(trio, tmp_path):
    root, _ = trio
    dpo = tmp_path / "dpo"
    make_model(dpo, 3, tokenizer=False)
    cfg = {
        "method": "expo",
        "models": {"dpo": str(dpo), "sft": str(root / "base")},
        "output": str(tmp_path / "o"),
    }
    msg = (
        f"{dpo.resolve()} has no tokenizer (tokenizer.json or tokenizer.model), which the merged model takes"
    )
    with pytest.raises(MergeError, match=re.escape(msg) + r".*copy the tokenizer files .* into") as err:
        merge(load_config(cfg))
    assert "tokenizer_from" not in str(err.value)
    # chat_vector takes it from the chat model by default; the CPT's is the other fix there.
    cfg = chat_vector_cfg(root, root / "cpt", tmp_path / "o")
    cfg["models"]["vectors"][0]["chat"] = str(dpo)
    with pytest.raises(MergeError, match=r"has no tokenizer .* or set tokenizer_from: cpt$"):
        merge(load_config(cfg))
    assert not (tmp_path / "o").exists()


def test_config_errors_name_key_and_suggest_fix(tmp_path):
    good = {"method": "expo", "models": {"dpo": "a/b", "sft": "c/d"}, "output": "out"}
    with pytest.raises(
        MergeConfigError, match="unknown merge method 'chat_vectr': did you mean 'chat_vector'"
    ):
        load_config({**good, "method": "chat_vectr"})
    with pytest.raises(MergeConfigError, match=r"unknown key 'alpah'\. Did you mean 'alpha'\?"):
        load_config({**good, "alpah": 0.5})
    with pytest.raises(MergeConfigError, match=r"unknown key 'models.stf'\. Did you mean 'models.sft'\?"):
        load_config({**good, "models": {"dpo": "a/b", "stf": "c/d"}})
    with pytest.raises(MergeConfigError, match="missing required key 'output'"):
        load_config({k: v for k, v in good.items() if k != "output"})
    for size in ("lots", 4.5, [1]):
        with pytest.raises(
            MergeConfigError, match=f"'max_shard_size': cannot read size {re.escape(repr(size))}"
        ):
            load_config({**good, "max_shard_size": size})
    with pytest.raises(MergeConfigError, match="'alpha': expects a number, not true/false"):
        load_config({**good, "alpha": True})
    cfg = load_config(good, ["alpha=0.5", "max_shard_size=4MiB"])
    assert cfg.alpha == 0.5 and cfg.max_shard_size == 4 * 2**20


def test_config_files_extend_and_fail_readably(tmp_path):
    (tmp_path / "base.yaml").write_text("method: expo\nmodels: {dpo: a/b, sft: c/d}\noutput: out\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nalpha: 0.5\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.alpha, cfg.models.sft) == (0.5, "c/d")
    (tmp_path / "list.yaml").write_text("- method: expo\n")
    with pytest.raises(MergeConfigError, match="list.yaml must hold a mapping at the top level"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(MergeConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_set_overrides_reject_bad_keys(tmp_path):
    good = {"method": "expo", "models": {"dpo": "a/b", "sft": "c/d"}, "output": "out"}
    with pytest.raises(MergeConfigError, match="--set expects key=value"):
        load_config(good, ["alpha"])
    with pytest.raises(MergeConfigError, match="'output' holds 'out', not a section"):
        load_config(good, ["output.x=1"])
    assert good["models"] == {"dpo": "a/b", "sft": "c/d"}  # the caller's dict is not modified
    assert load_config(good, ["models.sft=e/f"]).models.sft == "e/f"


@pytest.mark.parametrize("path", sorted((REPO / "configs/merge").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_merge_configs_validate(path):
    cfg = load_config(path)
    assert cfg.method in merge_mod.MERGE_METHODS


def test_shipped_recipe_values():
    cv = load_config(REPO / "configs/merge/swallow_chat_vector.yaml")
    assert [v.ratio for v in cv.models.vectors] == [1.0] and cv.vocab_policy == "error"
    assert load_config(REPO / "configs/merge/expo_llama3_zh.yaml").alpha == 0.3


def _launch():
    from train.merge_cli import main

    return main


def test_launch_flag_form_and_clean_error(trio, tmp_path, capsys):
    root, sd = trio
    main = _launch()
    argv = ["expo", "--dpo", str(root / "chat"), "--sft", str(root / "base"), "--out", str(tmp_path / "x")]
    assert main(argv + ["--set", "alpha=0.5"]) == 0
    got = load_output(tmp_path / "x")
    assert torch.equal(got[EMBED], sd["chat"][EMBED] + 0.5 * (sd["chat"][EMBED] - sd["base"][EMBED]))
    assert main(argv) == 2  # existing output
    err = capsys.readouterr().err
    assert err.startswith("merge error: output") and "Traceback" not in err


@pytest.mark.parametrize(
    ("damaged", "message"),
    [
        ("config.json", "is not valid JSON"),
        ("model.safetensors.index.json", "is not valid JSON"),
        ("model-00001-of-*.safetensors", "cannot read weights file .*: Error while deserializing header"),
        ("model.safetensors", "cannot read weights file .*: Error while deserializing header"),
    ],
)
def test_damaged_input_file_is_one_line_naming_it(trio, tmp_path, capsys, damaged, message):
    root, _ = trio
    sft = tmp_path / "sft"
    if damaged == "model.safetensors":
        make_model(sft, 5, shard="100MB")  # one unsharded file
    else:
        shutil.copytree(root / "base", sft)
    path = next(sft.glob(damaged))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # as an interrupted copy leaves it
    argv = ["expo", "--dpo", str(root / "chat"), "--sft", str(sft), "--out", str(tmp_path / "o")]
    capsys.readouterr()  # not save_pretrained's progress bar
    assert _launch()(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("merge error: ") and str(path) in err and len(err.splitlines()) == 1
    assert re.search(message, err) and not (tmp_path / "o").exists()


RSS_PROBE = """
import json, sys
from train.merge import load_config, merge

def kb(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])

warmup, cfg = (json.loads(a) for a in sys.argv[1:])
merge(load_config(warmup))  # first-call costs (lazy imports, allocator arenas) are not the merge's
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM (peak RSS) to the current RSS
before = kb("VmRSS")
merge(load_config(cfg))
print((kb("VmHWM") - before) * 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_peak_rss_is_a_few_shards_not_whole_models(trio, tmp_path):
    shard = 4 * 10**6
    for seed, name in enumerate(["base", "chat", "cpt"]):
        # ~26 MB per model in fp32, saved as ~7 shards of <= 4 MB
        make_model(
            tmp_path / name, seed, shard=shard, hidden_size=256, intermediate_size=1536, num_hidden_layers=4
        )
    inputs_bytes = sum(f.stat().st_size for f in tmp_path.glob("*/*.safetensors"))
    assert len(list((tmp_path / "cpt").glob("*.safetensors"))) >= 6
    cfg = chat_vector_cfg(tmp_path, tmp_path / "cpt", tmp_path / "out", max_shard_size=shard)
    warmup = chat_vector_cfg(trio[0], trio[0] / "cpt", tmp_path / "warm")
    probe = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, json.dumps(warmup), json.dumps(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    grew = int(probe.stdout.split()[-1])
    # Streaming holds a mapped shard per input (3), the output shard being filled and a few single-tensor
    # temporaries; loading the inputs whole would need all of inputs_bytes.
    budget = 8 * shard
    assert budget < inputs_bytes / 2
    assert grew < budget, f"peak RSS grew {grew / 1e6:.1f} MB merging {inputs_bytes / 1e6:.1f} MB of inputs"
