"""Tiny random Llama models for the expansion tests (hidden 64, 4 layers, 4 heads, 2 kv heads, vocab 2048)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

# Tiny models gain nothing from threads, and on a shared 2-core machine thread spinning costs 10-30x.
torch.set_num_threads(1)


def tiny_config(num_layers: int = 4) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=2048,
        pad_token_id=0,
    )


def tiny_llama(num_layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(num_layers)).eval()


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> None:
    """Move the trainable-side weights (copies, interpolators) away from their identical-at-init values."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "expanded_layer" in name or "interp" in name:
            p.add_(scale * torch.randn(p.shape, generator=generator))


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(1, 2048, (2, 9), generator=torch.Generator().manual_seed(2))
