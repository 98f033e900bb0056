"""The flagship's CPU child (Concat16-Lerp on the tiny model) through the real launcher, 2 ranks,
ZeRO-3, bf16: exact resume after SIGKILL, only the copies and alphas train, and the export loads in
stock transformers (with our package, and with trust_remote_code in a clean process) with the
training engine's logits."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import train.expansion  # noqa: F401  (registers controlllm_llama)
from tests.conftest import ROOT, WITHOUT_CONTINUALM, engine_logits, run_entry
from train.checkpoint import consolidated_state_dict
from train.config import load_config
from train.loop import seed_everything
from train.model import build_for_training
from train.tracking import read_metrics

pytestmark = pytest.mark.slow
RECIPE = ROOT / "configs" / "smoke" / "synE_concat16_tiny.yaml"


def _run(out, cache, *extra, fault=None):
    args = [
        "--config",
        str(RECIPE),
        "--set",
        f"output_dir={out}",
        "--set",
        f"data.cache_dir={cache}",
        "--set",
        "train.max_steps=6",
        "--set",
        "checkpoint.every_steps=3",
        "--set",
        "tracking=none",
        *extra,
    ]
    return run_entry(
        "train.py", *args, nproc=2, launcher="deepspeed", env={"CONTINUALM_FAULT": fault} if fault else None
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_cache):
    root = tmp_path_factory.mktemp("controlllm")
    r = _run(root / "base", data_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _run(root / "killed", data_cache, fault="sigkill@5").returncode != 0
    r = _run(root / "killed", data_cache, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def test_resume_after_sigkill_is_exact(runs):
    base = read_metrics(runs / "base" / "metrics.jsonl")
    resumed = read_metrics(runs / "killed" / "metrics.jsonl")
    keys = ("loss", "divergence", "alpha/pair_0", "alpha/pair_1", "grad_norm")
    assert {s: [m[k] for k in keys] for s, m in resumed.items()} == {
        s: [m[k] for k in keys] for s, m in base.items()
    }


def test_only_copies_and_interpolators_changed(runs):
    cfg = load_config(RECIPE)
    seed_everything(cfg.seed)
    initial = {k: v.float() for k, v in build_for_training(cfg).state_dict().items()}
    trained = consolidated_state_dict(runs / "base" / "checkpoints" / "step-00000006", zero_stage=3)
    assert set(trained) == set(initial)
    changed = {k for k in trained if not torch.equal(trained[k], initial[k])}
    trainable = {k for k in trained if ".expanded_layer." in k or k.endswith("interpolation_factor")}
    assert changed == trainable


def test_export_loads_with_engine_logits_in_and_out_of_our_package(runs, tmp_path):
    ckpt = runs / "base" / "checkpoints" / "step-00000006"
    probe = tmp_path / "engine_logits.pt"
    ref = engine_logits(ckpt, probe)
    export = runs / "base" / "export"
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    assert type(model).__name__ == "ControlLLMForCausalLM"
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits.float()
    torch.testing.assert_close(logits, ref["logits"], atol=0, rtol=0)
    # a clean interpreter outside the repo: only transformers + the files saved with the model
    code = WITHOUT_CONTINUALM + (
        "import sys, torch; from transformers import AutoModelForCausalLM as A; "
        f"m = A.from_pretrained({str(export)!r}, trust_remote_code=True).eval(); "
        f"ids = torch.load({str(probe)!r})['input_ids']; "
        f"torch.save(m(input_ids=ids).logits.float().detach(), {str(tmp_path / 'remote.pt')!r}); "
        "assert 'train' not in sys.modules"
    )
    subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, check=True, capture_output=True, timeout=300
    )
    torch.testing.assert_close(torch.load(tmp_path / "remote.pt"), ref["logits"], atol=0, rtol=0)


def test_merge_back_cli_folds_with_each_pairs_lerp_alpha(runs, tmp_path):
    export = runs / "base" / "export"
    r = run_entry("merge.py", "expansion", "--model", str(export), "--out", str(tmp_path / "folded"))
    assert r.returncode == 0, r.stderr[-2000:]
    folded = AutoModelForCausalLM.from_pretrained(tmp_path / "folded")
    assert type(folded).__name__ == "LlamaForCausalLM" and folded.config.num_hidden_layers == 4
    pair = AutoModelForCausalLM.from_pretrained(export).model.layers[1]
    alpha = torch.sigmoid(pair.interpolation_factor.float()).item()  # lerp: the trained theta
    w_pre = pair.pretrained_layer.mlp.up_proj.weight.float()
    w_exp = pair.expanded_layer.mlp.up_proj.weight.float()
    expected = ((1 - alpha) * w_pre + alpha * w_exp).to(folded.dtype)
    torch.testing.assert_close(folded.model.layers[1].mlp.up_proj.weight, expected, atol=0, rtol=0)
