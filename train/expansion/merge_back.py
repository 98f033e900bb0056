"""Fold each concat pair into one block, W = (1 - w) W_pre + w W_exp, giving a plain Llama."""

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .build import llama_fields
from .modeling import ConcatPair, ControlLLMForCausalLM

_PAIR_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Files besides weights and config that a model folder carries and the merged model keeps.
_CARRIED = ("tokenizer*", "special_tokens_map.json", "chat_template*", "generation_config.json")


def _pair_weights(model: ControlLLMForCausalLM, weight: float | Sequence[float] | None) -> dict[int, float]:
    pairs = model.config.pair_layers
    if weight is None:
        if model.config.expansion["method"] != "lerp":
            raise ValueError("dlerp/dlerpin alphas vary per token: pass weight (e.g. the logged mean alpha)")
        pair_modules: list[ConcatPair] = [model.model.layers[j] for j in pairs]
        weight = [torch.sigmoid(p.gate.float()).item() for p in pair_modules]
    weights = [float(weight)] * len(pairs) if isinstance(weight, (int, float)) else [float(w) for w in weight]
    if len(weights) != len(pairs):
        raise ValueError(f"got {len(weights)} merge weights for {len(pairs)} pairs")
    return dict(zip(pairs, weights, strict=True))


@torch.no_grad()
def fold_pairs(
    model: ControlLLMForCausalLM, weight: float | Sequence[float] | None = None
) -> LlamaForCausalLM:
    """A plain Llama with each pair folded with weight w (one value, one per pair, or None: lerp's alpha)."""
    weights = _pair_weights(model, weight)
    config = LlamaConfig(**llama_fields(model.config))
    config._attn_implementation = model.config._attn_implementation
    with torch.device("meta"):
        merged = LlamaForCausalLM(config)
    source = model.state_dict()
    state = {}
    for key in merged.state_dict():
        match = _PAIR_KEY.fullmatch(key)
        if match is None or int(match[1]) not in weights:
            state[key] = source[key]
            continue
        w = weights[int(match[1])]
        pre = source[f"model.layers.{match[1]}.pretrained_layer.{match[2]}"]
        exp = source[f"model.layers.{match[1]}.expanded_layer.{match[2]}"]
        state[key] = ((1 - w) * pre.float() + w * exp.float()).to(pre.dtype)
    merged.load_state_dict(state, strict=True, assign=True)
    merged.model.rotary_emb = model.model.rotary_emb
    if config.tie_word_embeddings:
        merged.tie_weights()
    merged.generation_config = model.generation_config
    return merged


def merge_back(
    model_dir: str | Path, out_dir: str | Path, weight: float | Sequence[float] | None = None
) -> Path:
    """Load an expanded model folder, fold its pairs and save a plain Llama (with its tokenizer) to `out_dir`."""
    model = ControlLLMForCausalLM.from_pretrained(model_dir, dtype="auto")
    out = Path(out_dir)
    fold_pairs(model, weight).save_pretrained(out)
    for pattern in _CARRIED:
        for path in Path(model_dir).glob(pattern):
            shutil.copy2(path, out / path.name)
    return out


def logged_alphas(metrics_file: str | Path) -> list[float]:
    """Per-pair mean alphas of the last step logged in a run's metrics.jsonl (`alpha/pair_k`)."""
    from train.tracking import read_metrics

    steps = read_metrics(metrics_file)
    last = steps[max(steps)] if steps else {}
    alphas = sorted((int(k.split("_")[-1]), v) for k, v in last.items() if k.startswith("alpha/pair_"))
    if not alphas:
        raise ValueError(f"{metrics_file} logs no alpha/pair_k values: pass the weight explicitly")
    return [v for _, v in alphas]
