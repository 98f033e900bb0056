"""LoRA under ZeRO-3 with 2 ranks: only adapter weights change, the peft adapter is saved, and the
merged export computes what base + adapter compute in peft."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.conftest import ROOT, run_entry
from train.checkpoint import consolidated_state_dict
from train.config import load_config
from train.model import build_model, build_tokenizer

pytestmark = pytest.mark.slow
RECIPE = ROOT / "configs" / "smoke" / "lora_tiny.yaml"


def test_lora_zero3_trains_only_adapters_and_merges_exactly(tmp_path, data_cache):
    cfg = load_config(RECIPE)
    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    build_model(cfg.model).save_pretrained(base_dir)
    build_tokenizer(cfg.model).save_pretrained(base_dir)
    out = tmp_path / "run"
    r = run_entry(
        "train.py",
        "--config",
        str(RECIPE),
        "--set",
        f"output_dir={out}",
        "--set",
        f"data.cache_dir={data_cache}",
        "--set",
        f"model.name_or_path={base_dir}",
        "--set",
        "train.max_steps=3",
        "--set",
        "tracking=none",
        nproc=2,
    )
    assert r.returncode == 0, r.stderr[-3000:]

    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    base_weights = base.state_dict()
    trained = consolidated_state_dict(out / "checkpoints" / "step-00000003", zero_stage=3)
    lora_keys = [k for k in trained if "lora_" in k]
    assert lora_keys and all(("q_proj" in k or "v_proj" in k) for k in lora_keys)
    assert any(trained[k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)  # B starts at zero
    for key, value in trained.items():
        if "lora_" in key:
            continue
        name = key.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(value, base_weights[name]), f"frozen weight {name} changed"

    export = out / "export"
    assert (export / "adapter" / "adapter_config.json").exists()
    # The saved adapter holds the trained weights (peft drops the adapter name from the keys).
    adapter = load_file(export / "adapter" / "adapter_model.safetensors")
    assert sorted(adapter) == sorted(k.replace(".default.", ".") for k in lora_keys)
    for key in lora_keys:
        assert torch.equal(adapter[key.replace(".default.", ".")], trained[key]), key

    ids = torch.arange(5, 5 + 2 * 20).reshape(2, 20)
    with torch.no_grad():
        base_logits = base(ids).logits  # before peft injects the adapter into `base`
    merged = AutoModelForCausalLM.from_pretrained(export).eval()
    with_adapter = PeftModel.from_pretrained(base, export / "adapter").eval()
    with torch.no_grad():
        merged_logits = merged(ids).logits
        torch.testing.assert_close(merged_logits, with_adapter(ids).logits, atol=1e-5, rtol=1e-5)
    # and the adapter changes what the model computes (a no-op adapter merges exactly too); 0.18 measured
    assert (merged_logits - base_logits).abs().max() > 1e-2

    # the adapter alone, whatever the run's peft.merge_on_export said; it carries the tokenizer
    from train.checkpoint import export_hf

    alone = export_hf(out / "checkpoints" / "step-00000003", tmp_path / "adapter_only", merge=False)
    assert sorted(p.name for p in alone.iterdir()) == ["adapter", "continualm_export.json"]
    assert (alone / "adapter" / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    ("targets", "fragment"),
    [
        ("[q_projj]", "'q_projj' is not a module of this model; its linear and embedding layers are"),
        ("[self_attn]", "'self_attn' names LlamaAttention modules, which LoRA cannot adapt"),
    ],
)
def test_targets_that_lora_cannot_adapt_are_refused(targets, fragment):
    from train.errors import UserError
    from train.model import build_for_training

    with pytest.raises(UserError, match=fragment):
        build_for_training(load_config(RECIPE, [f"peft.target_modules={targets}"]), meta=True)


@pytest.mark.parametrize(
    ("targets", "adapted"),
    [
        ("[self_attn.q_proj]", {"q_proj"}),  # peft's dotted suffix
        ("[all-linear]", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ],
)
def test_targets_as_peft_matches_them(targets, adapted):
    from train.model import build_for_training

    model = build_for_training(load_config(RECIPE, [f"peft.target_modules={targets}"]), meta=True)
    trained = {
        n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad
    }
    assert trained == adapted
