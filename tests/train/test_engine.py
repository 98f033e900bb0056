"""Learning-rate schedules and the generated DeepSpeed JSON."""

from __future__ import annotations

import logging
import math

import pytest

from tests.conftest import SMOKE
from train.config import load_config
from train.engine import deepspeed_config, lr_lambda, param_groups
from train.errors import UserError


def _cfg(*overrides):
    return load_config(SMOKE, ["optim.lr=1.0", "schedule.min_lr=0.1", "train.max_steps=110", *overrides])


def test_cosine_warmup_then_decay_to_min_lr():
    f = lr_lambda(_cfg("schedule.warmup_steps=10"), 110)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_linearly():
    f = lr_lambda(_cfg("schedule.name=wsd", "schedule.warmup_steps=10", "schedule.decay_steps=20"), 110)
    assert f(50) == 1.0 and f(89) == 1.0
    assert f(100) == pytest.approx(1 - 0.9 * 0.5)
    assert f(110) == pytest.approx(0.1)


def test_wsd_whose_decay_would_start_inside_the_warmup_is_refused():
    with pytest.raises(
        UserError, match=r"warmup_steps \(50\) \+ schedule.decay_steps \(80\) exceed the run's 100"
    ):
        lr_lambda(_cfg("schedule.name=wsd", "schedule.warmup_steps=50", "schedule.decay_steps=80"), 100)


def test_a_warmup_longer_than_the_run_is_reported(caplog):
    # e.g. 1000 warmup steps when the token budget over 64 GPUs gives 795 steps: lr would never reach its peak
    with caplog.at_level(logging.WARNING, logger="train.engine"):
        f = lr_lambda(_cfg("schedule.warmup_steps=1000"), 795)
        assert f(794) == pytest.approx(0.795)
        lr_lambda(_cfg("schedule.warmup_steps=1000"), 1000)  # the last step reaches it
    assert [r.getMessage()[:71] for r in caplog.records] == [
        "schedule.warmup_steps (1000) exceeds the run's 795 steps: the lr never "
    ]


def test_constant_after_warmup(caplog):
    with caplog.at_level(logging.WARNING, logger="train.engine"):
        f = lr_lambda(_cfg("schedule.name=constant", "schedule.warmup_steps=2"), 110)
    assert [f(0), f(1), f(2), f(100)] == [0.5, 1.0, 1.0, 1.0]
    # the min_lr of _cfg, as one inherited from a cosine recipe: said to be unused
    assert [r.getMessage() for r in caplog.records] == [
        "schedule.min_lr (0.1) is unused: a constant schedule does not decay"
    ]


def test_deepspeed_json_from_config():
    cfg = load_config(
        SMOKE,
        [
            "deepspeed.zero_stage=3",
            "deepspeed.offload_optimizer=true",
            "deepspeed.offload_params=true",
            "optim.name=cpu_adam",
            "model.dtype=bf16",
        ],
    )
    ds = deepspeed_config(cfg, world_size=8)
    assert ds["train_batch_size"] == 2 * 2 * 8
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["bf16"] == {"enabled": True} and ds["gradient_clipping"] == 1.0
    assert "auto" not in str(ds)


def test_no_weight_decay_on_norms_and_biases():
    from train.model import build_for_training

    model = build_for_training(_cfg())
    decay, no_decay = param_groups(model, 0.1)
    assert (decay["weight_decay"], decay["_decays"]) == (0.1, True)
    assert (no_decay["weight_decay"], no_decay["_decays"]) == (0.0, False)
    assert decay["params"] and all(p.ndim == 2 for p in decay["params"])
    assert no_decay["params"] and all(p.ndim == 1 for p in no_decay["params"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
