"""`launch/bench.py eval` on the tiny shape, in this process: one row per task with counts that follow from
the synthetic data dir and the generation cap (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch

from eval_hooks.benchmark import produced_tokens
from tests.conftest import bench_main

QUESTIONS, CAP, BATCH = 3, 3, 2


def test_rows_count_the_questions_and_the_generated_tokens(monkeypatch, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["--questions", str(QUESTIONS), "--max-gen-tokens", str(CAP), "--batch-size", str(BATCH)]
    assert bench_main(monkeypatch, "eval", *args, "--warmup", "0", "--json", str(out)) == 0
    mmlu, gsm8k = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert "| task | shape | dtype | questions | seconds | questions_per_s | gen_tokens |" in table
    assert f"| cl_mmlu | llama3_tiny | fp32 | {QUESTIONS} |" in table
    assert f"| cl_gsm8k | llama3_tiny | fp32 | {QUESTIONS} |" in table

    for row in (mmlu, gsm8k):
        assert row["questions"] == QUESTIONS and row["batch_size"] == BATCH and row["seconds"] > 0
        assert row["questions_per_s"] * row["seconds"] == pytest.approx(QUESTIONS)
    # Log-likelihood scores the choices without generating anything.
    assert mmlu["kind"] == "loglikelihood" and mmlu["generate_calls"] == 0 and mmlu["gen_tokens"] is None
    # Generation: one generate call per batch, at least one and at most CAP tokens per question.
    assert gsm8k["kind"] == "generation" and gsm8k["generate_calls"] == -(-QUESTIONS // BATCH)
    assert QUESTIONS <= gsm8k["gen_tokens"] <= QUESTIONS * CAP
    assert gsm8k["gen_tokens_per_s"] * gsm8k["seconds"] == pytest.approx(gsm8k["gen_tokens"])


def test_produced_tokens_stop_at_each_rows_first_eos():
    eos, pad = 9, 0
    new = torch.tensor([[5, 6, 7, 8], [5, eos, pad, pad], [eos, pad, pad, pad], [5, 6, eos, 7]])
    assert produced_tokens(new, [eos]) == 4 + 2 + 1 + 3
    assert produced_tokens(new[:, :0], [eos]) == 0
