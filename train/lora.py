"""LoRA adapters through peft: only adapter weights train, the base model stays frozen."""

from __future__ import annotations

import torch

from train.config import PeftConfig
from train.errors import UserError


def apply_lora(model: torch.nn.Module, cfg: PeftConfig):
    """Wrap `model` in a peft LoRA model (base weights frozen, adapters trainable)."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    unknown = sorted(set(cfg.target_modules) - names)
    if unknown:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise UserError(
            f"peft.target_modules {unknown} are not modules of this model; linear layers are: {linear}"
        )
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)
