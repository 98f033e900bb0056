"""Exact resume: a run stopped by SIGTERM, SIGKILL or a kill inside a save, then resumed with
`--resume auto`, logs the same losses as an uninterrupted run (fp32, CPU, 2 ranks, ZeRO 1/2/3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SMOKE, run_entry
from train.tracking import read_metrics

pytestmark = pytest.mark.slow
STEPS = 9


def _args(out: Path, cache: Path, stage: int) -> list[str]:
    return [
        "--config",
        str(SMOKE),
        "--set",
        f"output_dir={out}",
        "--set",
        f"data.cache_dir={cache}",
        "--set",
        f"deepspeed.zero_stage={stage}",
        "--set",
        f"train.max_steps={STEPS}",
        "--set",
        "checkpoint.every_steps=3",
        "--set",
        "checkpoint.keep_last=5",
        "--set",
        "checkpoint.export_at_end=false",
        "--set",
        "tracking=none",
    ]


def _run(out, cache, stage, *extra, fault=None):
    env = {"CONTINUALM_FAULT": fault} if fault else None
    return run_entry("train.py", *_args(out, cache, stage), *extra, nproc=2, env=env)


def _losses(out: Path) -> dict[int, float]:
    return {s: m["loss"] for s, m in read_metrics(out / "metrics.jsonl").items()}


def _resumed_from(out: Path) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["step"] for x in lines if '"event": "resume"' in x]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_kill_and_resume_gives_identical_losses(tmp_path, data_cache, stage):
    base = tmp_path / "uninterrupted"
    r = _run(base, data_cache, stage)
    assert r.returncode == 0, r.stderr[-3000:]
    expected = _losses(base)
    assert sorted(expected) == list(range(1, STEPS + 1))

    out = tmp_path / "interrupted"
    # SIGTERM reaches rank 0 only: every rank must agree to stop, save step 4 and exit cleanly.
    r = _run(out, data_cache, stage, fault="sigterm@4:0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "checkpoints" / "latest").read_text() == "step-00000004"
    assert max(_losses(out)) == 4
    # SIGKILL both ranks after step 7: the last checkpoint is step 6.
    r = _run(out, data_cache, stage, "--resume", "auto", fault="sigkill@7")
    assert r.returncode != 0
    assert (out / "checkpoints" / "latest").read_text() == "step-00000006"
    r = _run(out, data_cache, stage, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _resumed_from(out) == [4, 6]
    assert _losses(out) == expected  # exact equality, step by step


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, data_cache):
    out = tmp_path / "run"
    r = _run(out, data_cache, 2, fault="kill_in_save@6")
    assert r.returncode != 0
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-00000003"
    assert not (ckpts / "step-00000006").exists()  # only the hidden .tmp- folder was written
    assert any(p.name.startswith(".tmp-step-00000006") for p in ckpts.iterdir())
    r = _run(out, data_cache, 2, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _resumed_from(out) == [3]
    assert (ckpts / "latest").read_text() == f"step-{STEPS:08d}"
    assert not any(p.name.startswith(".tmp-") for p in ckpts.iterdir())
