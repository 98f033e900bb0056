"""FLOPs per token as really computed (docs/BENCHMARKS.md), against a hand count on the tiny shape.

llama3_tiny: d 64, ffn 192, 4 layers, 4 heads / 2 kv heads (head dim 16), vocab 2048, untied lm_head.
"""

from __future__ import annotations

import pytest

from tests.conftest import SMOKE
from train.config import ModelConfig, load_config
from train.model import build_for_training, build_model, count_parameters, flops_per_token

D, FFN, VOCAB, T = 64, 192, 2048, 64
BLOCK = D * D * 2 + D * 32 * 2 + 3 * D * FFN + 2 * D  # q, o; k, v; gate, up, down; two norms = 49,280
HEAD = D + VOCAB * D  # final norm + lm_head (the input embedding is a lookup, not counted)
ATTN = D * T  # one block's attention: 4 ATTN forward, 8 ATTN backward


def _model(*overrides):
    cfg = load_config(SMOKE, ["tracking=none", f"data.seq_len={T}", *overrides])
    return build_for_training(cfg, meta=True)


def test_plain_model_is_6n_plus_12ldt():
    assert BLOCK == 49_280
    expected = 6 * (4 * BLOCK + HEAD) + 12 * 4 * D * T
    assert flops_per_token(_model(), T) == expected


def test_tied_lm_head_is_counted_once():
    model = build_model(ModelConfig(preset="llama3_2_1b", dtype="bf16"), meta=True)
    n = count_parameters(model).total  # the tied embedding / lm_head matrix once
    assert flops_per_token(model, 4096) == 6 * n + 12 * 16 * 2048 * 4096


@pytest.mark.parametrize("method, gate", [("lerp", 1), ("dlerp", 2 * D + 1)])
def test_concat_counts_frozen_blocks_as_computed(method, gate):
    # num_exp_layers 2 of 4: layers 1 and 3 become pairs (frozen pretrained + trainable copy + gate).
    model = _model(
        "expansion={type: concat, num_exp_layers: 2, method: " + method + "}",
        "model.activation_checkpointing=none",
    )
    forward_only = 2 * BLOCK + 4 * ATTN  # below the lowest trainable block: no gradient at all
    frozen = 4 * BLOCK + 12 * ATTN  # forward + input-gradient
    trainable = 6 * (BLOCK + gate) + 12 * ATTN
    expected = (
        forward_only  # layer 0
        + forward_only  # layer 1, pretrained branch: its input needs no gradient
        + trainable  # layer 1, copy (the lowest trainable block)
        + frozen  # layer 2
        + frozen  # layer 3, pretrained branch
        + trainable  # layer 3, copy
        + 4 * HEAD  # final norm and lm_head: forward + input-gradient, frozen
    )
    assert flops_per_token(model, T) == expected


def test_lora_trains_adapters_only():
    model = _model("peft={r: 8, alpha: 32, target_modules: [q_proj, v_proj]}")
    lora = 4 * (8 * (D + D) + 8 * (D + 32))  # per layer q: A 8xD, B Dx8; v: A 8xD, B 32x8
    frozen = 4 * BLOCK + HEAD
    assert flops_per_token(model, T) == 4 * frozen + 6 * lora + 12 * 4 * ATTN


def test_partial_skips_the_backward_below_the_first_unfrozen_layer():
    model = _model("expansion={type: partial, num_exp_layers: 2}")  # layers 1 and 3 train
    expected = (2 * BLOCK + 4 * ATTN) + 2 * (6 * BLOCK + 12 * ATTN) + (4 * BLOCK + 12 * ATTN) + 4 * HEAD
    assert flops_per_token(model, T) == expected


def test_lora_on_the_head_alone_runs_no_backward_through_the_blocks():
    # nothing below the head trains: no input-gradient anywhere, the adapters' weight-gradients only
    model = _model("peft={r: 8, alpha: 32, target_modules: [lm_head]}")
    lora = 8 * D + VOCAB * 8  # A 8xD, B VOCABx8
    blocks = 4 * (2 * BLOCK + 4 * ATTN)
    assert flops_per_token(model, T) == blocks + 2 * (HEAD + lora) + 2 * lora
