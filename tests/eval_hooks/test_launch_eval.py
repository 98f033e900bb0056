"""launch/eval.py end to end (a standalone run on an HF folder, the scoreboard and the plot commands), and its
errors in process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval_hooks.cli import main

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "eval"


def _launch(*args: str) -> str:
    cmd = [sys.executable, str(REPO / "launch" / "eval.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO / "launch")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_run_on_hf_dir(tiny_model, tiny_tokenizer, tmp_path):
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    out = tmp_path / "results.json"
    _launch("--model", str(model_dir), "--suite", "cl_mmlu", "--data-dir", str(FIXTURES), "--out", str(out))
    record = json.loads(out.read_text())
    assert record["n_samples"] == {"cl_mmlu": 6} and "acc,none" in record["tasks"]["cl_mmlu"]
    assert record["model"]["name_or_path"] == str(model_dir)


def test_scoreboard_command(tmp_path):
    scores = tmp_path / "lerp.json"
    scores.write_text(json.dumps({"CEvalC": 34.84, "CMMLUC": 37.37, "BBH": 64.43, "MMLU-Pro": 35.8}))
    stdout = _launch("scoreboard", "--card", "control_llm", "--scores", str(scores))
    assert '"Overall": 41.4' in stdout  # JSON keeps full precision
    assert "| lerp | - | 34.8 | - | 37.4 | 64.4 | - | 35.8 | 37.1 | 45.9 | 41.5 |" in stdout


def test_plot_command(tmp_path):
    for step, value in ((100, 40.0), (200, 42.5)):
        board = {"control_llm": {"aggregates": {"C-Avg": value, "O-Avg": 45.0, "Overall": None}}}
        path = tmp_path / f"checkpoint-{step}" / "eval.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"step": step, "aggregates": board}))
    png = Path(_launch("plot", "--run", str(tmp_path)).strip())
    assert png == tmp_path / "eval_aggregates.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys):
    scores = tmp_path / "s.json"
    scores.write_text(json.dumps({"CEvalC": 34.84}))
    assert main(["scoreboard", "--card", "control_lm", "--scores", str(scores)]) == 2
    assert capsys.readouterr().err.startswith("continualm: error: unknown card 'control_lm'")
    assert main(["scoreboard", "--card", "control_llm", "--scores", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err


def test_damaged_rows_or_weights_are_one_error_line_naming_the_file(
    tiny_model, tiny_tokenizer, tmp_path, capsys
):
    model_dir, data = tmp_path / "model", tmp_path / "data"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    (data / "mmlu").mkdir(parents=True)
    (data / "mmlu" / "dev.jsonl").write_text((FIXTURES / "mmlu" / "dev.jsonl").read_text())
    rows = [json.loads(line) for line in (FIXTURES / "mmlu" / "test.jsonl").read_text().splitlines()]
    rows[3]["answer"] = 9  # of 4 choices: lm-eval would score it as wrong without a word
    test_file = data / "mmlu" / "test.jsonl"
    test_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--model", str(model_dir), "--suite", "cl_mmlu", "--data-dir", str(data)]
    argv += ["--out", str(tmp_path / "r.json")]
    capsys.readouterr()  # not save_pretrained's progress bar
    assert main(argv) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after lm-eval's own warnings
    assert last == f"continualm: error: {test_file} row 3: field 'answer' is 9, expected one of [0, 1, 2, 3]"

    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # as an interrupted copy leaves it
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"continualm: error: cannot load the model weights in {model_dir}: ")
    assert "Traceback" not in err and not (tmp_path / "r.json").exists()
    answers = [
        "answers",
        "--model",
        str(model_dir),
        "--questions",
        str(FIXTURES / "judge" / "alpaca_eval.json"),
    ]
    assert main([*answers, "--out", str(tmp_path / "a.json")]) == 2  # the answers command alike
    assert capsys.readouterr().err.startswith(
        f"continualm: error: cannot load the model weights in {model_dir}"
    )


def test_out_and_counts_are_checked_before_the_model_loads(tmp_path, capsys):
    argv = ["--model", str(tmp_path / "no_model"), "--suite", "cl_mmlu", "--data-dir", str(FIXTURES)]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err
    (tmp_path / "r.json").write_text("{}")  # an earlier result
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and (tmp_path / "r.json").read_text() == "{}"
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "s.json"), "--limit", "0"])
    assert "--limit: must be a positive integer, got 0" in capsys.readouterr().err
