"""`--dry-run` of the flagship builds the Llama-3.1-8B Concat16 shape on the meta device, with no
download: 3.49B trainable of 11.52B parameters, and prints the generated DeepSpeed JSON; every other
recipe dry-runs too."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ROOT, run_entry
from train.config import load_config
from train.loop import dry_run


def test_flagship_dry_run_counts_without_downloading():
    r = run_entry(
        "train.py",
        "--config",
        str(ROOT / "configs/synE_concat16.yaml"),
        "--dry-run",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "# parameters: total 11,520,053,264 | trainable 3,489,792,016 | frozen 8,030,261,248" in r.stdout
    ds = json.loads(r.stdout.split("# DeepSpeed config\n", 1)[1])
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is True
    assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["gradient_accumulation_steps"] == 8


RECIPES = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_dry_runs_on_the_meta_device(recipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = dry_run(load_config(ROOT / "configs" / recipe))
    counts = re.search(r"# parameters: total ([\d,]+) \| trainable ([\d,]+)", text)
    total, trainable = (int(g.replace(",", "")) for g in counts.groups())
    assert 0 < trainable <= total
    if recipe in ("synE_full.yaml", "swallow_ja_cpt.yaml", "sft_zh.yaml", "swallow_sft_ja.yaml"):
        assert total == trainable == 8_030_261_248  # full tuning of the Llama-3(.1)-8B shape
    ds = json.loads(text.split("# DeepSpeed config\n", 1)[1])
    assert ds["bf16"]["enabled"] is True


def test_the_weights_config_wins_over_the_preset_and_overrides_are_checked(tmp_path):
    from transformers import LlamaConfig

    from train.errors import UserError
    from train.model import architecture

    cfg = load_config(ROOT / "configs/smoke/cpt_tiny.yaml").model
    weights = LlamaConfig(**architecture(cfg).to_dict())
    weights.eos_token_id = [2043, 2046]  # an instruct model's end-of-turn ids, which the preset lacks
    weights.save_pretrained(tmp_path)
    local = cfg.model_copy(update={"name_or_path": str(tmp_path), "overrides": {"num_hidden_layers": 1}})
    arch = architecture(local)
    assert arch.eos_token_id == [2043, 2046] and arch.num_hidden_layers == 1
    remote = cfg.model_copy(update={"name_or_path": "not-downloaded/model"})  # offline: the preset
    assert architecture(remote).eos_token_id == architecture(cfg).eos_token_id
    rope = cfg.model_copy(
        update={"overrides": {"rope_theta": 1e6}}
    )  # a LlamaConfig argument, not a to_dict key
    assert architecture(rope).rope_parameters["rope_theta"] == 1e6
    with pytest.raises(UserError, match="'dtype' is not a Llama config field"):
        architecture(cfg.model_copy(update={"overrides": {"dtype": "bfloat16"}}))  # model.dtype's job
    typo = cfg.model_copy(update={"overrides": {"num_hiden_layers": 1}})
    with pytest.raises(
        UserError, match="'num_hiden_layers' is not a Llama config field. Did you mean 'num_hidden_layers'"
    ):
        architecture(typo)
