"""Released Control-LLM folders (the reference's config.json) convert to ours and load strictly.

The synthetic folders follow the reference's format (linkedin/ControlLLM model_expander.py): a transformers
4.x Llama config.json with `model_type: causallmexpansion` (concat, hybrid) or `llama` (stack), an
`expansion` dict with the reference's 13 keys, and safetensors with its keys. The layout is worked out here
with the reference's own bookkeeping, independently of our placement code.
"""

import copy
import importlib.util
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tests.conftest import ROOT
from train.expansion import ControlLLMForCausalLM, ExpansionConfig, expand_model
from train.expansion.released import ReleasedFormatError, convert_released, released_config

# A Llama-3.1 style config.json as transformers 4.4x writes it (rope_scaling / rope_theta, torch_dtype).
LLAMA_4X = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
    "mlp_bias": False,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 64,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": "4.46.0",
    "use_cache": True,
    "vocab_size": 2048,
}
NUM_LAYERS, NUM_EXP = 4, 2
_ZEROED = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


@pytest.fixture(scope="module")
def base() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**LLAMA_4X, num_hidden_layers=NUM_LAYERS)).eval()


def reference_blocks(expand_type: str) -> list[tuple[str, int]]:
    """(kind, original layer) per top-level block, as the reference's expand_layers_* walk the layers."""
    split, blocks, turn = max(NUM_LAYERS // NUM_EXP, 1), [], 0
    for i in range(NUM_LAYERS):
        if (i + 1) % split:
            blocks.append(("frozen", i))
            continue
        kind = {"concat": "pair", "stack": "stack"}.get(expand_type) or ("stack", "pair")[turn % 2]
        turn += 1
        blocks += [("frozen", i), ("stack", i)] if kind == "stack" else [("pair", i)]
    return blocks


def write_released(folder, base, expand_type, method="lerp", **expansion_overrides):
    """A 'trained' released checkpoint: perturbed copies and interpolators, the reference's config.json."""
    g = torch.Generator().manual_seed(3)
    noisy = lambda t: t + 0.05 * torch.randn(t.shape, generator=g)  # noqa: E731
    source = base.state_dict()
    blocks = reference_blocks(expand_type)
    state = {k: v.clone() for k, v in source.items() if not k.startswith("model.layers.")}
    for j, (kind, i) in enumerate(blocks):
        for rest in {k.split(".", 3)[3] for k in source if k.startswith(f"model.layers.{i}.")}:
            t = source[f"model.layers.{i}.{rest}"]
            if kind == "frozen":
                state[f"model.layers.{j}.{rest}"] = t.clone()
            elif kind == "stack":
                state[f"model.layers.{j}.{rest}"] = noisy(torch.zeros_like(t) if rest in _ZEROED else t)
            else:
                state[f"model.layers.{j}.pretrained_layer.{rest}"] = t.clone()
                state[f"model.layers.{j}.expanded_layer.{rest}"] = noisy(t)
        if kind == "pair" and method == "lerp":
            state[f"model.layers.{j}.interpolation_factor"] = torch.tensor([0.7])
        elif kind == "pair":
            fan_in = 64 * (2 if method == "dlerp" else 1)
            state[f"model.layers.{j}.interp_weight.fc.weight"] = 0.1 * torch.randn(1, fan_in, generator=g)
            state[f"model.layers.{j}.interp_weight.fc.bias"] = torch.tensor([0.4])
    expansion = {
        "expand_type": expand_type,
        "merge_method": method,
        "freezed_layers": [j for j, (kind, _) in enumerate(blocks) if kind == "frozen"],
        "expanded_from": "/shared/public/models/Meta-Llama-3.1-8B",
        "num_ori_layers": NUM_LAYERS,
        "num_exp_layers": NUM_EXP,
        "interpolation_factor": 0,
        "interpolation_loss_alpha": 1,
        "interpolation_loss_type": "mse",
        "interpolation_norm_alpha": 0,
        "freeze_interpolation_factor": True,
        "freeze_ori_layers": True,
        "freeze_ori_non_layers": True,
        **expansion_overrides,
    }
    concat_like = expand_type != "stack"
    raw = {
        **LLAMA_4X,
        "_name_or_path": "/shared/user/run/checkpoint-1000",
        "architectures": ["LlamaForCausalLMExpansion" if concat_like else "LlamaForCausalLM"],
        "model_type": "causallmexpansion" if concat_like else "llama",
        "num_hidden_layers": len(blocks),
        "expansion": expansion,
        "trained_from": "/shared/public/models/Meta-Llama-3.1-8B",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "evaluation_results.json").write_text('{"eval_avg_interp_weights": {"layer_3": 0.6}}')
    return raw, state


@pytest.mark.parametrize(
    "expand_type, method", [("concat", "lerp"), ("hybrid", "dlerp"), ("concat", "dlerpin"), ("stack", "lerp")]
)
def test_converted_folder_loads_strictly_with_our_logits(tmp_path, base, expand_type, method):
    raw, state = write_released(tmp_path / "released", base, expand_type, method)
    out = convert_released(tmp_path / "released", tmp_path / "ours")

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert set(model.state_dict()) == set(state)
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "released/model.safetensors").read_bytes()
    assert (out / "evaluation_results.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["expansion"]["base_model"] is None  # the authors' absolute path is not kept
    if expand_type == "stack":
        assert type(model) is LlamaForCausalLM and "auto_map" not in config
    else:
        assert type(model) is ControlLLMForCausalLM and config["model_type"] == "controlllm_llama"
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling.ControlLLMForCausalLM"
        assert (out / "modeling.py").exists()
        assert config["expansion"]["method"] == method
        assert config["expansion"]["divergence"] == {"type": "mse", "weight": 1.0, "detach_pretrained": False}
        assert config["expansion"]["freeze_interpolation"] is True

    # The same weights in a model our own code expands from the base.
    ours = expand_model(
        copy.deepcopy(base), ExpansionConfig(type=expand_type, method=method, num_exp_layers=NUM_EXP)
    )
    ours.load_state_dict(state, strict=True)
    ids = torch.arange(1, 12)[None]
    with torch.no_grad():
        expected = ours(ids).logits
        # Not bit for bit: mmapped and in-memory weights may take different kernel paths (~1e-7 apart).
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-6, rtol=0)
        assert not torch.allclose(expected, base(ids).logits)  # the trained parts matter


@pytest.mark.parametrize(
    "change, key",
    [
        ({"merge_method": "slerp"}, "expansion.merge_method"),
        ({"interpolation_norm_alpha": -1}, "expansion.interpolation_norm_alpha"),
        ({"interpolation_loss_alpha": -1}, "expansion.interpolation_loss_alpha"),
        ({"interpolation_loss_type": "dot"}, "expansion.interpolation_loss_type"),
        ({"interpolation_factor": None}, "expansion.interpolation_factor"),
        ({"freeze_ori_layers": False}, "expansion.freeze_ori_layers"),
        ({"freezed_layers": [0, 1, 2]}, "expansion.freezed_layers"),
        ({"num_exp_layers": -2}, "expansion.num_exp_layers"),
        ({"expand_type": "moe"}, "expansion.expand_type"),
        ({"new_knob": 1}, "expansion.new_knob"),
    ],
)
def test_unsupported_values_name_the_key(tmp_path, base, change, key):
    raw, _ = write_released(tmp_path, base, "concat", "lerp")
    raw["expansion"].update(change)
    with pytest.raises(ReleasedFormatError, match=key.replace(".", r"\.")):
        released_config(raw)


def test_top_level_mismatches_name_the_key(tmp_path, base):
    raw, _ = write_released(tmp_path, base, "hybrid", "dlerp")
    for key, value in (
        ("num_hidden_layers", 4),
        ("model_type", "llama"),
        ("architectures", ["Qwen2ForCausalLM"]),
    ):
        with pytest.raises(ReleasedFormatError, match=f"config.json {key} ="):
            released_config({**raw, key: value})
    assert released_config(raw, base_model="meta-llama/Llama-3.1-8B").expansion["base_model"] == (
        "meta-llama/Llama-3.1-8B"
    )


def export_main(monkeypatch):
    """launch/export.py's main, called in-process."""
    spec = importlib.util.spec_from_file_location("launch_export", ROOT / "launch" / "export.py")
    monkeypatch.syspath_prepend(str(ROOT / "launch"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.main


def test_cli_refuses_weights_that_do_not_match(tmp_path, base, capsys, monkeypatch):
    raw, state = write_released(tmp_path / "released", base, "concat", "lerp")
    del state["model.layers.1.interpolation_factor"]
    save_file(state, tmp_path / "released/model.safetensors", metadata={"format": "pt"})
    main = export_main(monkeypatch)
    code = main(["released", "--model", str(tmp_path / "released"), "--out", str(tmp_path / "ours")])
    err = capsys.readouterr().err
    assert code == 2 and "missing ['model.layers.1.interpolation_factor']" in err, err
    assert not (tmp_path / "ours").exists()


def test_cli_names_a_truncated_weights_file(tmp_path, base, capsys, monkeypatch):
    write_released(tmp_path / "released", base, "concat", "lerp")
    weights = tmp_path / "released/model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    main = export_main(monkeypatch)
    code = main(["released", "--model", str(tmp_path / "released"), "--out", str(tmp_path / "ours")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"continualm: error: cannot read weights file {weights}: "), err
    assert len(err.splitlines()) == 1 and not (tmp_path / "ours").exists()


def test_output_is_never_an_input_and_replaces_only_when_asked(tmp_path, base):
    released = tmp_path / "released"
    write_released(released, base, "concat")
    before = sorted((p.name, p.stat().st_size) for p in released.iterdir())
    for out in (released, released / "ours", tmp_path):  # is, inside, holds the source
        with pytest.raises(ValueError, match="overlap"):
            convert_released(released, out, overwrite=True)
    assert sorted((p.name, p.stat().st_size) for p in released.iterdir()) == before
    umask = os.umask(0o027)
    try:
        out = convert_released(released, tmp_path / "ours")
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o750  # not mkdtemp's 0700
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        convert_released(released, out)
    assert convert_released(released, out, overwrite=True) == out
