"""Training on a Control-LLM export (SFT after the CPT, say): only with the export's own `expansion` section,
which keeps its pretrained blocks frozen; without it, or with another, refused before any weights load."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ROOT
from train.config import load_config
from train.errors import UserError
from train.expansion import ControlLLMForCausalLM
from train.model import TINY_TOKENIZER, build_for_training, count_parameters

TINY = ROOT / "configs" / "smoke" / "synE_concat16_tiny.yaml"
PLAIN = ["model.activation_checkpointing=none", "train.loss_chunk_tokens=null"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    model = build_for_training(load_config(TINY, PLAIN))
    with torch.no_grad():  # as if trained: the continued run must start from these, not re-expand
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    out = tmp_path_factory.mktemp("export")
    model.save_pretrained(out)
    return out, model


def test_an_export_continues_with_its_pretrained_blocks_frozen(export):
    out, trained = export
    cfg = load_config(TINY, [*PLAIN, f"model.name_or_path={out}"])
    model = build_for_training(cfg)
    assert isinstance(model, ControlLLMForCausalLM)
    assert count_parameters(model) == count_parameters(trained)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, p in trained.named_parameters() if not p.requires_grad}
    assert any("pretrained_layer" in n for n in frozen) and "model.embed_tokens.weight" in frozen
    saved = trained.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert count_parameters(build_for_training(cfg, meta=True)) == count_parameters(trained)  # dry run


def test_an_export_without_its_expansion_section_is_refused(export):
    out, _ = export
    with pytest.raises(UserError, match="is a Control-LLM export .*frozen pretrained blocks would train"):
        build_for_training(load_config(TINY, [*PLAIN, f"model.name_or_path={out}", "expansion=null"]))
    other = [*PLAIN, f"model.name_or_path={out}", "expansion.method=dlerp", "expansion.num_exp_layers=4"]
    with pytest.raises(UserError) as refused:
        build_for_training(load_config(TINY, other))
    assert "expansion.method: 'dlerp' here, 'lerp' in the export" in str(refused.value)
    assert "expansion.num_exp_layers: 4 here, 2 in the export" in str(refused.value)


def test_a_checkpoint_that_tuned_an_export_without_its_section_still_exports(export):
    # Runs from before the refusal trained such exports in full; their checkpoints must stay exportable.
    out, trained = export
    cfg = load_config(TINY, [*PLAIN, f"model.name_or_path={out}", "expansion=null"])
    model = build_for_training(cfg, meta=True, stored=True)
    assert isinstance(model, ControlLLMForCausalLM) and set(model.state_dict()) == set(trained.state_dict())


def test_lora_on_an_export_names_the_way_that_works(export):
    out, _ = export
    lora = [
        *PLAIN,
        f"model.name_or_path={out}",
        "expansion=null",
        "peft={r: 4, alpha: 8, target_modules: [q_proj]}",
    ]
    with pytest.raises(UserError, match="LoRA on its two branches is not supported; fold it .*merge-back"):
        build_for_training(load_config(TINY, lora))


def test_a_stack_export_is_a_plain_llama_to_tune_in_full_or_with_lora(tmp_path):
    torch.manual_seed(0)
    model = build_for_training(load_config(TINY, [*PLAIN, "expansion.type=stack"]))
    model.save_pretrained(tmp_path)
    tuned = [
        *PLAIN,
        f"model.name_or_path={tmp_path}",
        "model.preset=null",
        f"model.tokenizer={TINY_TOKENIZER}",
    ]
    plain = build_for_training(load_config(TINY, [*tuned, "expansion=null"]))
    assert count_parameters(plain).frozen == 0 and len(plain.model.layers) == len(model.model.layers) == 6
    lora = build_for_training(
        load_config(TINY, [*tuned, "expansion=null", "peft={r: 4, alpha: 8, target_modules: [q_proj]}"])
    )
    assert 0 < count_parameters(lora).trainable < count_parameters(lora).frozen
