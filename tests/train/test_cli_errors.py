"""Bad input at the command line: one readable paragraph on stderr, exit code 2, no traceback.

Config errors run the real script in a subprocess (they exit before torch is imported); data and
resume errors call the same script's `main()` in this process (one rank), to spare a launch each.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from tests.conftest import ROOT, SMOKE, run_entry
from train.tracking import read_metrics


def _train_args(tmp_path, *sets, resume=None) -> list[str]:
    args = [
        "--config",
        str(SMOKE),
        "--set",
        f"output_dir={tmp_path / 'run'}",
        "--set",
        "tracking=none",
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    for s in sets:
        args += ["--set", s]
    return [*args, *(["--resume", resume] if resume else [])]


def _train(tmp_path, *sets, resume=None):
    return run_entry("train.py", *_train_args(tmp_path, *sets, resume=resume))


def _train_here(tmp_path, capsys, monkeypatch, *sets, resume=None, flags=()):
    """launch/train.py's main() in this process; returns what a subprocess run would."""
    spec = importlib.util.spec_from_file_location("launch_train", ROOT / "launch" / "train.py")
    monkeypatch.syspath_prepend(str(ROOT / "launch"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["train.py", *_train_args(tmp_path, *sets, resume=resume), *flags])
    code = script.main()
    out = capsys.readouterr()
    return subprocess.CompletedProcess(sys.argv, code, out.out, out.err)


def _check(r, *fragments):
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("continualm: error:")]
    assert len(err) == 1, r.stderr[-2000:]
    for f in fragments:
        assert f in err[0], err[0]


def test_unknown_key_with_suggestion(tmp_path):
    _check(_train(tmp_path, "optim.learning_rate=1e-4"), "unknown key 'optim.learning_rate'")


def test_wrong_type(tmp_path):
    _check(_train(tmp_path, "train.max_steps=many"), "'train.max_steps'", "'many'")


def test_missing_config_file(tmp_path):
    r = run_entry("train.py", "--config", str(tmp_path / "nope.yaml"))
    _check(r, "config file not found")


def test_missing_data_file(tmp_path, capsys, monkeypatch):
    _check(
        _train_here(tmp_path, capsys, monkeypatch, f"data.sources=[{{path: {tmp_path}/none.jsonl}}]"),
        "matches no data file",
    )


def test_empty_dataset(tmp_path, capsys, monkeypatch):
    f = tmp_path / "empty.jsonl"
    f.write_text("")
    _check(_train_here(tmp_path, capsys, monkeypatch, f"data.sources=[{{path: {f}}}]"), "has no usable rows")


def test_line_that_is_not_json(tmp_path, capsys, monkeypatch):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"text": "fine"}) + "\n{not json}\n")
    _check(
        _train_here(tmp_path, capsys, monkeypatch, f"data.sources=[{{path: {f}}}]"),
        f"{f}:2",
        "not valid JSON",
    )


def test_missing_text_column_lists_columns(tmp_path, capsys, monkeypatch):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"body": "x", "url": "y"}) + "\n")
    _check(
        _train_here(tmp_path, capsys, monkeypatch, f"data.sources=[{{path: {f}}}]"),
        "text field 'text' is missing",
        "body, url",
    )


def test_resume_refuses_changed_training_config(tmp_path, capsys, monkeypatch):
    r = _train_here(tmp_path, capsys, monkeypatch, "train.max_steps=2")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _train_here(tmp_path, capsys, monkeypatch, "train.max_steps=2", "optim.lr=0.002", resume="auto")
    _check(r, "different config", "optim.lr: 0.003 -> 0.002", "--allow-config-change")
    shards = sorted((tmp_path / "cache").iterdir())
    r = _train_here(tmp_path, capsys, monkeypatch, "train.max_steps=2", "data.seq_len=64", resume="auto")
    _check(r, "different config", "data.seq_len: 128 -> 64")
    assert (
        sorted((tmp_path / "cache").iterdir()) == shards
    )  # refused before a shard of the new length was built

    # a fresh run would replace and prune these checkpoints
    _check(_train_here(tmp_path, capsys, monkeypatch, "train.max_steps=2"), "already holds checkpoints")

    # allowed: the new optimizer settings apply (the loaded optimizer state carried the old lr)
    changed = ("train.max_steps=4", "optim.lr=0.001", "schedule.name=constant", "schedule.warmup_steps=0")
    flags = ("--allow-config-change",)
    r = _train_here(tmp_path, capsys, monkeypatch, *changed, resume="auto", flags=flags)
    assert r.returncode == 0, r.stderr[-2000:]
    lrs = {step: m["lr"] for step, m in read_metrics(tmp_path / "run" / "metrics.jsonl").items()}
    assert lrs[3] == lrs[4] == 0.001 and lrs[2] != 0.001

    # every checkpoint broken: refused with the reasons, not a silent start from step 0
    for state in (tmp_path / "run" / "checkpoints").glob("step-*/trainer_state.json"):
        state.unlink()
    _check(
        _train_here(tmp_path, capsys, monkeypatch, resume="auto"),
        "no complete checkpoint",
        "no trainer_state",
    )


def test_resume_refuses_other_prepared_data(tmp_path, capsys, monkeypatch):
    # the same config over a changed input file: the sampler's row ids would name other rows
    data = tmp_path / "docs.jsonl"
    data.write_text(
        (ROOT / "data_prep/samples/multilingual_cpt.jsonl").read_text(encoding="utf-8"), encoding="utf-8"
    )
    source = f"data.sources=[{{path: {data}, label: web}}]"
    r = _train_here(
        tmp_path, capsys, monkeypatch, source, "train.max_steps=2", "checkpoint.export_at_end=false"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    with data.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "one more document " * 40}) + "\n")
    again = (source, "train.max_steps=2", "checkpoint.export_at_end=false")
    _check(
        _train_here(tmp_path, capsys, monkeypatch, *again, resume="auto"),
        "was trained on other prepared data: source 'web' (rows",
        "--allow-data-change",
    )
    r = _train_here(tmp_path, capsys, monkeypatch, *again, resume="auto", flags=("--allow-data-change",))
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_resume_from_an_earlier_step_sets_the_later_ones_aside(tmp_path, capsys, monkeypatch):
    from train.checkpoint import latest_complete

    sets = ("train.max_steps=4", "checkpoint.every_steps=2", "checkpoint.export_at_end=false")
    assert _train_here(tmp_path, capsys, monkeypatch, *sets).returncode == 0
    ckpts = tmp_path / "run" / "checkpoints"
    # a budget lowered below the checkpoint's step is refused, not a run that trains nothing and exits 0
    lowered = ("train.max_steps=3", *sets[1:])
    r = _train_here(tmp_path, capsys, monkeypatch, *lowered, resume="auto", flags=("--allow-config-change",))
    _check(r, "step-00000004 is at step 4, past this config's 3 steps: raise the budget")
    r = _train_here(tmp_path, capsys, monkeypatch, *sets, resume=str(ckpts / "step-00000002"))
    assert r.returncode == 0, r.stderr[-2000:]
    (aside,) = ckpts.glob("step-00000004.abandoned-*")  # the first attempt's step 4, kept out of auto's reach
    assert not list(ckpts.glob("*.replaced-*")) and latest_complete(ckpts) == ckpts / "step-00000004"


def test_model_and_eval_settings_fail_before_data_preparation(tmp_path, capsys, monkeypatch):
    r = _train_here(tmp_path, capsys, monkeypatch, "model.overrides.hidden_sizee=2")
    _check(r, "hidden_sizee")
    r = _train_here(
        tmp_path, capsys, monkeypatch, "eval.suites=[cl_mmlu]", "eval.every_steps=1", "eval.data_dir=/nope"
    )
    _check(r, "eval.data_dir /nope is not a folder")
    two = "data.sources=[{path: data_prep/samples/multilingual_cpt.jsonl, label: a}, {path: data_prep/samples/ja_cpt.jsonl, label: b}]"
    refused = {  # settings the config alone makes impossible, each refused before the data is tokenized
        ("data.seq_len=8192",): "data.seq_len (8192) exceeds the model's max_position_embeddings (4096)",
        (
            "model.overrides.num_attention_heads=5",
        ): "model.overrides {'num_attention_heads': 5} give an invalid",
        ("optim.name=fused_adam",): "optim.name 'fused_adam' needs a CUDA GPU",
        ("schedule.name=wsd", "schedule.decay_steps=100"): "exceed the run's 40 steps",
        ("eval.suites=[cl_mmlu]", "eval.every_steps=1000", f"eval.data_dir={tmp_path}"): (
            "eval.every_steps (1000) is past the run's 40 steps"
        ),
        (
            two,
            "train.max_steps=null",
            "train.max_tokens=10000",
            "data.stages=[{tokens: 1000000, weights: {a: 1}}, {weights: {b: 1}}]",
        ): "data.stages.1 never trains: the stages before it take 1000000 tokens",
    }
    for sets, fragment in refused.items():
        _check(_train_here(tmp_path, capsys, monkeypatch, *sets), fragment)
    assert not (tmp_path / "cache").exists()  # nothing was prepared


def test_an_error_on_one_rank_ends_the_run_instead_of_hanging_it(tmp_path):
    import time

    start = time.monotonic()
    r = run_entry(
        "train.py",
        *_train_args(tmp_path, "train.max_steps=50"),
        nproc=2,
        env={"CONTINUALM_FAULT": "user_error@2:1"},
        timeout=300,
    )
    assert r.returncode != 0 and "continualm: error: injected user_error at step 2 on rank 1" in r.stderr
    assert time.monotonic() - start < 120  # no barrier left waiting for the peer (10 minutes, then a crash)


def test_repeated_sigterms_are_one_stop_request_and_a_second_ctrl_c_kills():
    import os
    import signal

    import pytest

    from train.loop import StopRequest

    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a launcher forwarding its own: still alive, still one request
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # asked again by hand
    finally:
        stop.restore()
