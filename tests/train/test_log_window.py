"""Metrics records with `train.log_every: N` cover all N steps, not just the last one."""

import pytest

from train.loop import LogWindow


def _step(loss, targets, divergence, alpha, lr):
    return {
        "loss": loss,
        "target_tokens": targets,
        "tokens": 100,
        "divergence": divergence,
        "loss_total": loss + divergence,
        "alpha/pair_0": alpha,
        "lr": lr,
        "grad_norm": lr * 1000,
    }


def test_a_record_summarises_its_steps():
    window = LogWindow()
    window.add(_step(2.0, 10, 0.1, 0.2, 1e-3), seconds=1.0)
    window.add(_step(4.0, 30, 0.3, 0.4, 2e-3), seconds=3.0)
    record = window.flush()
    assert record["loss"] == pytest.approx((2.0 * 10 + 4.0 * 30) / 40)  # token-weighted, not (2 + 4) / 2
    assert record["divergence"] == pytest.approx(0.2) and record["alpha/pair_0"] == pytest.approx(0.3)
    assert record["loss_total"] == pytest.approx(3.5 + 0.2)
    assert (record["steps"], record["target_tokens"], record["tokens"]) == (2, 40, 200)
    assert record["tokens_per_s"] == pytest.approx(200 / 4.0) and record["step_seconds"] == pytest.approx(2.0)
    assert (record["lr"], record["grad_norm"]) == (2e-3, 2.0)  # the last step's


def test_a_one_step_record_is_that_step_exactly():
    window = LogWindow()
    window.add(_step(9.0, 7, 0.5, 0.5, 1e-3), seconds=2.0)
    window.flush()  # the next window starts empty
    step = _step(0.1 + 0.2, 3, 0.7, 0.9, 5e-4)
    window.add(step, seconds=0.5)
    record = window.flush()
    assert {k: record[k] for k in step} == step
    assert (record["steps"], record["tokens_per_s"]) == (1, 200.0)
