"""Saved expanded models load back through AutoModelForCausalLM, with or without our package."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import perturb, tiny_llama
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from tests.conftest import WITHOUT_CONTINUALM
from train.expansion import (
    ControlLLMForCausalLM,
    ExpansionConfig,
    expand_model,
    expanded_config,
    fold_pairs,
    merge_back,
    modeling,
)

PACKAGE_DIR = Path(modeling.__file__).parent


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A perturbed hybrid dlerp model saved to disk, and its logits on fixed input."""
    model = expand_model(tiny_llama(), ExpansionConfig(type="hybrid", method="dlerp", num_exp_layers=2))
    perturb(model)
    path = tmp_path_factory.mktemp("hybrid_dlerp")
    model.save_pretrained(path)
    ids = torch.arange(1, 10)[None]
    with torch.no_grad():
        return path, ids, model(ids).logits


def test_save_writes_auto_map_and_standalone_code(saved):
    path, _, _ = saved
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "controlllm_llama"
    assert config["auto_map"] == {
        "AutoConfig": "configuration.ControlLLMConfig",
        "AutoModelForCausalLM": "modeling.ControlLLMForCausalLM",
    }
    # The shipped code is our package's modules, verbatim: one source of truth.
    for name in ("modeling.py", "configuration.py", "interpolation.py", "divergence.py"):
        assert (path / name).read_text() == (PACKAGE_DIR / name).read_text()


def test_load_with_package_imported(saved):
    path, ids, logits = saved
    model = AutoModelForCausalLM.from_pretrained(path)
    assert isinstance(model, ControlLLMForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, logits, atol=0, rtol=0)


def test_fresh_process_loads_with_trust_remote_code(saved, tmp_path):
    path, ids, logits = saved
    script = WITHOUT_CONTINUALM + textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM
        try:
            import train
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("our package must not be importable here")
        model = AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True)
        with torch.no_grad():
            torch.save(model(torch.arange(1, 10)[None]).logits, "logits.pt")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    # -I: isolated mode, neither the cwd nor PYTHONPATH is on sys.path.
    subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, check=True, timeout=120)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), logits, atol=0, rtol=0)


def test_released_key_layout_loads_strictly(tmp_path):
    """Keys as the published checkpoints: pretrained_layer / expanded_layer / interpolation_factor of shape [1]."""
    base = tiny_llama()
    cfg = ExpansionConfig(type="concat", method="lerp", num_exp_layers=2)
    config = expanded_config(base.config, cfg)
    state = {}
    for key, tensor in base.state_dict().items():
        parts = key.split(".")
        if key.startswith("model.layers.") and int(parts[2]) in (1, 3):
            for branch in ("pretrained_layer", "expanded_layer"):
                state[".".join([*parts[:3], branch, *parts[3:]])] = tensor.clone()
        else:
            state[key] = tensor.clone()
    for i in (1, 3):
        state[f"model.layers.{i}.interpolation_factor"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(tmp_path)

    model, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert set(model.state_dict()) == set(state)
    ids = torch.arange(1, 10)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits, atol=1e-6, rtol=0)


def test_stack_exports_as_plain_llama(tmp_path):
    model = expand_model(tiny_llama(), ExpansionConfig(type="stack", num_exp_layers=2))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is LlamaForCausalLM and loaded.config.num_hidden_layers == 6
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())


@torch.no_grad()
def test_merge_back_of_lerp_pairs_follows_formula(tmp_path):
    model = expand_model(tiny_llama(), ExpansionConfig(type="concat", method="lerp", num_exp_layers=2))
    perturb(model, scale=0.3)
    merged = fold_pairs(model)
    assert type(merged) is LlamaForCausalLM and merged.config.num_hidden_layers == 4
    for j in model.config.pair_layers:
        pair = model.model.layers[j]
        w = torch.sigmoid(pair.interpolation_factor).item()
        assert w != 0.5
        for name, merged_param in merged.model.layers[j].named_parameters():
            pre = pair.pretrained_layer.get_parameter(name)
            exp = pair.expanded_layer.get_parameter(name)
            torch.testing.assert_close(merged_param, (1 - w) * pre + w * exp)
    torch.testing.assert_close(
        merged.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight
    )

    model.save_pretrained(tmp_path / "expanded")
    out = merge_back(tmp_path / "expanded", tmp_path / "merged", weight=0.25)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(reloaded) is LlamaForCausalLM
    pair = model.model.layers[1]
    expected = (
        0.75 * pair.pretrained_layer.mlp.down_proj.weight + 0.25 * pair.expanded_layer.mlp.down_proj.weight
    )
    torch.testing.assert_close(reloaded.model.layers[1].mlp.down_proj.weight, expected)


def test_merge_back_of_dlerp_needs_a_weight():
    model = expand_model(tiny_llama(), ExpansionConfig(type="concat", method="dlerp", num_exp_layers=2))
    with pytest.raises(ValueError, match="pass weight"):
        fold_pairs(model)
