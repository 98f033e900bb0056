import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_eval.api.model import LM

from eval_hooks import lockstep, runner
from eval_hooks.runner import evaluate, scalars, write_results
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "eval"


def test_suite_end_to_end_restores_rng_and_train_mode(tiny_model, tiny_tokenizer, tmp_path):
    def reseed() -> None:
        random.seed(123)
        np.random.seed(123)
        torch.manual_seed(123)

    def draws() -> tuple:
        return random.random(), np.random.rand(4).tolist(), torch.rand(4).tolist()

    tiny_model.train()
    reseed()
    expected = draws()
    reseed()  # lm-eval reseeds Python's, numpy's and torch's generators with its own seeds
    results = evaluate(
        tiny_model, tiny_tokenizer, ["control_llm_zh"], FIXTURES, batch_size=4, max_gen_tokens=4
    )
    assert draws() == expected  # the training trajectory does not see the eval
    assert tiny_model.training
    tiny_model.eval()

    assert results["n_samples"] == {
        "cl_ceval_valid": 5,
        "cl_ceval_valid_cot_zh": 5,
        "cl_cmmlu": 4,
        "cl_cmmlu_cot_zh": 4,
        "cl_bbh_cot_3shot": 5,
        "cl_mmlu": 6,
        "cl_mmlu_pro": 3,
    }
    board = results["aggregates"]["control_llm"]
    assert set(board["columns"]) == {"CEval", "CEvalC", "CMMLU", "CMMLUC", "BBH", "MMLU", "MMLU-Pro"}
    assert board["columns"]["CEval"] == 100 * results["tasks"]["cl_ceval_valid"]["acc,none"]
    assert all(0 <= v <= 100 for v in board["aggregates"].values())
    # 5 of the card's 1346 C-Eval questions: every aggregate is partial, and logged under a name that says so
    assert board["questions"]["CEval"] == {"scored": 5, "available": 5, "card": 1346}
    assert board["partial"] == [*board["columns"], "C-Avg", "O-Avg", "Overall"]
    flat = scalars(results)
    assert flat["eval/cl_mmlu/acc/none"] == results["tasks"]["cl_mmlu"]["acc,none"]
    assert flat["eval/control_llm/Overall_partial"] == board["aggregates"]["Overall"]
    assert "eval/control_llm/Overall" not in flat

    path = write_results(
        tmp_path / "step_10" / "eval.json", results, tiny_model, FIXTURES, step=10, config_hash="abc"
    )
    record = json.loads(path.read_text())
    assert record["step"] == 10 and record["config_hash"] == "abc"
    assert record["tasks"] == results["tasks"] and len(record["data_sha256"]) == 16
    assert record["model"]["config_sha256"]


def test_unknown_suite_suggests_a_name(tiny_model, tiny_tokenizer):
    import pytest

    with pytest.raises(KeyError, match="Did you mean 'control_llm_zh'"):
        evaluate(tiny_model, tiny_tokenizer, ["control_llm_z"], FIXTURES)


def test_two_ranks_stay_in_lockstep(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    cmd += [str(REPO / "tests" / "eval_hooks" / "dist_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["forwards"] == rank1["forwards"] > 0
    assert rank1["results"] is None
    assert rank0["results"]["n_samples"] == {"cl_mmlu": 6, "cl_bbh_cot_3shot": 5}

    # One rank's failure reaches the other at its next collective; both leave the eval at the same point.
    hook = {r["hook"]["outcome"] for r in (rank0, rank1)}
    assert hook == {"ok"}  # the in-training hook warns and training goes on
    assert rank0["hook"]["warnings"] == [
        "eval at step 5 failed on rank(s) [1] (rank 1: ValueError: injected scoring failure); training continues"
    ]
    assert rank1["hook"]["warnings"] == ["eval at step 5 failed on this rank (1)"]
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(e["event"], e["ranks"], e["error"]) for e in events if "event" in e] == [
        ("eval_error", [1], "rank 1: ValueError: injected scoring failure")
    ]
    assert rank0["after_gather"]["outcome"] == "KeyError: 'injected aggregation failure'"
    assert rank1["after_gather"]["outcome"].startswith("PeerFailed: 1 other rank(s) failed during the eval")
    assert rank1["forward"]["outcome"] == "RuntimeError: injected forward failure"
    assert rank0["forward"]["outcome"].startswith("PeerFailed")
    for r in (0, 1):
        generate = (rank0, rank1)[r]["generate"]["outcome"]
        assert generate.startswith(f"OutOfStep: eval failed on rank {r} inside generation (synced_gpus")
        assert generate.endswith("RuntimeError: injected generation failure")
    assert all(
        r[case]["in_step"] for r in (rank0, rank1) for case in ("hook", "after_gather", "forward", "generate")
    )
    assert rank0["again"] == rank0["results"] and rank1["again"] is None  # and the next eval scores as before


CARD_SIZES = {
    "cl_ceval_valid_cot_zh": 1346,
    "cl_cmmlu_cot_zh": 11582,
    "cl_bbh_cot_3shot": 6511,
    "cl_mmlu_pro": 12032,
    "cl_meta_bbh_3shot": 6511,
    "cl_meta_mmlu_pro_5shot": 12032,
}


def _lm_eval_output(scored: dict[str, int]) -> dict:
    """lm-eval's output for the CoT and generative tasks of both Control-LLM suites, Meta's scoring higher."""
    cot, bbh, pro = "exact_match,last-match", "exact_match,get-answer", "exact_match,custom-extract"
    results = {
        "cl_ceval_valid_cot_zh": {cot: 0.3},
        "cl_cmmlu_cot_zh": {cot: 0.4},
        "cl_bbh_cot_3shot": {bbh: 0.6},
        "cl_mmlu_pro": {pro: 0.3},
        "cl_meta_bbh_3shot": {bbh: 0.7},
        "cl_meta_mmlu_pro_5shot": {pro: 0.4},
    }
    counts = {t: {"original": n, "effective": scored.get(t, n)} for t, n in CARD_SIZES.items()}
    return {"results": results, "n-samples": counts}


def test_both_control_llm_suites_keep_their_boards():
    # Both map to the Control-LLM card; the open prompts' O-Avg and Overall were dropped for Meta's.
    results = runner.summarize(_lm_eval_output({}), ["control_llm_zh", "control_llm_zh_meta"])
    open_board, meta_board = results["aggregates"]["control_llm"], results["aggregates"]["control_llm_meta"]
    assert open_board["columns"]["BBH"] == pytest.approx(60.0) and meta_board["columns"][
        "BBH"
    ] == pytest.approx(70.0)
    assert open_board["aggregates"]["C-Avg"] == meta_board["aggregates"]["C-Avg"]  # the same CoT columns
    assert open_board["aggregates"]["O-Avg"] < meta_board["aggregates"]["O-Avg"]
    flat = scalars(results)
    assert flat["eval/control_llm/Overall"] == open_board["aggregates"]["Overall"]
    assert flat["eval/control_llm_meta/Overall"] == meta_board["aggregates"]["Overall"]
    assert open_board["partial"] == meta_board["partial"] == []


def test_an_aggregate_of_partial_columns_is_marked_wherever_it_goes(tiny_model, tmp_path):
    from eval_hooks import plot, scoreboard

    # ceval/val lost a subject file: 2 of 1346 questions scored, weighted as 1346 in C-Avg
    results = runner.summarize(_lm_eval_output({"cl_ceval_valid_cot_zh": 2}), ["control_llm_zh"])
    board = results["aggregates"]["control_llm"]
    assert board["questions"]["CEvalC"] == {"scored": 2, "available": 1346, "card": 1346}
    assert board["partial"] == ["CEvalC", "C-Avg", "Overall"]
    flat = scalars(results)  # wandb and metrics.jsonl
    assert {k for k in flat if k.startswith("eval/control_llm/")} == {
        "eval/control_llm/C-Avg_partial",
        "eval/control_llm/O-Avg",
        "eval/control_llm/Overall_partial",
    }
    path = tmp_path / "run" / "eval" / "step-00000010.json"  # the result JSON, its board and counts
    write_results(path, results, tiny_model, FIXTURES, step=10)
    record = json.loads(path.read_text())
    assert record["aggregates"]["control_llm"]["partial"] == board["partial"]
    assert record["n_available"]["cl_ceval_valid_cot_zh"] == 1346
    assert "C-Avg (partial)" in plot.collect(tmp_path / "run")["control_llm"]  # its own plotted series
    (tmp_path / "run" / "eval.prev-20261201-120000").mkdir()  # an earlier run's, set aside by a fresh one
    (tmp_path / "run" / "eval.prev-20261201-120000" / "step-00000005.json").write_text(path.read_text())
    assert [s for s, _ in plot.collect(tmp_path / "run")["control_llm"]["O-Avg"]] == [10]
    assert scoreboard.load_board("control_llm", path)["partial"] == board["partial"]  # the scoreboard command


def test_every_rank_needs_a_doc_of_every_task():
    tasks = runner.load_tasks(runner.task_manager(FIXTURES), ["cl_mmlu", "cl_mgsm_ja"])
    docs = {name: len(task.eval_docs) for name, task in tasks.items()}
    assert docs == {"cl_mmlu": 6, "cl_mgsm_ja": 3}
    runner._check_docs_per_rank(tasks, None, 3)
    runner._check_docs_per_rank(tasks, 2, 2)
    with pytest.raises(
        ValueError, match=r"with 4 ranks these have fewer \(limit=None applied\): \{'cl_mgsm_ja': 3\}"
    ):
        runner._check_docs_per_rank(tasks, None, 4)
    with pytest.raises(ValueError, match=r"\(limit=1 applied\): \{'cl_mmlu': 1, 'cl_mgsm_ja': 1\}"):
        runner._check_docs_per_rank(tasks, 1, 2)


def test_swallow_ja_suite_end_to_end(tiny_model, tiny_tokenizer):
    results = evaluate(tiny_model, tiny_tokenizer, ["swallow_ja"], FIXTURES, batch_size=4, max_gen_tokens=4)
    board = results["aggregates"]["swallow_ja"]
    assert len(board["columns"]) == 10 and 0 <= board["aggregates"]["Ja Avg"] <= 1
    assert results["n_samples"]["cl_jmmlu"] == 6 and results["n_samples"]["cl_jhumaneval"] == 3
    assert {"rouge2_mecab,none", "rouge2_tokenizer,none"} <= set(results["tasks"]["cl_xlsum_ja"])


def test_swallow_en_suite_end_to_end(tiny_model, tiny_tokenizer):
    results = evaluate(tiny_model, tiny_tokenizer, ["swallow_en"], FIXTURES, batch_size=4, max_gen_tokens=4)
    board = results["aggregates"]["swallow_en"]
    assert len(board["columns"]) == 9 and 0 <= board["aggregates"]["En Avg"] <= 1


def test_mera_suite_end_to_end(tiny_model, tiny_tokenizer):
    # Two docs per task keep the 23 tasks (code tasks draw 10 samples each) fast.
    results = evaluate(
        tiny_model, tiny_tokenizer, ["mera"], FIXTURES, limit=2, batch_size=4, max_gen_tokens=3
    )
    board = results["aggregates"]["mera"]
    assert len(board["columns"]) == 15 and len(board["diagnostics"]) == 8
    assert 0 <= board["aggregates"]["Total"] <= 1  # all 15 base tasks scored
    assert "f1_macro,none" in results["tasks"]["cl_mera_rcb"]
    assert set(results["tasks"]["cl_mera_rucodeeval"]) == {"pass@1,all", "pass@5,all", "pass@10,all"}
    # ruEthics has no single score: its MCCs are reported (the records come interleaved by question, so the
    # first two ask "correct" and "good"); ruDetox reports only the chrF proxy, never J.
    ethics = board["diagnostics"]["ruEthics"]
    assert sorted(ethics) == sorted(
        f"mcc_{q}_{c}"
        for q in ("correct", "good")
        for c in ("virtue", "law", "moral", "justice", "utilitarianism")
    )
    assert board["diagnostics"]["ruDetox"].keys() == {"chrf_ref"}


def test_meta_prompt_suite_end_to_end(tiny_model, tiny_tokenizer):
    results = evaluate(
        tiny_model, tiny_tokenizer, ["control_llm_zh_meta"], FIXTURES, batch_size=4, max_gen_tokens=3
    )
    meta = {"cl_meta_mmlu_5shot", "cl_meta_mmlu_pro_5shot", "cl_meta_bbh_3shot"}
    assert meta <= results["n_samples"].keys() and all(results["n_samples"][t] == 3 for t in meta)
    assert "acc,none" in results["tasks"]["cl_meta_mmlu_5shot"]
    board = results["aggregates"]["control_llm_meta"]  # the card's columns filled from Meta's prompts
    assert board["columns"].keys() == {"CEval", "CEvalC", "CMMLU", "CMMLUC", "BBH", "MMLU", "MMLU-Pro"}
    assert board["aggregates"].keys() == {"C-Avg", "O-Avg", "Overall"}


class _ScriptedLM(LM):
    """A stand-in for HFLM: empty generations and constant log-likelihoods, recording each task's token cap."""

    max_gen_toks = 256  # HFLM's default cap
    caps: dict[str, int] = {}

    def __init__(self, pretrained=None, tokenizer=None, batch_size=1):
        super().__init__()

    def loglikelihood(self, requests, disable_tqdm=False):
        return [(-1.0, False) for _ in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm=False):
        self.caps.update({r.task_name: r.args[1]["max_gen_toks"] for r in requests})
        return ["" for _ in requests]


@pytest.fixture
def scripted_lm(monkeypatch):
    _ScriptedLM.caps = {}
    monkeypatch.setattr(lockstep, "hflm_classes", lambda: (_ScriptedLM, _ScriptedLM))
    return _ScriptedLM


def test_suites_sharing_tasks_run_together_and_caps_only_lower(scripted_lm, monkeypatch):
    import lm_eval.evaluator

    reports = []
    report = reports.append
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", report)
    # control_llm_zh and swallow_en share cl_mmlu: lm-eval refuses the two groups together.
    names = ["control_llm_zh", "swallow_en", "cl_jcommonsenseqa"]
    results = evaluate(torch.nn.Linear(1, 1), None, names, FIXTURES, limit=1, max_gen_tokens=300)
    # lm-eval's environment report (pip list, nvidia-smi) is skipped for our calls, and put back after
    assert reports == [] and lm_eval.evaluator.add_env_info is report
    assert results["aggregates"].keys() == {"control_llm", "swallow_en"}
    assert len(results["aggregates"]["swallow_en"]["columns"]) == 9
    assert len(results["n_samples"]) == 7 + 9 - 1 + 1  # the shared task scored once
    # max_gen_tokens caps each task's own limit: 512 or 1024 -> 300, but 1 (JCommonsenseQA) and 32 (SQuAD2) stay.
    caps = scripted_lm.caps
    assert caps["cl_bbh_cot_3shot"] == caps["cl_bbh_cot_fewshot"] == caps["cl_mmlu_pro"] == 300
    assert caps["cl_jcommonsenseqa"] == 1 and caps["cl_squadv2"] == 32
