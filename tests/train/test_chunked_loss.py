"""train.loss_chunk_tokens: the chunked lm_head + cross-entropy gives the plain head's loss and gradients,
alone and through the real step (ZeRO-1 and ZeRO-3, where the head's weight is partitioned)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import torchrun_helper
from tests.train.test_step import _one_step, world_of_one  # noqa: F401  (autouse: a gloo world of one)
from train.chunked_loss import ChunkedLossHead, chunked_head

N, D, V = 37, 16, 50  # 37 tokens in chunks of 8: the last chunk is short


def _case(dtype, weight_trains=True):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(N, D, generator=g).to(dtype).requires_grad_()
    head = torch.nn.Linear(D, V, bias=False, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, D, generator=g))
    head.weight.requires_grad_(weight_trains)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[[0, 5, 6, 36]] = -100
    return hidden, head, labels


def _reference(hidden, head, labels):
    logits = head(hidden)
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    loss.backward()
    return loss.detach(), hidden.grad, head.weight.grad


def _chunked(hidden, head, labels, chunk=8):
    chunked = ChunkedLossHead(head, chunk)
    with chunked.targets(labels[None]):
        loss = chunked(hidden[None])
    (2.0 * loss).backward()  # an upstream factor, as the step's scale (a power of two: exact in bf16)
    return loss.detach(), hidden.grad / 2, None if head.weight.grad is None else head.weight.grad / 2


@pytest.mark.parametrize("weight_trains", [True, False])
def test_loss_and_gradients_equal_the_plain_head_fp32(weight_trains):
    ref = _reference(*_case(torch.float32, weight_trains))
    out = _chunked(*_case(torch.float32, weight_trains))
    torch.testing.assert_close(out[0], ref[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-6)
    if weight_trains:
        torch.testing.assert_close(out[2], ref[2], rtol=1e-5, atol=1e-6)
    else:
        assert out[2] is None and ref[2] is None


def test_bf16_is_as_accurate_as_the_plain_bf16_head():
    hidden, head, labels = _case(torch.bfloat16)
    # the truth: the same bf16 inputs and bf16-rounded logits, everything after in fp64
    w64 = head.weight.detach().double().requires_grad_()
    logits = (hidden.detach().double() @ w64.t()).to(torch.bfloat16).double()
    F.cross_entropy(logits, labels, reduction="sum").backward()
    ref = _reference(*_case(torch.bfloat16))
    out = _chunked(*_case(torch.bfloat16))
    assert out[1].dtype == out[2].dtype == torch.bfloat16
    torch.testing.assert_close(out[0], ref[0], rtol=1e-6, atol=0)  # same bf16 logits, fp32 softmax
    torch.testing.assert_close(out[1], ref[1], rtol=0, atol=0)  # row by row: the same bf16 matmuls
    # the weight gradient's per-chunk products are rounded to bf16 before their fp32 sum: one more rounding
    error, plain_error = (out[2].double() - w64.grad).norm(), (ref[2].double() - w64.grad).norm()
    assert error <= 2 * plain_error, (error, plain_error)


def test_a_step_scale_bf16_cannot_hold_is_not_rounded_to_bf16():
    grads = []
    for factor in (1.0, 1 / 3):  # 1/3 is 0.333984375 in bf16: 0.2% off
        hidden, head, labels = _case(torch.bfloat16)
        chunked = ChunkedLossHead(head, 8)
        with chunked.targets(labels[None]):
            loss = chunked(hidden[None])
        (loss * factor).backward()
        grads.append(torch.cat([hidden.grad.flatten(), head.weight.grad.flatten()]).double())
    nonzero = grads[0] != 0
    ratio = (3 * grads[1][nonzero] / grads[0][nonzero]).mean().item()
    assert abs(ratio - 1) < 3e-4, ratio  # one bf16 rounding per element, no bias


def test_outside_targets_it_is_the_linear_layer():
    hidden, head, labels = _case(torch.float32)
    chunked = ChunkedLossHead(head, 8)
    assert chunked.weight is head.weight
    torch.testing.assert_close(chunked(hidden), head(hidden), rtol=0, atol=0)
    with pytest.raises(ValueError, match="do not match labels"), chunked.targets(labels[None, :-1]):
        chunked(hidden[None])


@pytest.mark.parametrize("stage", [1, 3])
def test_step_with_chunked_loss_equals_the_plain_step(data_cache, stage):
    base = [f"deepspeed.zero_stage={stage}", "schedule.warmup_steps=0", "optim.eps=1e-4"]
    plain, p_plain, _ = _one_step(data_cache, *base)
    chunk, p_chunk, engine = _one_step(data_cache, *base, "train.loss_chunk_tokens=100")
    assert chunked_head(engine.module) is not None
    assert chunk["target_tokens"] == plain["target_tokens"]
    assert chunk["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert chunk["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)
    for name in p_plain:
        torch.testing.assert_close(p_chunk[name], p_plain[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_two_rank_zero3_chunked_steps_equal_the_plain_ones(data_cache, tmp_path):
    # ZeRO-3 partitions the lm_head over the ranks: the head's module call gathers it for the chunked
    # forward, and its weight gradient made there is reduce-scattered like any other.
    r = torchrun_helper("tests/train/chunked_step_worker.py", str(data_cache), str(tmp_path / "out.pt"))
    assert r.returncode == 0, r.stderr[-3000:]
    runs = torch.load(tmp_path / "out.pt")
    plain, chunked = runs["plain"], runs["chunked"]
    assert chunked["losses"] == pytest.approx(plain["losses"], rel=1e-6)
    # 2 ranks x micro-batches x accumulation give the one-process gradient of the whole step's batch
    assert plain["grad_norm"] == pytest.approx(runs["reference_grad_norm"], rel=1e-5)
    assert chunked["grad_norm"] == pytest.approx(runs["reference_grad_norm"], rel=1e-5)
    for name, weight in plain["weights"].items():
        torch.testing.assert_close(chunked["weights"][name], weight, rtol=1e-5, atol=1e-6, msg=name)
    (summary,) = runs["same_data"].values()  # one source, the same on both ranks
    assert summary["rows"] > 0 and len(summary["digest"]) == 16
    # rank 0's own data is unchanged: it refuses because rank 1's differs
    assert runs["different_data"].startswith("the ranks read different prepared data")
