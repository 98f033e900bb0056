"""SynE's two-stage mixture on fixture data: token ratios within 1%, deterministic by seed, and a
resume mid-mixture continues with exactly the next rows without replaying. Weights are token shares,
not row shares: SFT rows with few real tokens are drawn more often."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
from transformers import AutoTokenizer

from data_prep.mixture import MixtureSampler, make_sampler
from data_prep.shards import prepare

SYNE = Path(__file__).resolve().parents[1] / "fixtures" / "datasets" / "syne" / "data"
FOLDERS = ("web-cn", "book-cn", "web-en", "book-en", "synthesis-en")
ZH = {"web-cn": 0.7 / 0.9, "book-cn": 0.2 / 0.9}  # SynE's inner shares (qa/encyclopedia not in the fixture)
EN = {"web-en": 0.4 / 0.55, "book-en": 0.15 / 0.55}
SEQ = 16


def label(folder: str) -> str:
    return "syne_" + folder.replace("-", "_")


@pytest.fixture(scope="module")
def syne(tmp_path_factory):
    from train.model import TINY_TOKENIZER

    sources = [NS(name=label(f), path=str(SYNE / f)) for f in FOLDERS]
    stage1 = {**{label(k): 2 * v for k, v in ZH.items()}, **{label(k): 8 * v for k, v in EN.items()}}
    stage2 = {**{label(k): 1 * v for k, v in ZH.items()}, **{label(k): 7 * v for k, v in EN.items()}}
    stage2[label("synthesis-en")] = 2
    cfg = NS(
        sources=sources,
        seq_len=SEQ,
        cache_dir=tmp_path_factory.mktemp("cache"),
        shuffle=True,
        stages=[NS(tokens=925 * 100 * SEQ, weights=stage1), NS(tokens=75 * 100 * SEQ, weights=stage2)],
    )
    data = prepare(cfg, AutoTokenizer.from_pretrained(TINY_TOKENIZER))
    return data, cfg


def shares(data, rows: np.ndarray) -> dict[str, float]:
    which = np.searchsorted(data.offsets, rows, side="right") - 1
    tokens = np.bincount(which, minlength=len(data.source_labels)) * SEQ  # CPT rows are full
    return dict(zip(data.source_labels, tokens / tokens.sum(), strict=True))


def test_two_stage_token_ratios(syne):
    data, cfg = syne
    sampler = make_sampler(data, cfg, seed=0)
    assert all(len(s) < 30 for s in data.shards)  # tiny sources: the budget upsamples them many times
    s1 = shares(data, sampler.rows(0, 92_500))
    s2 = shares(data, sampler.rows(92_500, 7_500))
    zh1 = s1[label("web-cn")] + s1[label("book-cn")]
    assert zh1 == pytest.approx(0.2, rel=0.01) and s1[label("synthesis-en")] == 0
    zh2 = s2[label("web-cn")] + s2[label("book-cn")]
    assert zh2 == pytest.approx(0.1, rel=0.01)
    assert s2[label("synthesis-en")] == pytest.approx(0.2, rel=0.01)
    assert s1[label("web-cn")] / zh1 == pytest.approx(0.7 / 0.9, rel=0.01)
    assert sampler.consumed_per_source(92_500)[data.source_labels.index(label("synthesis-en"))] == 0


def test_resume_mid_mixture_continues_with_the_next_rows(syne):
    data, cfg = syne
    full = make_sampler(data, cfg, seed=3).rows(92_400, 200)  # crosses the stage boundary
    resumed = make_sampler(data, cfg, seed=3)
    assert np.array_equal(resumed.rows(92_450, 150), full[50:])
    assert not np.array_equal(make_sampler(data, cfg, seed=4).rows(92_400, 200), full)
    b = data.batch(full[50:52])
    assert b["input_ids"].shape == (2, SEQ) and b["labels"].shape == (2, SEQ)
    # far into the open last stage: a sampler that replayed to get there would never return
    assert np.array_equal(resumed.rows(10**12, 4), make_sampler(data, cfg, seed=3).rows(10**12 - 2, 6)[2:])


def test_curriculum_order_and_upsampling():
    s = MixtureSampler([3, 2], [(None, [1.0, 1.0])], seed=0, shuffle=False, block=4)
    # even spread over blocks of 4; source 1 (rows 3, 4) wraps around: upsampled
    assert s.rows(0, 8).tolist() == [0, 3, 1, 4, 2, 3, 0, 4]
    assert s.consumed_per_source(8) == [4, 4]


def test_a_third_stage_continues_after_both_earlier_ones():
    # stage 1 takes 50 rows of each source, stage 2 another 100 of source 0 only: stage 3 starts past both
    s = MixtureSampler(
        [1000, 1000], [(100, [1, 1]), (100, [1, 0]), (None, [1, 1])], 0, shuffle=False, block=10
    )
    assert s.consumed_per_source(100) == [50, 50]
    assert s.consumed_per_source(200) == [150, 50]
    assert s.rows(200, 6).tolist() == [150, 1050, 151, 1051, 152, 1052]


def _chats(path: Path, answer_words: int, n: int) -> str:
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": a}]}
        for i, a in enumerate(" ".join(["answer"] * answer_words) + f" {i}" for i in range(n))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_weights_are_token_shares_not_row_shares(tmp_path):
    from data_prep.tiny_tokenizer import OUT_DIR

    sources = [  # one conversation per row (pad): long rows hold ~3x the real tokens of short ones
        NS(path=_chats(tmp_path / "long.jsonl", 25, 12), adapter="messages", label="long", weight=1),
        NS(path=_chats(tmp_path / "short.jsonl", 3, 12), adapter="messages", label="short", weight=3),
    ]
    cfg = NS(sources=sources, seq_len=128, cache_dir=tmp_path / "cache", sft_packing="pad", shuffle=True)
    data = prepare(cfg, AutoTokenizer.from_pretrained(OUT_DIR))
    pos = np.concatenate([np.asarray(s.position_ids) for s in data.shards])
    restarts = pos[:, 1:] == 0  # the padding segment restarts the positions
    real = np.where(restarts.any(1), restarts.argmax(1) + 1, pos.shape[1])  # real tokens of each row
    tpr = [s.tokens_per_row for s in data.shards]
    assert tpr[0] > 2.5 * tpr[1]

    rows = make_sampler(data, cfg, seed=0).rows(0, 20_000)
    which = data.source_of(rows)
    tokens = np.bincount(which, weights=real[rows], minlength=2)
    assert tokens[0] / tokens.sum() == pytest.approx(0.25, abs=0.01)  # the weights: long 1, short 3
    row_share = float(np.mean(which == 0))
    assert row_share == pytest.approx((1 / tpr[0]) / (1 / tpr[0] + 3 / tpr[1]), abs=0.01)
    assert row_share < 0.15  # by rows, long would have a quarter of the rows and half the tokens

    # a stage's budget is in tokens too: it ends after the rows that hold that many real tokens
    cfg.stages = [NS(tokens=30_000, weights={"long": 1, "short": 3}), NS(tokens=None, weights={"long": 1})]
    cfg.sources = [NS(**{**vars(s), "weight": None}) for s in sources]
    rows = make_sampler(data, cfg, seed=0).rows(0, 2_000)
    stage_end = int(np.flatnonzero(data.source_of(rows) == 1)[-1]) + 1  # the last short row is in stage 1
    assert real[rows[:stage_end]].sum() == pytest.approx(30_000, rel=0.01)
