"""The README's main job, exactly as a user runs it: the flagship's tiny CPU child (Concat16-Lerp)
through the `deepspeed` launcher with 2 CPU ranks. It must finish in under 3 minutes with a falling
loss, log to metrics.jsonl and to an offline wandb run, and export a model that loads and generates
with a KV cache."""

from __future__ import annotations

import glob
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import train.expansion  # noqa: F401  (registers controlllm_llama)
from tests.conftest import ROOT, run_entry
from tests.wandb_reader import history
from train.tracking import read_metrics

pytestmark = pytest.mark.slow
MAIN_JOB = ROOT / "configs" / "smoke" / "synE_concat16_tiny.yaml"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_cache):
    out = tmp_path_factory.mktemp("smoke") / "synE_concat16_tiny"
    env = {"WANDB_API_KEY": None, "WANDB_MODE": None}  # no key: tracking must fall back to offline
    start = time.monotonic()
    r = run_entry(
        "train.py",
        "--config",
        str(MAIN_JOB),
        "--set",
        f"output_dir={out}",
        "--set",
        f"data.cache_dir={data_cache}",
        nproc=2,
        launcher="deepspeed",
        env=env,
    )
    seconds = time.monotonic() - start
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return out, seconds, r.stdout + r.stderr


def test_finishes_fast_and_loss_falls(smoke_run):
    out, seconds, _ = smoke_run
    assert seconds < 180
    losses = [m["loss"] for m in read_metrics(out / "metrics.jsonl").values()]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < losses[0] - 0.3, losses


def test_metrics_log_and_offline_wandb_agree(smoke_run):
    out, _, log = smoke_run
    assert "logging offline" in log
    metrics = read_metrics(out / "metrics.jsonl")
    for key in (
        "loss",
        "divergence",
        "alpha/pair_0",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "tokens_seen",
        "peak_mem_gb",
    ):
        assert key in metrics[1]
    (run_file,) = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    logged = {row["step"]: row for row in history(run_file)}
    assert sorted(logged) == sorted(metrics)
    for step, m in metrics.items():
        assert logged[step]["loss"] == pytest.approx(m["loss"])
        assert logged[step]["lr"] == pytest.approx(m["lr"])
        assert logged[step]["alpha/pair_1"] == pytest.approx(m["alpha/pair_1"])


def test_run_directory_contents(smoke_run):
    out, _, _ = smoke_run
    assert (out / "config.yaml").exists() and (out / "config_hash").exists()
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpts == ["step-00000020", "step-00000040"]  # every 20 steps, keep_last 2
    assert (out / "checkpoints" / "latest").read_text() == "step-00000040"


def test_export_loads_and_generates(smoke_run):
    out, _, _ = smoke_run
    model = AutoModelForCausalLM.from_pretrained(out / "export").eval()
    tok = AutoTokenizer.from_pretrained(out / "export")
    stops = model.generation_config.eos_token_id  # a reply ends at the end of its turn, as in Meta's Instruct
    assert stops == [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")]
    ids = tok("The river", return_tensors="pt").input_ids
    assert type(model).__name__ == "ControlLLMForCausalLM"
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape[1] == ids.shape[1] + 8
    assert torch.equal(cached, uncached)
