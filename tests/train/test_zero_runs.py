"""Runs of the tiny CPT recipe on 2 CPU ranks (fp32) under ZeRO 2 and 3 (ZeRO-1, whose optimizer and checkpoint
code are ZeRO-2's, resumes exactly and exports in the LoRA recipe's run, tests/train/test_recipe_children.py).

Exact resume: a run stopped by SIGTERM (rank 0 only), SIGKILL, or a kill inside a checkpoint save,
then resumed with `--resume auto`, logs the same losses, step for step, as an uninterrupted run.
Export: the Hugging Face folder's logits equal the training engine's on a fixed batch.
MFU: the logged one divides by the peak of both ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import ROOT, SMOKE, engine_logits, run_entry
from train.checkpoint import export_hf
from train.config import load_config
from train.errors import UserError
from train.model import build_for_training, flops_per_token
from train.tracking import read_metrics

pytestmark = pytest.mark.slow
STEPS = 9
EVAL_HOOK = [
    f"--set={s}"
    for s in (
        "eval.suites=[cl_mmlu, cl_gsm8k]",
        f"eval.data_dir={ROOT / 'tests/fixtures/eval'}",
        "eval.every_steps=4",
        "eval.limit=2",
        "eval.max_gen_tokens=8",
    )
]


def _run(out: Path, cache: Path, stage: int, *extra: str, fault: str | None = None):
    sets = [
        f"output_dir={out}",
        f"data.cache_dir={cache}",
        f"deepspeed.zero_stage={stage}",
        f"train.max_steps={STEPS}",
        "checkpoint.every_steps=3",
        "checkpoint.keep_last=5",
        "checkpoint.export_at_end=false",
        "tracking=none",
        "train.peak_tflops=1",  # MFU is logged (not a training key: resumes take it as it is)
    ]
    args = ["--config", str(SMOKE), *(a for s in sets for a in ("--set", s)), *extra]
    return run_entry("train.py", *args, nproc=2, env={"CONTINUALM_FAULT": fault} if fault else None)


def _losses(out: Path) -> dict[int, float]:
    return {s: m["loss"] for s, m in read_metrics(out / "metrics.jsonl").items()}


def _resumed_from(out: Path) -> list[int]:
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [e["step"] for e in events if e.get("event") == "resume"]


def _latest(out: Path) -> str:
    return (out / "checkpoints" / "latest").read_text()


@pytest.fixture(scope="module", params=[2, 3], ids=lambda s: f"zero{s}")
def uninterrupted(request, tmp_path_factory, data_cache):
    stage = request.param
    out = tmp_path_factory.mktemp(f"zero{stage}") / "uninterrupted"
    r = _run(out, data_cache, stage)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(_losses(out)) == list(range(1, STEPS + 1))
    return stage, out


def test_logged_mfu_is_per_device(uninterrupted):
    _, out = uninterrupted
    flops = flops_per_token(build_for_training(load_config(SMOKE), meta=True), 128)  # data.seq_len 128
    for m in read_metrics(out / "metrics.jsonl").values():  # tokens_per_s: both ranks' rows
        assert m["mfu"] == pytest.approx(m["tokens_per_s"] * flops / (1e12 * 2))  # 1 TFLOP/s on each rank


def test_kill_and_resume_gives_identical_losses(uninterrupted, tmp_path, data_cache):
    stage, base = uninterrupted
    out = tmp_path / "interrupted"
    # SIGTERM reaches rank 0 only: every rank must agree to stop, save step 4 and exit cleanly.
    r = _run(out, data_cache, stage, fault="sigterm@4:0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _latest(out) == "step-00000004" and max(_losses(out)) == 4
    resumes = [4]
    if stage == 3:
        # Killed after the step-6 shards are written but before the checkpoint is made visible.
        assert _run(out, data_cache, stage, "--resume", "auto", fault="kill_in_save@6").returncode != 0
        assert _latest(out) == "step-00000004"
        assert not (out / "checkpoints" / "step-00000006").exists()
        assert (out / "checkpoints" / ".tmp-step-00000006").exists()
        resumes.append(4)
    # SIGKILL both ranks after step 7: the last checkpoint is step 6.
    assert _run(out, data_cache, stage, "--resume", "auto", fault="sigkill@7").returncode != 0
    assert _latest(out) == "step-00000006"
    # ZeRO-3: the last segment also runs the in-training eval hook (a log-likelihood and a generation
    # task, all ranks in lockstep) at step 8; it must not change the trajectory either.
    r = _run(out, data_cache, stage, "--resume", "auto", *(EVAL_HOOK if stage == 3 else ()))
    assert r.returncode == 0, r.stderr[-3000:]
    assert _resumed_from(out) == [*resumes, 6]
    assert _losses(out) == _losses(base)  # exact equality, step by step
    if stage == 3:
        result = json.loads((out / "eval" / "step-00000008.json").read_text())
        assert result["step"] == 8 and result["n_samples"] == {"cl_mmlu": 2, "cl_gsm8k": 2}
        events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert [e["step"] for e in events if e.get("event") == "eval"] == [8]
    assert not any(p.name.startswith(".tmp-") for p in (out / "checkpoints").iterdir())


def test_export_matches_training_engine(uninterrupted, tmp_path):
    stage, base = uninterrupted
    final = base / "checkpoints" / f"step-{STEPS:08d}"
    if stage == 2:  # through the command line once
        r = run_entry(
            "export.py", "--checkpoint", str(base), "--out", str(tmp_path / "hf")
        )  # the run: its latest
        assert r.returncode == 0, r.stderr[-3000:]
    else:
        export_hf(final, tmp_path / "hf")
    ref = engine_logits(final, tmp_path / "engine_logits.pt")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits
    torch.testing.assert_close(logits, ref["logits"], atol=1e-5, rtol=1e-5)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.chat_template and tok.bos_token == "<|begin_of_text|>"
    # exporting again into the same folder is refused rather than silently overwritten
    with pytest.raises(UserError, match="not empty"):
        export_hf(final, tmp_path / "hf")
