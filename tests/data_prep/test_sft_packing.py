"""SFT packing: samples never split, positions restart, over-long policies counted, and packed
training gives the same summed loss as running each sample alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from data_prep.sft_packing import IGNORE, SftPacker

PAD = 0


def pack(samples, seq_len, **kw):
    packer = SftPacker(seq_len, PAD, **kw)
    rows = [r for ids, lab in samples for r in packer.add(ids, lab)] + list(packer.finish())
    return [tuple(a.tolist() for a in r) for r in rows], packer.stats


def sample(n: int, first: int, prompt: int = 2) -> tuple[list[int], list[int]]:
    ids = list(range(first, first + n))
    return ids, [IGNORE] * prompt + ids[prompt:]


def test_best_fit_fills_the_tightest_row_and_restarts_positions():
    rows, stats = pack([sample(5, 10), sample(4, 20), sample(3, 30), sample(2, 40, prompt=1)], seq_len=8)
    # 5 opens row A, 4 opens row B, 3 fits A exactly (5+3), 2 goes to B (4+2): rows written in opening order
    assert [r[0] for r in rows] == [[10, 11, 12, 13, 14, 30, 31, 32], [20, 21, 22, 23, 40, 41, PAD, PAD]]
    assert rows[1][1] == [0, 1, 2, 3, 0, 1, 0, 1]
    assert rows[1][2] == [IGNORE, IGNORE, 22, 23, IGNORE, 41, IGNORE, IGNORE]
    assert (stats.samples, stats.rows, stats.tokens, stats.pad_tokens) == (4, 2, 14, 2)


def test_too_many_open_rows_writes_the_fullest():
    rows, stats = pack(
        [sample(2, 0, prompt=1), sample(7, 10), sample(7, 20), sample(2, 30, prompt=1)],
        seq_len=8,
        open_rows=2,
    )
    # the third sample fits no open row: the 7-token row is written, so the 2-token row stays open for the last
    assert [r[0] for r in rows] == [
        [10, 11, 12, 13, 14, 15, 16, PAD],
        [0, 1, 30, 31, PAD, PAD, PAD, PAD],
        [20, 21, 22, 23, 24, 25, 26, PAD],
    ]
    assert stats.pad_tokens == 6


def test_pad_mode_one_sample_per_row():
    rows, _ = pack([sample(3, 10), sample(3, 20)], seq_len=8, mode="pad")  # both would fit in one row
    assert [r[0] for r in rows] == [[10, 11, 12] + [PAD] * 5, [20, 21, 22] + [PAD] * 5]


@pytest.mark.parametrize(
    "policy, rows_ids, counts",
    [
        ("drop", [], (1, 1, 0)),
        ("truncate", [[10, 11, 12, 13]], (1, 0, 2)),
        ("split", [[10, 11, 12, 13], [14, 15, PAD, PAD]], (1, 0, 0)),
    ],
)
def test_overlong_policies_are_counted(policy, rows_ids, counts):
    rows, stats = pack([sample(6, 10)], seq_len=4, overlong=policy)
    assert [r[0] for r in rows] == rows_ids
    assert (stats.overlong_samples, stats.dropped_samples, stats.truncated_tokens) == counts
    if policy == "split":
        assert rows[1][2][0] == IGNORE  # the continuation's first token is not predicted across rows
        assert stats.split_lost_targets == 1  # and counted


def test_sample_without_targets_is_dropped_and_counted():
    rows, stats = pack([([1, 2, 3], [IGNORE] * 3)], seq_len=4)
    assert rows == [] and stats.dropped_samples == 1


def test_packed_and_unpacked_loss_are_equal():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa",
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    samples = []
    for n in (7, 5, 9, 4, 6):
        ids = torch.randint(1, 64, (n,), generator=g).tolist()
        samples.append((ids, [IGNORE] * 3 + ids[3:]))

    def loss_sum(ids, pos, labels):  # use_cache=False, as in the loop: the packed mask needs it
        logits = model(
            input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), use_cache=False
        ).logits[0, :-1]
        return F.cross_entropy(logits, torch.tensor(labels[1:]), reduction="sum", ignore_index=IGNORE)

    rows, _ = pack(samples, seq_len=16)
    assert len(rows) < len(samples)  # really packed
    with torch.no_grad():
        packed = sum(loss_sum(*r) for r in rows)
        alone = sum(loss_sum(ids, list(range(len(ids))), lab) for ids, lab in samples)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_split_pieces_without_targets_are_dropped_and_counted():
    # prompt of 6 in rows of 4: the first piece is all prompt and is dropped, the others are kept
    rows, stats = pack([sample(10, 10, prompt=6)], seq_len=4, overlong="split")
    assert [r[0] for r in rows] == [[14, 15, 16, 17], [18, 19, PAD, PAD]]
    assert (stats.dropped_pieces, stats.dropped_piece_tokens, stats.dropped_samples) == (1, 4, 0)
    assert stats.split_lost_targets == 1  # 18 starts the last piece; 14 (a prompt token) was no target
    rows, stats = pack([([1, 2, 3, 4, 5], [IGNORE] * 5)], seq_len=4, overlong="split")  # no target at all
    assert rows == [] and (stats.dropped_pieces, stats.dropped_piece_tokens, stats.dropped_samples) == (
        2,
        5,
        1,
    )
    assert {"dropped_pieces", "dropped_piece_tokens"} <= set(stats.as_dict())  # what the manifest holds
