"""One writer per file system: global rank 0 builds, then each node's local rank 0 that cannot see the
shards (node-local cache_dir); and every failure on a building rank reaches the ranks that wait for it,
with the rank and the reason, instead of leaving them in the collective forever."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import pytest
import torch.distributed as dist
from transformers import AutoTokenizer

from data_prep import shards, writers
from data_prep.errors import DataError
from data_prep.tiny_tokenizer import OUT_DIR as TINY_TOKENIZER

DISK_FULL = "OSError: [Errno 28] No space left on device"


@pytest.fixture
def world_of_one(tmp_path):
    """A real gloo process group of one rank, in this process (left as found)."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_waiting_rank_raises_the_builders_failure_with_its_rank_and_reason():
    outcomes = [writers.outcome(OSError(28, "No space left on device"), 0), writers.outcome(None, 1)]
    error = writers.peer_failure(outcomes)
    assert type(error) is RuntimeError
    assert str(error) == f"data preparation failed on rank 0: {DISK_FULL}"

    bad_data = writers.peer_failure([None, writers.outcome(DataError("a.jsonl:3: not valid JSON"), 1)])
    assert type(bad_data) is DataError  # bad data stays a user error, printed without a traceback
    assert str(bad_data) == "data preparation failed on rank 1: a.jsonl:3: not valid JSON"
    assert writers.peer_failure([None, None]) is None


def test_the_builder_tells_the_others_then_reraises_its_own_exception(tmp_path, monkeypatch, world_of_one):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "some words to pack " * 8}) + "\n")

    def full_disk(*args, **kw):
        raise OSError(28, "No space left on device")

    sent = []
    gather = dist.all_gather_object

    def spy(out, obj, *args, **kw):
        gather(out, obj, *args, **kw)
        sent.append(list(out))

    monkeypatch.setattr(shards, "_build", full_disk)
    monkeypatch.setattr(dist, "all_gather_object", spy)
    data = NS(sources=[NS(path=str(corpus))], seq_len=16, cache_dir=tmp_path / "cache")
    with pytest.raises(OSError, match="No space left on device"):
        shards.prepare(data, AutoTokenizer.from_pretrained(TINY_TOKENIZER))
    assert sent == [[{"rank": 0, "data_error": False, "reason": DISK_FULL}]]


def test_one_writer_per_file_system():
    # (global rank, local rank) of two nodes with two ranks each
    ranks = [(0, 0), (1, 1), (2, 0), (3, 1)]

    def writers_of(node_pass, visible):
        return [r for r, local in ranks if writers.builds(r, local, node_pass, visible(r))]

    assert writers_of(False, lambda r: False) == [0]  # first rank 0 alone, whatever the others see
    assert writers_of(False, lambda r: True) == []  # a built shard is reused
    assert writers_of(True, lambda r: r < 2) == [2]  # node-local cache: node 1's leader builds its copy
    assert writers_of(True, lambda r: True) == []  # shared file system: rank 0's shard is seen everywhere


def test_without_local_rank_only_global_rank_0_writes(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(writers, "rank", lambda: 3)
    assert writers.local_rank() == 3
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert writers.local_rank() == 0


def test_a_node_leader_that_cannot_see_the_shard_builds_the_same_one(tmp_path, monkeypatch):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i} " * 9}) + "\n" for i in range(8)))
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    node0 = shards.prepare(NS(sources=[NS(path=str(corpus))], seq_len=16, cache_dir=tmp_path / "n0"), tok)
    monkeypatch.setattr(writers, "rank", lambda: 2)  # global rank 2, the first rank of the second node,
    monkeypatch.setenv("LOCAL_RANK", "0")  # whose node-local cache_dir does not hold rank 0's shard
    node1 = shards.prepare(NS(sources=[NS(path=str(corpus))], seq_len=16, cache_dir=tmp_path / "n1"), tok)
    a, b = node0.shards[0].folder, node1.shards[0].folder
    assert a.parent != b.parent and a.name == b.name
    for name in ("input_ids.bin", "position_ids.bin", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_ranks_wait_out_a_build_longer_than_the_process_group_timeout(tmp_path):
    from tests.conftest import torchrun_helper

    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "some words to pack " * 8}) + "\n")
    r = torchrun_helper("tests/data_prep/slow_build_worker.py", str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        json.loads((tmp_path / "rank0.json").read_text())
        == json.loads((tmp_path / "rank1.json").read_text())
        > 0
    )
