"""Merge-back through the launcher: which w each method folds with (lerp's theta, measured or logged alphas)."""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from conftest import perturb, tiny_llama
from transformers import AutoTokenizer, LlamaForCausalLM

from train.expansion import ControlLLMForCausalLM, ExpansionConfig, expand_model

REPO = Path(__file__).resolve().parents[3]
TOKENIZER = REPO / "data_prep/assets/llama3_tiny_tokenizer"
PAIRS = (1, 3)  # concat, num_exp_layers 2 on 4 layers


@pytest.fixture(scope="module")
def main():
    """launch/merge.py's main, called in-process."""
    from train.merge_cli import main

    return main


def export(root: Path, method: str, step: int, logged: dict[int, list[float]]) -> Path:
    """A run folder as training leaves it: export/ (from checkpoint `step`) beside metrics.jsonl."""
    model = expand_model(tiny_llama(), ExpansionConfig(type="concat", method=method, num_exp_layers=2))
    perturb(model, scale=0.3)
    out = root / "run" / "export"
    model.save_pretrained(out)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    (out / "continualm_export.json").write_text(json.dumps({"step": step}))
    records = [{"step": s, **{f"alpha/pair_{k}": a for k, a in enumerate(v)}} for s, v in logged.items()]
    (root / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def assert_folded_with(folded: Path, model_dir: Path, weights: list[float]) -> None:
    pairs = ControlLLMForCausalLM.from_pretrained(model_dir).model.layers
    merged = LlamaForCausalLM.from_pretrained(folded).model.layers
    for j, w in zip(PAIRS, weights, strict=True):
        pre, exp = pairs[j].pretrained_layer.mlp.up_proj.weight, pairs[j].expanded_layer.mlp.up_proj.weight
        torch.testing.assert_close(merged[j].mlp.up_proj.weight, (1 - w) * pre + w * exp)


def test_lerp_folds_with_its_theta_not_the_logged_alphas(main, tmp_path):
    model_dir = export(tmp_path, "lerp", step=6, logged={6: [0.9, 0.9]})
    assert main(["expansion", "--model", str(model_dir), "--out", str(tmp_path / "folded")]) == 0
    layers = ControlLLMForCausalLM.from_pretrained(model_dir).model.layers
    thetas = [torch.sigmoid(layers[j].interpolation_factor).item() for j in PAIRS]
    assert all(abs(w - 0.5) > 0.01 for w in thetas)
    assert_folded_with(tmp_path / "folded", model_dir, thetas)


@torch.no_grad()
def test_dlerp_alpha_data_folds_with_the_mean_alpha_over_its_tokens(main, tmp_path):
    model_dir = export(tmp_path, "dlerpin", step=6, logged={6: [0.05, 0.05]})
    texts = ["Merge-back weights come from evaluation data.", "短", "A third row, longer than the second."]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    argv = ["expansion", "--model", str(model_dir), "--out", str(tmp_path / "folded")]
    assert main(argv + ["--alpha-data", str(data)]) == 0

    # Expected: every token's alpha = sigmoid(gate output), averaged over all tokens of all rows.
    model = ControlLLMForCausalLM.from_pretrained(model_dir).eval()
    seen = {j: [] for j in PAIRS}
    for j in PAIRS:
        gate = model.model.layers[j].interp_weight.fc
        gate.register_forward_hook(lambda m, i, o, j=j: seen[j].append(torch.sigmoid(o).flatten()))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        lengths.append(ids.shape[1])
        model(input_ids=ids, use_cache=False)
    assert len(set(lengths)) == 3  # rows of different lengths: a per-row mean would differ
    expected = [torch.cat(seen[j]).double().mean().item() for j in PAIRS]
    assert all(abs(w - 0.05) > 0.1 for w in expected)  # not the logged value
    assert_folded_with(tmp_path / "folded", model_dir, expected)


def test_dlerp_without_alpha_data_uses_the_exports_own_logged_step(main, tmp_path, capsys):
    model_dir = export(tmp_path, "dlerp", step=3, logged={3: [0.2, 0.3], 6: [0.8, 0.9]})
    argv = ["expansion", "--model", str(model_dir), "--out", str(tmp_path / "folded")]
    assert main(argv) == 0
    assert_folded_with(tmp_path / "folded", model_dir, [0.2, 0.3])  # step 3's, not the last logged (6)

    argv.append("--overwrite")  # the same --out again: only the alphas may stop it
    (model_dir / "continualm_export.json").write_text(json.dumps({"step": 4}))
    assert main(argv) == 2
    assert "logs no alphas for step 4 (logged: [3, 6])" in capsys.readouterr().err
    (tmp_path / "run" / "metrics.jsonl").unlink()
    assert main(argv) == 2
    assert "pass --alpha-data" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("row", "message"), [('{"txt": "x"}', 'needs a "text" string'), ("not json", "is not a JSON object")]
)
def test_bad_alpha_data_is_a_clean_error(main, tmp_path, row, message, capsys):
    model_dir = export(tmp_path, "dlerp", step=3, logged={})
    (tmp_path / "eval.jsonl").write_text(row + "\n")
    argv = ["expansion", "--model", str(model_dir), "--out", str(tmp_path / "o")]
    assert main(argv + ["--alpha-data", str(tmp_path / "eval.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"merge error: {tmp_path / 'eval.jsonl'}:1: " in err and message in err


def test_plain_llama_folder_is_refused_saying_what_an_export_has(main, tmp_path, capsys):
    tiny_llama().save_pretrained(tmp_path / "llama")
    capsys.readouterr()  # not save_pretrained's progress bar
    assert main(["expansion", "--model", str(tmp_path / "llama"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"merge error: {tmp_path / 'llama'} is not a Control-LLM export")
        and "Traceback" not in err
    )
    assert "model_type 'llama', expected 'controlllm_llama' with an 'expansion' section" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("out", ["run/export", "run/export/folded", "run"], ids=["is", "inside", "holds"])
def test_out_overlapping_the_export_is_refused_before_writing(main, tmp_path, capsys, out):
    model_dir = export(tmp_path, "lerp", step=1, logged={})
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    argv = ["expansion", "--model", str(model_dir), "--out", str(tmp_path / out)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"merge error: output {tmp_path / out} and input model {model_dir} overlap" in err, err
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before  # the export is intact, nothing written into it


def test_out_holding_the_alpha_data_is_refused_even_with_overwrite(main, tmp_path, capsys):
    model_dir = export(tmp_path, "dlerp", step=3, logged={})
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "eval.jsonl").write_text('{"text": "x"}\n')
    argv = ["expansion", "--model", str(model_dir), "--out", str(tmp_path / "o"), "--overwrite"]
    assert main([*argv, "--alpha-data", str(tmp_path / "o" / "eval.jsonl")]) == 2
    assert "overlap" in capsys.readouterr().err and (tmp_path / "o" / "eval.jsonl").is_file()


def test_non_empty_out_needs_overwrite_and_is_replaced_atomically(main, tmp_path, capsys):
    model_dir = export(tmp_path, "lerp", step=1, logged={})
    out = tmp_path / "precious"
    out.mkdir()
    (out / "config.json").write_text('{"mine": 1}')
    argv = ["expansion", "--model", str(model_dir), "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    assert f"output {out} exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert (out / "config.json").read_text() == '{"mine": 1}'
    umask = os.umask(0o027)
    try:
        assert main(argv + ["--overwrite"]) == 0
    finally:
        os.umask(umask)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert (out / "tokenizer.json").is_file() and stat.S_IMODE(out.stat().st_mode) == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious", "run"]  # no temp folders left


def test_set_is_refused_for_expansion(main, tmp_path, capsys):
    argv = ["expansion", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--set", "weight=0.5"])
    assert exit_.value.code == 2 and "unrecognized arguments: --set weight=0.5" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--set", "weight=0.5", *argv])
    assert exit_.value.code == 2 and "--set does not apply to expansion" in capsys.readouterr().err
