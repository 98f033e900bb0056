"""The CPU children of the Swallow CPT and the SFT recipes run end to end on 2 ranks through the real
launcher (ZeRO-3, bf16, as their parents) and export a model that loads."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from tests.conftest import ROOT, run_entry
from train.tracking import read_metrics

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("child", ["swallow_ja_cpt_tiny", "sft_zh_tiny", "swallow_sft_ja_tiny"])
def test_child_recipe_runs_and_exports(child, tmp_path, data_cache):
    out = tmp_path / child
    r = run_entry(
        "train.py",
        "--config",
        str(ROOT / f"configs/smoke/{child}.yaml"),
        "--set",
        f"output_dir={out}",
        "--set",
        f"data.cache_dir={data_cache}",
        "--set",
        "train.max_steps=4",
        nproc=2,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [m["loss"] for m in read_metrics(out / "metrics.jsonl").values()]
    assert len(losses) == 4 and all(loss == loss for loss in losses)  # four finite steps
    model = AutoModelForCausalLM.from_pretrained(out / "export")
    assert model.config.num_hidden_layers == 4
