"""LoRA adapters through peft: only adapter weights train, the base model stays frozen."""

from __future__ import annotations

import torch

from train.config import PeftConfig
from train.errors import UserError

ADAPTABLE = (torch.nn.Linear, torch.nn.Embedding)


def _checked_targets(model: torch.nn.Module, targets: list[str]) -> list[str] | str:
    """`targets` as peft matches them (a module's full name, or its dotted suffix: q_proj, self_attn.q_proj),
    each naming at least one layer LoRA can adapt; [all-linear] is peft's every-linear-but-the-head."""
    if targets == ["all-linear"]:
        return "all-linear"
    modules = dict(model.named_modules())
    adaptable = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, ADAPTABLE)})
    for target in targets:
        matched = [m for n, m in modules.items() if n == target or n.endswith("." + target)]
        if not matched:
            raise UserError(
                f"peft.target_modules {target!r} is not a module of this model; its linear and embedding "
                f"layers are: {adaptable} (or give [all-linear])"
            )
        wrong = sorted({type(m).__name__ for m in matched if not isinstance(m, ADAPTABLE)})
        if wrong:
            raise UserError(
                f"peft.target_modules {target!r} names {', '.join(wrong)} modules, which LoRA cannot adapt; "
                f"name their linear layers instead, e.g. {adaptable[:4]}"
            )
    return targets


def apply_lora(model: torch.nn.Module, cfg: PeftConfig):
    """Wrap `model` in a peft LoRA model (base weights frozen, adapters trainable)."""
    from peft import LoraConfig, get_peft_model

    targets = _checked_targets(model, cfg.target_modules)
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)
