"""Export from ZeRO-2 and ZeRO-3 checkpoints: the Hugging Face model's logits equal the training
engine's on a fixed batch, and the folder carries the tokenizer and chat template."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import SMOKE, engine_logits, run_entry

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stage", [2, 3])
def test_export_matches_training_engine(tmp_path, data_cache, stage):
    out = tmp_path / "run"
    r = run_entry(
        "train.py",
        "--config",
        str(SMOKE),
        "--set",
        f"output_dir={out}",
        "--set",
        f"data.cache_dir={data_cache}",
        "--set",
        f"deepspeed.zero_stage={stage}",
        "--set",
        "train.max_steps=3",
        "--set",
        "tracking=none",
        "--set",
        "checkpoint.export_at_end=false",
        nproc=2,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = out / "checkpoints" / "step-00000003"
    r = run_entry("export.py", "--checkpoint", str(out / "checkpoints"), "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr[-3000:]
    probe = tmp_path / "engine_logits.pt"
    ref = engine_logits(ckpt, probe)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits
    torch.testing.assert_close(logits, ref["logits"], atol=1e-5, rtol=1e-5)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.chat_template and tok.bos_token == "<|begin_of_text|>"
    # exporting again into the same folder is refused rather than silently overwritten
    again = run_entry("export.py", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf"))
    assert again.returncode == 2 and "not empty" in again.stderr
