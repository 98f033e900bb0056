"""CPT packing: exact row layout, position restarts, loss targets, counted tail, that the model
really keeps packed documents apart (packed logits == each document run alone), the reference
(Control-LLM) layout, and that the vectorised packer matches a plain per-token implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from data_prep.packing import CptPacker, flatten, labels_for, pack_all
from data_prep.sampler import RowSampler

BOS, EOS = 100, 101


def test_rows_positions_and_tail():
    ids, pos, stats = pack_all([[1, 2, 3], [4, 5], [], [6, 7, 8, 9]], seq_len=6, bos_id=BOS, eos_id=EOS)
    # stream: B 1 2 3 E | B 4 5 E | B 6 7 8 9 E  (15 tokens) -> 2 rows of 6, 3 tail tokens
    assert ids.tolist() == [[BOS, 1, 2, 3, EOS, BOS], [4, 5, EOS, BOS, 6, 7]]
    # the second document continues into row 2 and restarts its positions there
    assert pos.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 2]]
    assert (stats.documents, stats.empty_documents, stats.tokens, stats.rows) == (4, 1, 15, 2)
    assert stats.dropped_tail_tokens == 3
    assert stats.rows * 6 + stats.dropped_tail_tokens == stats.tokens  # nothing lost uncounted


def test_labels_never_predict_a_document_start():
    ids, pos, _ = pack_all([[1, 2, 3], [4, 5, 6]], seq_len=10, bos_id=BOS, eos_id=EOS)
    labels = labels_for(ids, pos)
    assert labels.tolist() == [[-100, 1, 2, 3, EOS, -100, 4, 5, 6, EOS]]


def test_reference_boundaries_bos_only_positions_run_over_the_row():
    docs = [[1, 2, 3], [4, 5], [], [6, 7, 8, 9]]
    ids, pos, stats = pack_all(docs, seq_len=5, bos_id=BOS, eos_id=EOS, boundaries="reference")
    # stream: B 1 2 3 | B 4 5 | B 6 7 8 9  (12 tokens, no EOS) -> 2 rows of 5, 2 tail tokens
    assert ids.tolist() == [[BOS, 1, 2, 3, BOS], [4, 5, BOS, 6, 7]]
    assert pos.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]  # one causal span per row: across documents
    # every next token is a target, the next document's BOS included (a row's first label is never used)
    assert labels_for(ids, pos).tolist() == [[-100, 1, 2, 3, BOS], [-100, 5, BOS, 6, 7]]
    assert (stats.documents, stats.empty_documents, stats.tokens, stats.rows) == (4, 1, 12, 2)
    assert stats.dropped_tail_tokens == 2


def _pack_per_token(docs, seq_len, boundaries):
    """Plain reference: one token at a time; positions restart per document (documents) and per row."""
    stream, doc_pos = [], []
    for doc in docs:
        if doc:
            full = [BOS, *doc, EOS] if boundaries == "documents" else [BOS, *doc]
            stream += full
            doc_pos += range(len(full))
    ids, pos = [], []
    for start in range(0, len(stream) - seq_len + 1, seq_len):
        ids.append(stream[start : start + seq_len])
        row = [0]
        for i in range(start + 1, start + seq_len):
            restart = boundaries == "documents" and doc_pos[i] == 0
            row.append(0 if restart else row[-1] + 1)
        pos.append(row)
    return ids, pos, len(stream) % seq_len


@pytest.mark.parametrize("boundaries", ["documents", "reference"])
def test_batched_packer_equals_per_token_packing(boundaries):
    rng = np.random.default_rng(0)
    seq_len = 16
    lengths = rng.choice([0, 1, 3, 14, 15, 16, 40], size=300)  # empty, exact fits, documents over 2+ rows
    docs = [rng.integers(0, 100, n).tolist() for n in lengths]
    packer = CptPacker(seq_len, BOS, EOS, boundaries)
    got_ids, got_pos, start = [], [], 0
    for size in rng.integers(1, 20, size=300):  # batches of any size, a row may close in any of them
        ids, pos = packer.add_batch(*flatten(docs[start : start + size]))
        got_ids += ids.tolist()
        got_pos += pos.tolist()
        start += size
    packer.finish()
    want_ids, want_pos, tail = _pack_per_token(docs, seq_len, boundaries)
    assert got_ids == want_ids and got_pos == want_pos
    assert packer.stats.dropped_tail_tokens == tail
    assert packer.stats.rows == len(want_ids) > 100


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
@torch.no_grad()
def test_packed_documents_do_not_attend_to_each_other(attn, monkeypatch):
    if attn == "flex_attention":
        # CPU: forward only, traced without inductor (its compilation costs ~30 s); the block mask built
        # from the position ids is the one the GPU trains with
        from transformers.integrations.flex_attention import WrappedFlexAttention

        compile_ = torch.compile
        monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, **{**kw, "backend": "eager"}))
        monkeypatch.setattr(WrappedFlexAttention, "_instance", None)
        monkeypatch.setattr(WrappedFlexAttention, "_is_flex_compiled", False)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).eval()
    docs = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]
    ids, pos, _ = pack_all(docs, seq_len=16, bos_id=1, eos_id=2)  # 7 + 5 + 6 = 18 -> one row of 16
    ids, pos = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(pos.astype(np.int64))
    alone, start = [], 0
    for doc in docs:  # each document by itself (sdpa; one flex shape keeps its compilation to one)
        n = min(len(doc) + 2, 16 - start)
        alone.append(model(input_ids=torch.tensor([[1, *doc, 2]])[:, :n], use_cache=False).logits[0])
        start += n
    leaky = model(input_ids=ids, use_cache=False).logits[0]  # positions that never restart
    model.set_attn_implementation(attn)
    assert model.config._attn_implementation == attn  # no silent fallback
    packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky[7:12], packed[7:12], atol=1e-3)


def test_sampler_is_deterministic_and_resumes_at_any_position():
    s = RowSampler(10, seed=3)
    full = s.rows(0, 35)  # crosses three epoch boundaries
    for epoch in range(3):
        assert sorted(full[epoch * 10 : epoch * 10 + 10]) == list(range(10))  # each epoch is a permutation
    assert not np.array_equal(full[:10], full[10:20])  # reshuffled every epoch
    resumed = RowSampler(10, seed=3)
    assert np.array_equal(resumed.rows(17, 18), full[17:35])
    assert np.array_equal(RowSampler(10, seed=3, shuffle=False).rows(8, 4), [8, 9, 0, 1])
