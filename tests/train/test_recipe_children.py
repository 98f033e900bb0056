"""The CPU children of the Swallow CPT and the SFT recipes run end to end on 2 ranks (ZeRO-3, bf16, as
their parents), resume exactly after a SIGTERM, and export a model that loads; so does the LoRA child under
ZeRO-1 (its ZeRO-3 run is tests/train/test_lora.py), whose adapter dropout makes the RNG state matter and
whose frozen base is missing from stage 1's ZeRO files (the export takes it from the module states)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from tests.conftest import ROOT, torchrun_helper
from train.tracking import read_metrics

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "child, overrides",
    [
        ("swallow_ja_cpt_tiny", []),
        ("sft_zh_tiny", []),
        ("swallow_sft_ja_tiny", []),
        ("lora_tiny", ["deepspeed.zero_stage=1", "tracking=none", "checkpoint.every_steps=3"]),
    ],
)
def test_child_recipe_resumes_exactly_and_exports(child, overrides, tmp_path, data_cache):
    config = str(ROOT / f"configs/smoke/{child}.yaml")
    r = torchrun_helper("tests/train/resume_worker.py", config, str(tmp_path), str(data_cache), *overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {name: tmp_path / name for name in ("uninterrupted", "resumed")}
    metrics = {name: read_metrics(out / "metrics.jsonl") for name, out in runs.items()}
    losses = {name: [m[s]["loss"] for s in sorted(m)] for name, m in metrics.items()}
    assert len(losses["uninterrupted"]) == 4 and all(x == x for x in losses["uninterrupted"])
    assert losses["resumed"] == losses["uninterrupted"]  # bit-exact, not approximately
    lines = (runs["resumed"] / "metrics.jsonl").read_text().splitlines()
    events = [(e["event"], e["step"]) for e in map(json.loads, lines) if "event" in e]
    assert events == [("stop", 2), ("resume", 2)]  # it really stopped and resumed

    states = {
        n: json.loads((out / "checkpoints/step-00000004/trainer_state.json").read_text())
        for n, out in runs.items()
    }
    state = states["uninterrupted"]
    for key in ("consumed_rows", "tokens", "source_rows", "source_target_tokens"):
        assert states["resumed"][key] == state[key], key
    assert sum(state["source_rows"].values()) == state["consumed_rows"]
    targets = sum(m["target_tokens"] for m in metrics["uninterrupted"].values())
    assert sum(state["source_target_tokens"].values()) == targets

    for out in runs.values():
        model = AutoModelForCausalLM.from_pretrained(out / "export")
        assert model.config.num_hidden_layers == 4
