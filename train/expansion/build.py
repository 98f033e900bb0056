"""Build a Control-LLM model from a Llama (weights or meta device) and decide which parameters train."""

import difflib
import logging
import re

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from .configuration import ControlLLMConfig, ExpansionConfig
from .interpolation import get_interpolator
from .modeling import ConcatPair, ControlLLMForCausalLM
from .placement import placed_layers, plan_expansion

logger = logging.getLogger(__name__)

# Zeroing these makes an inserted (stacked) block add nothing to the residual stream: an identity at init.
_ZEROED_IN_STACKED = (
    "self_attn.o_proj.weight",
    "self_attn.o_proj.bias",
    "mlp.down_proj.weight",
    "mlp.down_proj.bias",
)
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")
FREEZE_POLICIES = ("expansion", "partial", "full")


def llama_fields(config: LlamaConfig) -> dict:
    """The architecture fields of `config`, without class identity or expansion layout."""
    fields = config.to_dict()
    for key in (
        "model_type",
        "architectures",
        "transformers_version",
        "auto_map",
        "_name_or_path",
        "expansion",
    ):
        fields.pop(key, None)
    return fields


def expanded_config(base_config: LlamaConfig, cfg: ExpansionConfig) -> LlamaConfig:
    """The config of the expanded model: a ControlLLMConfig, or a deeper LlamaConfig for stack-only."""
    plan = plan_expansion(base_config.num_hidden_layers, cfg.num_exp_layers, cfg.type)
    fields = llama_fields(base_config)
    fields["num_hidden_layers"] = len(plan.sources)
    layout = {"source_layers": plan.sources, "stacked_layers": plan.stacked, "pair_layers": plan.pairs}
    # Stack-only exports as a plain Llama; its `expansion` entry is informational (and drives the freeze policy).
    config_cls = LlamaConfig if cfg.type == "stack" else ControlLLMConfig
    config = config_cls(**fields, expansion={**cfg.to_dict(), **layout})
    config._attn_implementation = base_config._attn_implementation
    return config


def build_meta(base_config: LlamaConfig, cfg: ExpansionConfig) -> LlamaForCausalLM | ControlLLMForCausalLM:
    """The expanded model on the meta device (no memory): for dry runs and parameter counts."""
    config = expanded_config(base_config, cfg)
    with torch.device("meta"):
        return LlamaForCausalLM(config) if cfg.type == "stack" else ControlLLMForCausalLM(config)


def _fresh_interpolator(cfg: ExpansionConfig, hidden_size: int) -> dict[str, torch.Tensor]:
    interpolator = get_interpolator(cfg.method)
    gate = interpolator.build(hidden_size, cfg.interpolation_factor)
    if isinstance(gate, nn.Parameter):
        return {interpolator.attr: gate.detach()}
    return {f"{interpolator.attr}.{name}": t for name, t in gate.state_dict().items()}


@torch.no_grad()
def expand_model(base: LlamaForCausalLM, cfg: ExpansionConfig) -> LlamaForCausalLM | ControlLLMForCausalLM:
    """Expand `base` (plain, unpartitioned tensors): concat pairs / stacked copies, identical to `base` at init.

    Frozen parts reuse the base tensors (no copy); trainable copies are clones. Nothing is deep-copied.
    """
    if any(hasattr(p, "ds_id") for p in base.parameters()):
        raise ValueError(
            "expand_model needs full tensors: expand before deepspeed.initialize / outside zero.Init"
        )
    model = build_meta(base.config, cfg)
    expansion = model.config.expansion
    sources, pairs, stacked = (
        expansion["source_layers"],
        expansion["pair_layers"],
        expansion["stacked_layers"],
    )
    base_state = base.state_dict()
    reference = base.get_input_embeddings().weight
    # One freshly initialised interpolator per pair (dlerp gates start from independent random weights).
    interp = {j: _fresh_interpolator(cfg, base.config.hidden_size) for j in pairs}

    state = {}
    for key in model.state_dict():
        match = _LAYER_KEY.fullmatch(key)
        if match is None:
            state[key] = base_state[key]
            continue
        j, rest = int(match[1]), match[2]
        base_prefix = f"model.layers.{sources[j]}."
        if j in pairs:
            branch, _, sub = rest.partition(".")
            if branch == "pretrained_layer":
                state[key] = base_state[base_prefix + sub]
            elif branch == "expanded_layer":
                state[key] = base_state[base_prefix + sub].clone()
            else:
                state[key] = interp[j][rest].to(dtype=reference.dtype, device=reference.device)
        elif j in stacked:
            source = base_state[base_prefix + rest]
            state[key] = torch.zeros_like(source) if rest in _ZEROED_IN_STACKED else source.clone()
        else:
            state[key] = base_state[base_prefix + rest]
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers (RoPE frequencies) are not in the state dict: reuse the base's module.
    model.model.rotary_emb = base.model.rotary_emb
    if model.config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = base.generation_config
    return model


def count_parameters(model: nn.Module) -> tuple[int, int, int]:
    """(total, trainable, frozen) parameter counts; ZeRO-3 partitioned parameters count in full."""
    total = trainable = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable, total - trainable


def apply_freeze_policy(
    model: nn.Module, policy: str = "expansion", num_exp_layers: int | None = None
) -> tuple[int, int, int]:
    """Set requires_grad for `expansion` (only copies and interpolators train), `partial` or `full`.

    With `freeze_interpolation`, lerp's theta is frozen and dlerp / dlerpin freeze only the gate bias (the
    reference's behaviour): their gate weight still trains.

    `partial` unfreezes the layers the placement rule picks for `num_exp_layers` (no expansion). Returns
    and logs (total, trainable, frozen).
    """
    if policy not in FREEZE_POLICIES:
        close = difflib.get_close_matches(policy, FREEZE_POLICIES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown freeze policy {policy!r}; choose from {list(FREEZE_POLICIES)}.{hint}")
    model.requires_grad_(policy == "full")
    layers = model.model.layers
    if policy == "partial":
        if num_exp_layers is None:
            raise ValueError("the partial policy needs num_exp_layers")
        for i in placed_layers(len(layers), num_exp_layers):
            layers[i].requires_grad_(True)
    elif policy == "expansion":
        expansion = getattr(model.config, "expansion", None)
        if not expansion:
            raise ValueError("the expansion policy needs an expanded model (config.expansion is missing)")
        for j in expansion["stacked_layers"]:
            layers[j].requires_grad_(True)
        for j in expansion["pair_layers"]:
            pair: ConcatPair = layers[j]
            pair.expanded_layer.requires_grad_(True)
            pair.interpolator.set_trainable(pair.gate, expansion["freeze_interpolation"])
    counts = count_parameters(model)
    logger.info("parameters: %s total, %s trainable, %s frozen", *(f"{n:,}" for n in counts))
    return counts
