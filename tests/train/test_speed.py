"""Speed switches on CPU: fused AdamW makes the same update, selective checkpointing recomputes what it
says, GPU-only kernels refuse clearly, and none of the switches changes the config hash (they change how
fast, not what is trained)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.utils import is_flash_attn_2_available

from data_prep.sampler import RowSampler
from data_prep.shards import prepare
from tests.conftest import SMOKE
from train import distributed as dist
from train.config import config_hash, load_config
from train.engine import build_engine
from train.errors import UserError
from train.loop import seed_everything, train_step
from train.model import build_for_training, build_tokenizer


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    dist.init()


def _params_after_one_step(data_cache, *overrides):
    cfg = load_config(
        SMOKE, ["tracking=none", f"data.cache_dir={data_cache}", "deepspeed.zero_stage=2", *overrides]
    )
    seed_everything(cfg.seed)
    data = prepare(cfg.data, build_tokenizer(cfg.model))
    engine = build_engine(cfg, build_for_training(cfg), 1, cfg.total_steps())
    engine.train()
    train_step(engine, data, RowSampler(len(data), cfg.seed).rows(0, cfg.rows_per_step), cfg)
    return {n: p.detach().clone() for n, p in engine.module.named_parameters()}, engine


def test_fused_adamw_makes_the_same_update(data_cache):
    common = ["schedule.warmup_steps=0", "optim.eps=1e-4", "optim.weight_decay=0.1"]
    plain, _ = _params_after_one_step(data_cache, *common)
    fused, engine = _params_after_one_step(data_cache, *common, "optim.fused=true")
    assert all(g.get("fused") for g in engine.optimizer.optimizer.param_groups)
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _backward_ops(mode: str) -> Counter:
    """The aten ops the backward of one forward runs (recomputation shows up as forward ops)."""
    cfg = load_config(SMOKE, [f"model.activation_checkpointing={mode}"])
    torch.manual_seed(0)
    model = build_for_training(cfg).train()
    loss = model(input_ids=torch.randint(0, 2000, (1, 16))).logits.float().square().mean()
    with _OpCounter() as counter:
        loss.backward()
    return counter.counts


def test_selective_checkpointing_recomputes_elementwise_ops_not_matmuls():
    none, full, selective = (_backward_ops(m) for m in ("none", "full", "selective"))
    layers = 4
    assert none["silu"] == 0 and none["rsqrt"] == 0  # nothing is recomputed
    assert full["silu"] == selective["silu"] == layers  # SiLU is recomputed once per block
    assert full["rsqrt"] == selective["rsqrt"] >= 2 * layers  # both RMSNorms of each block
    assert full["mm"] > none["mm"]  # full recomputes the blocks' projections and attention...
    assert selective["mm"] == none["mm"]  # ...selective keeps their outputs

    def attention(counts):
        return sum(
            n for op, n in counts.items() if op.startswith("_scaled_dot") and not op.endswith("backward")
        )

    assert attention(full) == layers and attention(selective) == 0


@pytest.mark.parametrize("recipe", ["synE_concat16_tiny.yaml", "lora_tiny.yaml"])
@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_runs_no_backward_through_frozen_lower_blocks(recipe, mode):
    """Block 0 is frozen under both recipes (Control-LLM pairs start at block 1; LoRA trains adapters only):
    its input must not require a gradient, or the backward runs through the frozen blocks for nothing."""
    cfg = load_config(SMOKE.parent / recipe, [f"model.activation_checkpointing={mode}", "tracking=none"])
    model = build_for_training(cfg).train()
    seen = []
    block0 = next(m for n, m in model.named_modules() if n.endswith("layers.0"))
    block0.register_forward_pre_hook(
        lambda _, args, kw: seen.append((kw.get("hidden_states", *args[:1])).requires_grad), with_kwargs=True
    )
    model(input_ids=torch.randint(0, 2000, (1, 16))).logits.float().square().mean().backward()
    assert seen and not any(seen)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_fused_needs_adamw_torch():
    with pytest.raises(UserError, match="optim.fused applies to optim.name 'adamw_torch'"):
        load_config(SMOKE, ["optim.fused=true", "optim.name=fused_adam"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_liger_refuses_without_cuda_but_dry_runs():
    cfg = load_config(SMOKE, ["model.liger=true"])
    with pytest.raises(UserError, match="model.liger needs a CUDA GPU"):
        build_for_training(cfg)
    build_for_training(cfg, meta=True)  # --dry-run counts shapes anywhere


def test_speed_switches_keep_the_config_hash():
    base = config_hash(load_config(SMOKE))
    switches = (
        "model.liger=true",
        "train.compile=true",
        "optim.fused=true",
        "model.activation_checkpointing=selective",
        "train.loss_chunk_tokens=64",
    )
    for switch in switches:
        assert config_hash(load_config(SMOKE, [switch])) == base, switch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_flex_attention_refuses_to_train_on_cpu_but_dry_runs():
    cfg = load_config(SMOKE, ["model.attn_implementation=flex_attention"])
    with pytest.raises(UserError, match="'flex_attention' trains on a CUDA GPU only"):
        build_for_training(cfg)
    build_for_training(cfg, meta=True)


@pytest.mark.skipif(is_flash_attn_2_available(), reason="checks the refusal without flash-attn")
def test_flash_attention_without_the_package_dry_runs_and_stops_a_run_before_data_prep(tmp_path):
    from train.loop import train

    cfg = load_config(
        SMOKE,
        [
            "model.attn_implementation=flash_attention_2",
            f"output_dir={tmp_path / 'run'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "tracking=none",
        ],
    )
    build_for_training(cfg, meta=True)  # --dry-run and exports build shapes anywhere
    with pytest.raises(UserError, match="'flash_attention_2' needs a CUDA GPU and the flash-attn package"):
        train(cfg)
    assert not (tmp_path / "cache").exists()  # before any data was prepared
