"""One optimizer step through the real DeepSpeed engine (one in-process rank, gloo):
the loss normalisation makes the micro-batch / accumulation split irrelevant, and the
Control-LLM weight-decay rule reaches the optimizer; a train.epochs run trains each row of its
budget once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_prep.mixture import make_sampler
from data_prep.sampler import RowSampler
from data_prep.shards import prepare
from tests.conftest import SMOKE
from train import distributed as dist
from train.config import load_config
from train.engine import build_engine
from train.loop import as_one_row, seed_everything, train, train_step
from train.model import build_for_training, build_tokenizer
from train.tracking import read_metrics


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    dist.init()


def _one_step(data_cache, *overrides, recipe=SMOKE):
    cfg = load_config(recipe, ["tracking=none", f"data.cache_dir={data_cache}", *overrides])
    seed_everything(cfg.seed)
    data = prepare(cfg.data, build_tokenizer(cfg.model))
    engine = build_engine(cfg, build_for_training(cfg), 1, cfg.total_steps())
    engine.train()
    rows = RowSampler(len(data), cfg.seed).rows(0, cfg.rows_per_step)
    metrics = train_step(engine, data, rows, cfg)
    if cfg.deepspeed.zero_stage == 3:  # parameters are partitioned: gather a full copy
        params = {k: v.clone() for k, v in engine._zero3_consolidated_16bit_state_dict().items()}
    else:
        params = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    return metrics, params, engine


@pytest.mark.parametrize("recipe", [SMOKE, SMOKE.with_name("sft_tiny.yaml")], ids=["cpt", "sft"])
def test_step_loss_is_the_next_token_cross_entropy_over_the_targets(data_cache, recipe):
    cfg = load_config(recipe, ["tracking=none", f"data.cache_dir={data_cache}"])
    seed_everything(cfg.seed)
    reference = build_for_training(cfg).eval()  # the same initial weights as the engine's
    metrics, _, _ = _one_step(data_cache, recipe=recipe)
    data = prepare(cfg.data, build_tokenizer(cfg.model))
    batch = data.batch(RowSampler(len(data), cfg.seed).rows(0, cfg.rows_per_step))
    with torch.no_grad():
        logits = reference(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1; -100 at prompts and document starts
    assert 0 < int((targets != -100).sum()) == metrics["target_tokens"]
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="sum")
    assert metrics["loss"] == pytest.approx(expected.item() / metrics["target_tokens"], rel=1e-5)


def _summed_loss(model, batch) -> tuple[float, int]:
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    targets = batch["labels"][:, 1:]
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="sum")
    return ce.item(), int((targets != -100).sum())


@pytest.mark.parametrize("recipe", [SMOKE, SMOKE.with_name("sft_tiny.yaml")], ids=["cpt", "sft"])
def test_rows_laid_end_to_end_train_like_the_rows(data_cache, recipe):
    # flash attention trains on one row per micro-batch; sdpa reads the same boundaries from the positions
    cfg = load_config(recipe, ["tracking=none", f"data.cache_dir={data_cache}"])
    seed_everything(cfg.seed)
    model = build_for_training(cfg).eval()
    data = prepare(cfg.data, build_tokenizer(cfg.model))
    batch = data.batch(RowSampler(len(data), cfg.seed).rows(0, 4))
    assert batch["input_ids"].shape[0] == 4
    batch["labels"][:, 0] = batch["input_ids"][:, 0]  # a row's first label is never a target in its row
    rows_loss, rows_targets = _summed_loss(model, batch)
    one_loss, one_targets = _summed_loss(model, as_one_row(batch))
    assert one_targets == rows_targets > 0  # no row's first token became the target of the row before
    assert one_loss == pytest.approx(rows_loss, rel=1e-5)


@pytest.mark.parametrize("stage", [1, 3])
def test_same_update_for_any_accumulation_split(data_cache, stage):
    # Adam's first step is ~lr * sign(g) where |g| ~ eps; a larger eps keeps the update a smooth
    # function of the gradient, so equal parameters really mean equal gradients.
    base = [f"deepspeed.zero_stage={stage}", "schedule.warmup_steps=0", "optim.eps=1e-4"]
    m_a, p_a, _ = _one_step(data_cache, *base, "train.micro_batch_size=4", "train.grad_accum_steps=1")
    m_b, p_b, _ = _one_step(data_cache, *base, "train.micro_batch_size=1", "train.grad_accum_steps=4")
    assert m_a["target_tokens"] == m_b["target_tokens"]
    assert m_a["loss"] == pytest.approx(m_b["loss"], rel=1e-6)
    assert m_a["grad_norm"] == pytest.approx(m_b["grad_norm"], rel=1e-5)
    for name in p_a:
        torch.testing.assert_close(p_a[name], p_b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_weight_decay_follows_lr_ratio_rule(data_cache):
    # the first step of a 4-step warmup runs at lr 0.01 / 4: the rule uses the current lr, not the peak
    common = ["schedule.name=constant", "schedule.warmup_steps=4", "schedule.min_lr=0", "optim.lr=0.01"]
    _, p_rule, engine = _one_step(
        data_cache, *common, "optim.weight_decay=0.5", "optim.weight_decay_mode=lr_ratio"
    )
    _, p_fixed, _ = _one_step(data_cache, *common, "optim.weight_decay=0.00125")  # 0.5 x 0.0025
    _, p_none, _ = _one_step(data_cache, *common, "optim.weight_decay=0")
    decayed = [g for g in engine.optimizer.param_groups if g["weight_decay"] > 0]
    assert decayed and all(g["weight_decay"] == pytest.approx(0.00125) for g in decayed)
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(p_rule[name], p_fixed[name], rtol=0, atol=0)
    assert not torch.equal(p_rule[name], p_none[name])


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_changes_nothing_but_memory(data_cache, mode):
    plain, p_plain, _ = _one_step(data_cache, "deepspeed.zero_stage=2")
    ckpt, p_ckpt, engine = _one_step(
        data_cache, "deepspeed.zero_stage=2", f"model.activation_checkpointing={mode}"
    )
    assert engine.module.is_activation_checkpointing and engine.module.training
    assert ckpt["loss"] == plain["loss"]
    for name in p_plain:
        torch.testing.assert_close(p_ckpt[name], p_plain[name], rtol=0, atol=0, msg=name)


def test_bf16_compute_with_fp32_master_weights(data_cache):
    fp32, _, _ = _one_step(data_cache, "deepspeed.zero_stage=2")
    bf16, _, engine = _one_step(data_cache, "deepspeed.zero_stage=2", "model.dtype=bf16")
    assert next(engine.module.parameters()).dtype == torch.bfloat16
    master = engine.optimizer.single_partition_of_fp32_groups[0]
    assert master.dtype == torch.float32
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=2e-2)  # same data, bf16 rounding only


def _record_gradients(engine) -> list[torch.Tensor]:
    """The gradients DeepSpeed hands to the optimizer (after its accumulation and scaling), step by step."""
    adamw, handed = engine.optimizer.optimizer, []
    step = adamw.step
    adamw.step = lambda *a, **k: (handed.extend(p.grad.clone() for g in adamw.param_groups for p in g["params"]),
                                  step(*a, **k))[1]  # fmt: skip
    return handed


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_micro_batch_gradients_are_summed_in_fp32(data_cache, stage):
    accum = ["train.micro_batch_size=1", "train.grad_accum_steps=4", "optim.grad_clip=null"]
    cfg = load_config(SMOKE, ["tracking=none", f"data.cache_dir={data_cache}", "model.dtype=bf16", *accum])
    seed_everything(cfg.seed)
    data = prepare(cfg.data, build_tokenizer(cfg.model))
    seed_everything(cfg.seed)
    reference = build_for_training(cfg)
    seed_everything(cfg.seed)  # the engine's model: the same initial weights
    engine = build_engine(cfg, build_for_training(cfg), 1, cfg.total_steps())
    engine.train()
    handed = _record_gradients(engine)
    rows = RowSampler(len(data), cfg.seed).rows(0, 4)
    train_step(engine, data, rows, cfg, None)
    # the reference: each micro-batch's bf16 gradient (of its share of the token-mean loss), summed in fp32
    micro = [data.batch(rows[i : i + 1]) for i in range(4)]
    targets = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    sums = {n: torch.zeros(p.shape) for n, p in reference.named_parameters()}
    for b in micro:
        reference.zero_grad()
        logits = reference(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits
        loss = F.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), b["labels"][:, 1:].flatten(), reduction="sum"
        )
        (loss / targets).backward()
        for n, p in reference.named_parameters():
            sums[n] += p.grad.float()
    names = [n for n, p in reference.named_parameters() if p.ndim >= 2]  # the optimizer's groups, in order
    names += [n for n, p in reference.named_parameters() if p.ndim < 2]
    assert {g.dtype for g in handed} == {torch.float32}
    engine_sum = torch.cat([g.flatten() for g in handed])
    torch.testing.assert_close(engine_sum, torch.cat([sums[n].flatten() for n in names]), rtol=0, atol=0)


def _masked_step(data_cache, recipe, rows, live):
    cfg = load_config(recipe, ["tracking=none", f"data.cache_dir={data_cache}", "train.max_steps=1"])
    seed_everything(cfg.seed)
    data = prepare(cfg.data, build_tokenizer(cfg.model))
    engine = build_engine(cfg, build_for_training(cfg), 1, 1)
    engine.train()
    metrics = train_step(engine, data, rows, cfg, live)
    return metrics, {n: p.detach().clone() for n, p in engine.module.named_parameters()}


@pytest.mark.parametrize(
    "recipe", [SMOKE.with_name("sft_tiny.yaml"), SMOKE.with_name("synE_concat16_tiny.yaml")]
)
def test_rows_past_the_epoch_end_train_nothing(data_cache, recipe):
    """The last step of train.epochs fills its batch from the next pass; those rows must not train (nor
    dilute the Control-LLM divergence and alpha means)."""
    # micro-batch 2, accumulation 2 in both recipes: rows 0-1 are the first micro-batch, 2-3 the second
    first, other = np.array([0, 1, 2, 3]), np.array([0, 1, 1, 0])
    masked, params = _masked_step(data_cache, recipe, first, live=2)
    masked_other, params_other = _masked_step(data_cache, recipe, other, live=2)
    whole, params_whole = _masked_step(data_cache, recipe, first, live=4)
    partial, _ = _masked_step(data_cache, recipe, first, live=3)  # the 2nd micro-batch holds one live row
    assert masked == masked_other
    assert masked["target_tokens"] < partial["target_tokens"] < whole["target_tokens"]
    for name, p in params.items():
        assert torch.equal(p, params_other[name]), name
    assert any(not torch.equal(p, params_whole[name]) for name, p in params.items())
    alphas = [k for k in whole if k.startswith("alpha/")]
    assert ("divergence" in whole) == bool(alphas) == ("concat" in recipe.name)
    for k in alphas:  # lerp's alpha is one number through a step: a mean over live micro-batches keeps it
        assert masked[k] == pytest.approx(whole[k], rel=1e-6)
        assert partial[k] == pytest.approx(whole[k], rel=1e-6)


def test_the_divergence_of_a_partial_last_step_is_the_mean_over_its_live_micro_batches(data_cache):
    # rows 0-1 of a step whose 2nd micro-batch is past the epoch end train as the step of those rows alone
    def handed(*overrides, rows, live=None):
        cfg = load_config(
            SMOKE.with_name("synE_concat16_tiny.yaml"),
            ["tracking=none", f"data.cache_dir={data_cache}", "optim.grad_clip=null", *overrides],
        )
        seed_everything(cfg.seed)
        data = prepare(cfg.data, build_tokenizer(cfg.model))
        model = build_for_training(cfg)
        # copies equal to their pretrained layer sit at the divergence's minimum, where it has no gradient
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "expanded_layer" in name:
                    p.add_(0.05 * torch.randn(p.shape, generator=generator).to(p.dtype))
        engine = build_engine(cfg, model, 1, 1)
        engine.train()
        grads = _record_gradients(engine)
        metrics = train_step(engine, data, np.array(rows), cfg, live)
        return metrics, torch.cat([g.flatten() for g in grads])

    masked, g_masked = handed(rows=[0, 1, 2, 3], live=2)  # micro-batch 2, accumulation 2
    alone, g_alone = handed("train.grad_accum_steps=1", rows=[0, 1])
    assert masked["divergence"] == pytest.approx(alone["divergence"], rel=1e-6) and alone["divergence"] > 0
    torch.testing.assert_close(g_masked, g_alone)


def test_an_epochs_run_trains_each_row_of_its_budget_once(tmp_path, data_cache):
    """58 packed rows x 0.3 epochs: 18 rows, 5 steps of 4 rows; the last trains 2."""
    out = tmp_path / "run"
    sets = ["train.epochs=0.3", "train.max_steps=null", f"output_dir={out}", f"data.cache_dir={data_cache}"]
    cfg = load_config(SMOKE.with_name("sft_zh_tiny.yaml"), [*sets, "checkpoint.export_at_end=false"])
    train(cfg)
    data = prepare(cfg.data, build_tokenizer(cfg.model))
    assert (len(data), cfg.epoch_rows(len(data)), cfg.total_steps(len(data))) == (58, 18, 5)
    metrics = read_metrics(out / "metrics.jsonl")
    state = json.loads((out / "checkpoints" / "step-00000005" / "trainer_state.json").read_text())
    assert sorted(metrics) == [1, 2, 3, 4, 5] and state["consumed_rows"] == 20
    # what trained is the sampler's first 18 rows: their sources and their targets, no more
    rows = make_sampler(data, cfg.data, cfg.seed).rows(0, 18)
    labels = data.source_labels
    assert state["source_rows"] == dict(zip(labels, np.bincount(data.source_of(rows)).tolist(), strict=True))
    targets = data.batch(rows)["labels"][:, 1:] != -100
    assert sum(m["target_tokens"] for m in metrics.values()) == int(targets.sum())
    assert sum(state["source_target_tokens"].values()) == int(targets.sum())
    assert {k: metrics[5][f"source_tokens/{k}"] for k in labels} == state["source_target_tokens"]
