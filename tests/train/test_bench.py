"""`launch/bench.py train` on the tiny shape, in this process (one gloo rank): our row and the HF Trainer
peers' rows, with fields that follow from the batches (no timing assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import bench_main
from train.config import ModelConfig

SEQ, MICRO, STEPS = 64, 2, 2


def test_ours_and_the_peers_on_sft_data(monkeypatch, tmp_path, capsys):
    import train.peer
    from train import benchmark
    from train.model import build_for_training, flops_per_token

    real, batches = train.peer.run_peer, {}

    def recording(peer, *args, **kwargs):  # the peers' micro-batches (tokens, row length, non-pad tokens)
        times, shapes = real(peer, *args, **kwargs)
        batches[peer] = shapes
        return times, shapes

    monkeypatch.setattr(train.peer, "run_peer", recording)
    out = tmp_path / "bench.json"
    args = ["--shape", "llama3_tiny", "--seq", str(SEQ), "--micro-batch", str(MICRO), "--data", "sft"]
    args += ["--steps", str(STEPS), "--warmup", "0", "--peer", "hf", "hf_flat", "--peak-tflops", "1"]
    assert bench_main(monkeypatch, "train", *args, "--json", str(out)) == 0
    rows = json.loads(out.read_text())
    assert [r["impl"] for r in rows] == ["continualm", "hf", "hf_flat"]
    table = capsys.readouterr().out
    assert all(
        f"| {impl} | llama3_tiny | none | sft | {SEQ} |" in table for impl in ("continualm", "hf", "hf_flat")
    )

    ours, padded, flat = rows
    # Ours: packed rows of SEQ tokens, MICRO per step; the packer fills rows with real tokens first.
    assert ours["tokens"] == STEPS * MICRO * SEQ
    assert ours["tokens_per_s"] * ours["step_s"] * STEPS == pytest.approx(ours["tokens"])
    assert ours["flops_per_step"] == pytest.approx(MICRO * SEQ * ours["flops_per_token"])
    assert ours["mfu"] == pytest.approx(ours["flops_per_step"] / ours["step_s"] / 1e12)
    for row in rows:
        assert row["steps"] == STEPS and row["dtype"] == "fp32" and row["peak_mem_gb"] > 0
        assert 0 < row["real_tokens"] <= row["tokens"]
        assert row["real_tokens_per_s"] * row["step_s"] * STEPS == pytest.approx(row["real_tokens"])
    # The padded peer takes MICRO samples per step; flattening leaves no padding at all.
    assert padded["micro_batch"] == MICRO and padded["tokens"] <= STEPS * MICRO * SEQ
    assert flat["real_tokens"] == flat["tokens"]
    # a flattened micro-batch is one long row; its FLOPs count attention at our row length, as ours
    assert flat["flops_per_step"] == pytest.approx(flat["tokens"] / STEPS * ours["flops_per_token"])
    # padding is computed: the padded peer's FLOPs count every token of its rows at the row's length
    cfg = benchmark.run_config(benchmark.parse_args(["--seq", str(SEQ)]), "none", str(tmp_path))
    model = build_for_training(cfg, meta=True)
    timed = batches["hf"][:STEPS]  # one micro-batch per step; the data loader may collate one ahead
    assert sum(real for _, _, real in timed) < sum(n for n, _, _ in timed)
    step_flops = sum(n * flops_per_token(model, t) for n, t, _ in timed) / STEPS
    assert padded["flops_per_step"] == pytest.approx(step_flops)
    for peer in (padded, flat):
        assert peer["vs_ours"] == pytest.approx(ours["real_tokens_per_s"] / peer["real_tokens_per_s"])


def test_unknown_mode_and_variant_fail_clearly(monkeypatch, capsys):
    assert bench_main(monkeypatch, "trian") == 2
    assert "usage: launch/bench.py {data,train,eval}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(monkeypatch, "train", "--seq", "64", "--expansion", "concat")
    assert "--expansion 'concat'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--peer", "hf", "--offload-optimizer"], "--offload-optimizer is not passed to the peer"),
        (["--peer", "hf", "--expansion", "none", "concat2"], "--peer has no Control-LLM divergence loss"),
        (["--peer", "hf_flat", "--data", "cpt"], "joining CPT documents"),
        (
            ["--peer", "hf", "--liger", "--expansion", "none", "lora"],
            "a Liger peer patches every later model",
        ),
    ],
)
def test_comparisons_the_peer_cannot_run_alike_are_refused(monkeypatch, capsys, args, message):
    with pytest.raises(SystemExit):
        bench_main(monkeypatch, "train", "--seq", "64", *args)
    assert message in capsys.readouterr().err


def test_synthetic_cpt_rows_are_packed_documents():
    from train.model import preset_config
    from train.synthetic import make_rows

    config = preset_config(ModelConfig(preset="llama3_tiny", dtype="fp32"))
    rows = make_rows("cpt", 6, 256, config, seed=0)
    assert rows.input_ids.shape == rows.position_ids.shape == (6, 256)
    starts = rows.position_ids == 0
    inner = starts[:, 1:]  # a document starting inside a row: BOS after the previous document's EOS
    assert inner.any() and (rows.input_ids[:, 1:][inner] == config.bos_token_id).all()
    assert (rows.input_ids[:, :-1][inner] == config.eos_token_id).all()
    assert ((rows.labels == -100) == starts).all()
    assert np.array_equal(make_rows("cpt", 6, 256, config, seed=0).input_ids, rows.input_ids)


def test_a_failing_peer_keeps_our_row_and_the_other_peers(monkeypatch, tmp_path, capsys):
    import train.peer

    real = train.peer.run_peer

    def out_of_memory_for_hf(peer, *args, **kwargs):
        if peer == "hf":
            raise RuntimeError("CUDA out of memory")
        return real(peer, *args, **kwargs)

    monkeypatch.setattr(train.peer, "run_peer", out_of_memory_for_hf)
    out = tmp_path / "bench.json"
    args = ["--seq", str(SEQ), "--micro-batch", str(MICRO), "--data", "sft", "--steps", "1", "--warmup", "0"]
    assert bench_main(monkeypatch, "train", *args, "--peer", "hf", "hf_flat", "--json", str(out)) == 0
    ours, failed, flat = json.loads(out.read_text())
    assert (ours["impl"], ours["steps"], flat["impl"], flat["steps"]) == ("continualm", 1, "hf_flat", 1)
    assert failed == {**{k: ours[k] for k in ("shape", "variant", "data", "seq", "zero", "dtype")}, **failed}
    assert failed["error"] == "RuntimeError: CUDA out of memory" and "steps" not in failed
    assert "hf (none) failed: RuntimeError: CUDA out of memory" in capsys.readouterr().out


def test_the_peer_frees_its_engine(tmp_path):
    import gc
    import weakref

    from train import benchmark
    from train import distributed as dist
    from train.peer import run_peer
    from train.synthetic import make_rows

    dist.init()
    args = benchmark.parse_args(
        ["--seq", str(SEQ), "--micro-batch", str(MICRO), "--steps", "1", "--warmup", "0"]
    )
    cfg = benchmark.run_config(args, "none", str(tmp_path))
    model = benchmark._build(cfg)
    rows = make_rows("full", MICRO, SEQ, model.config, seed=0)
    run_peer("hf", model, cfg, False, rows, "full", MICRO, 1, tmp_path / "hf")
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None  # DeepSpeed's hooks held model and optimizer state past the Trainer


def test_mfu_is_per_device(monkeypatch):
    from train import benchmark

    monkeypatch.setattr(benchmark.dist, "world_size", lambda: 2)
    flops = {128: 3e9}.get  # FLOPs per token at the one row length
    row = benchmark.summarise([1.0, 3.0], [[(512, 128, 400)], [(1024, 128, 900)]], flops, peak=2.0)
    assert row["tokens_per_s"] == 1536 / 4.0
    assert row["mfu"] == pytest.approx(row["tokens_per_s"] * 3e9 / (2.0 * 1e12 * 2))
