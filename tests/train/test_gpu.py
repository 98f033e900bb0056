"""GPU smoke path (`pytest -m gpu` on the device): bf16, sdpa / flash attention, Liger, compiled blocks and
fused AdamW on the tiny shape, a few steps each. Deselected by default and skipped without CUDA."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from data_prep.sampler import RowSampler
from tests.conftest import SMOKE, bench_main
from train import distributed as dist
from train.config import load_config
from train.engine import build_engine
from train.loop import seed_everything, train_step
from train.model import build_for_training
from train.synthetic import make_rows

pytestmark = pytest.mark.gpu
SEQ = 256


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    dist.init()


def _cfg(*overrides):
    return load_config(SMOKE, ["tracking=none", "model.dtype=bf16", f"data.seq_len={SEQ}", *overrides])


def _losses(*overrides, steps: int = 3) -> list[float]:
    cfg = _cfg("deepspeed.zero_stage=2", "schedule.warmup_steps=0", *overrides)
    seed_everything(cfg.seed)
    model = build_for_training(cfg)
    rows = make_rows("cpt", 8, SEQ, model.config, seed=0)
    engine = build_engine(cfg, model, 1, cfg.total_steps())
    engine.train()
    sampler, n = RowSampler(len(rows), cfg.seed), cfg.rows_per_step
    return [train_step(engine, rows, sampler.rows(k * n, n), cfg)["loss"] for k in range(steps)]


@pytest.mark.parametrize(
    "switch",
    [
        "model.liger=true",
        "train.compile=true",
        "optim.fused=true",
        "model.activation_checkpointing=full",
        "model.activation_checkpointing=selective",
        "train.loss_chunk_tokens=1024",
        "deepspeed.overlap_comm=false",
    ],
)
def test_switch_trains_like_the_plain_step(switch):
    if switch == "model.liger=true" and importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger-kernel is not installed")
    plain, switched = _losses(), _losses(switch)
    assert switched == pytest.approx(plain, rel=2e-2)  # bf16 kernels differ in rounding only
    assert switched[-1] < switched[0]


def test_liger_swaps_every_norm_and_mlp():
    if importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger-kernel is not installed")
    from liger_kernel.transformers import LigerRMSNorm, LigerSwiGLUMLP

    model = build_for_training(_cfg("model.liger=true"))
    kinds = [type(m) for m in model.modules()]
    layers = model.config.num_hidden_layers
    assert kinds.count(LigerRMSNorm) == 2 * layers + 1 and kinds.count(LigerSwiGLUMLP) == layers


@pytest.mark.parametrize("attn", ["flash_attention_2", "flex_attention"])
def test_attention_kernel_keeps_packed_documents_apart(attn):
    # sdpa's document mask is checked against documents run alone on CPU (tests/data_prep/test_packing.py)
    from transformers.utils import is_flash_attn_2_available

    if attn == "flash_attention_2" and not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed")
    logits = {}
    for impl in ("sdpa", attn):
        cfg = _cfg(f"model.attn_implementation={impl}")
        seed_everything(cfg.seed)
        model = build_for_training(cfg).cuda().eval()
        batch = make_rows("cpt", 2, SEQ, model.config, seed=0).batch([0, 1])
        with torch.no_grad():
            logits[impl] = model(
                input_ids=batch["input_ids"].cuda(), position_ids=batch["position_ids"].cuda()
            ).logits.float()
    torch.testing.assert_close(logits[attn], logits["sdpa"], rtol=2e-2, atol=2e-2)


def test_bench_train_reports_mfu_on_the_gpu(monkeypatch, tmp_path):
    out = tmp_path / "bench.json"
    args = ["--seq", str(SEQ), "--steps", "2", "--warmup", "1", "--data", "sft", "--peer", "hf"]
    assert bench_main(monkeypatch, "train", *args, "--peak-tflops", "989", "--json", str(out)) == 0
    ours, peer = json.loads(out.read_text())
    assert ours["dtype"] == "bf16" and peer["impl"] == "hf"
    assert 0 < ours["mfu"] < 1 and ours["peak_mem_gb"] > 0
