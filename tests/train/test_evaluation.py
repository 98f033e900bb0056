"""The in-training eval hook (train/evaluation.py) in a world of one: a failing eval costs the run
nothing unless `eval.fail_on_error` asks for it, and the model, its mode and the RNGs are untouched."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT, SMOKE
from train import evaluation
from train.config import load_config
from train.model import build_for_training, build_tokenizer
from train.tracking import Tracker

FIXTURES = ROOT / "tests" / "fixtures" / "eval"


def _setup(tmp_path, *overrides):
    cfg = load_config(
        SMOKE,
        [
            "tracking=none",
            f"output_dir={tmp_path / 'run'}",
            "eval.suites=[cl_mmlu]",
            f"eval.data_dir={FIXTURES}",
            "eval.limit=1",
            "eval.every_steps=1",
            *overrides,
        ],
    )
    (tmp_path / "run").mkdir()
    torch.manual_seed(0)
    model = build_for_training(cfg).train()
    # the hook needs only `engine.module`; a DeepSpeed engine would add nothing it reads
    return cfg, SimpleNamespace(module=model), build_tokenizer(cfg.model), Tracker(cfg)


def _events(cfg) -> list[dict]:
    path = ROOT / cfg.output_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("failure", ["write", "data"])
def test_failed_eval_warns_records_event_and_training_goes_on(tmp_path, caplog, failure):
    if failure == "write":  # the results file cannot be written: <output_dir>/eval is a file
        cfg, engine, tokenizer, tracker = _setup(tmp_path)
        (tmp_path / "run" / "eval").write_text("not a directory")
    else:
        cfg, engine, tokenizer, tracker = _setup(tmp_path, f"eval.data_dir={tmp_path / 'missing'}")
    before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)

    with caplog.at_level(logging.WARNING, logger="train.evaluation"):
        evaluation.run(engine, tokenizer, cfg, 7, tracker)

    assert torch.equal(torch.rand(4), expected)
    assert engine.module.training
    for name, p in engine.module.named_parameters():
        assert torch.equal(p, before[name]), name
    assert "eval at step 7 failed on rank(s) [0]" in caplog.text and "training continues" in caplog.text
    (event,) = [e for e in _events(cfg) if e.get("event") == "eval_error"]
    assert event["step"] == 7 and event["ranks"] == [0] and event["error"]
    assert not (tmp_path / "run" / "eval" / "step-00000007.json").exists()


def test_failed_eval_raises_when_fail_on_error(tmp_path):
    cfg, engine, tokenizer, tracker = _setup(tmp_path, "eval.fail_on_error=true")
    (tmp_path / "run" / "eval").write_text("not a directory")
    with pytest.raises(RuntimeError, match=r"eval at step 3 failed on rank\(s\) \[0\].*FileExistsError"):
        evaluation.run(engine, tokenizer, cfg, 3, tracker)
    assert not [e for e in _events(cfg) if e.get("event") == "eval_error"]


def test_successful_eval_writes_results_and_logs(tmp_path):
    cfg, engine, tokenizer, tracker = _setup(tmp_path)
    evaluation.run(engine, tokenizer, cfg, 5, tracker)
    record = json.loads((tmp_path / "run" / "eval" / "step-00000005.json").read_text())
    assert record["step"] == 5 and record["n_samples"] == {"cl_mmlu": 1}
    assert [e["step"] for e in _events(cfg) if e.get("event") == "eval"] == [5]


def test_failure_the_peers_cannot_survive_stops_the_run(tmp_path, monkeypatch):
    # Inside generation (or a ZeRO-3 forward) the peers wait in collectives the failed rank cannot rejoin:
    # the hook must not swallow it into a warning, or this rank would train on while they hang.
    import eval_hooks.runner
    from eval_hooks.lockstep import OutOfStep

    cfg, engine, tokenizer, tracker = _setup(tmp_path)

    def fails_inside_generation(*args, **kwargs):
        raise OutOfStep("eval failed on rank 0 inside generation")

    monkeypatch.setattr(eval_hooks.runner, "evaluate", fails_inside_generation)
    with pytest.raises(OutOfStep, match="inside generation"):
        evaluation.run(engine, tokenizer, cfg, 4, tracker)
    assert not [e for e in _events(cfg) if e.get("event") == "eval_error"]


def test_an_eval_a_stop_skipped_at_the_last_step_runs_on_resume(tmp_path, data_cache):
    from tests.conftest import run_entry

    out = tmp_path / "run"
    sets = [f"output_dir={out}", f"data.cache_dir={data_cache}", "train.max_steps=2", "tracking=none"]
    sets += ["eval.suites=[cl_mmlu]", f"eval.data_dir={FIXTURES}", "eval.limit=1", "eval.every_steps=2"]
    args = ["--config", str(SMOKE), *(a for s in sets for a in ("--set", s))]
    r = run_entry("train.py", *args, env={"CONTINUALM_FAULT": "sigterm@2:0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out / "eval").exists()  # stopping: saved at once, the eval skipped
    r = run_entry("train.py", *args, "--resume", "auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "eval" / "step-00000002.json").read_text())["step"] == 2
    r = run_entry("train.py", *args, "--resume", "auto")  # done already: not run again
    assert r.returncode == 0 and [
        e["step"] for e in _events(SimpleNamespace(output_dir=out)) if e.get("event") == "eval"
    ] == [2]
