"""launch/prepare_data.py builds the shards once; training reuses them; a tokenizer or chat-template
change rebuilds exactly the shards it affects."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from data_prep import shards
from data_prep.errors import DataError
from tests.conftest import ROOT, run_entry
from train.config import load_config
from train.model import build_tokenizer

SFT = ROOT / "configs" / "smoke" / "sft_tiny.yaml"
CPT = ROOT / "configs" / "smoke" / "cpt_tiny.yaml"


def test_prepare_once_reuse_and_rebuild_on_fingerprint_change(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    out = run_entry("prepare_data.py", "--config", str(SFT), "--set", f"data.cache_dir={cache}")
    assert out.returncode == 0, out.stderr
    built = [json.loads(line) for line in out.stdout.splitlines()]
    assert [b["source"] for b in built] == ["tests/fixtures/datasets/sft_smoke.jsonl", "stem_zh_instruction"]

    cfg = load_config(SFT, [f"data.cache_dir={cache}"])
    cfg.data.sources.append(
        cfg.data.sources[0].model_copy(
            update={"label": "text", "adapter": "text", "path": "data_prep/samples/multilingual_cpt.jsonl"}
        )
    )
    cfg.data.sources[2].weight = 1
    tok = build_tokenizer(cfg.model)
    shards.prepare(cfg.data, tok)  # builds the CPT shard only
    folders = [str(s.folder) for s in shards.prepare(cfg.data, tok).shards]
    assert folders[:2] == [b["folder"] for b in built]

    def no_build(*args, **kw):
        raise AssertionError("re-tokenized although nothing changed")

    with monkeypatch.context() as m:
        m.setattr(shards, "_build", no_build)
        assert [str(s.folder) for s in shards.prepare(cfg.data, tok).shards] == folders

    tok.chat_template = tok.chat_template.replace("| trim", "")  # a template change: SFT shards only
    after_template = [str(s.folder) for s in shards.prepare(cfg.data, tok).shards]
    assert (
        after_template[0] != folders[0]
        and after_template[1] != folders[1]
        and after_template[2] == folders[2]
    )

    tok.add_tokens(["<|new|>"])  # a tokenizer change: everything
    after_tok = [str(s.folder) for s in shards.prepare(cfg.data, tok).shards]
    assert not set(after_tok) & set(after_template)


def test_sft_shard_keeps_masks(tmp_path):
    cfg = load_config(SFT, [f"data.cache_dir={tmp_path}"])
    data = shards.prepare(cfg.data, build_tokenizer(cfg.model))
    b = data.batch(list(range(len(data))))
    labels, ids = b["labels"], b["input_ids"]
    trained = labels != -100
    assert 0 < int(trained.sum()) < int((ids != build_tokenizer(cfg.model).pad_token_id).sum()) / 2
    assert bool((labels[trained] == ids[trained]).all())
    assert data.shards[0].manifest["dropped_samples"] == 0


def test_sft_content_hash_covers_every_array_as_written(tmp_path):
    # a resume compares this hash: a change to positions or labels alone must change it too
    cfg = load_config(SFT, [f"data.cache_dir={tmp_path}"])
    shard = shards.prepare(cfg.data, build_tokenizer(cfg.model)).shards[0]
    content = hashlib.sha256()
    for row in range(len(shard)):  # SFT rows are written one at a time: ids, then positions, then labels
        for array in (shard.input_ids, shard.position_ids, shard.labels):
            content.update(np.ascontiguousarray(array[row]))
    assert shard.manifest["content_sha256"] == content.hexdigest()


def test_worker_processes_build_the_same_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ENCODE_BATCH", 2)  # several batches in flight: their order must hold
    cfg = load_config(SFT, [f"data.cache_dir={tmp_path / 'one'}"])
    tok = build_tokenizer(cfg.model)
    one = shards.prepare(cfg.data, tok).shards[0].folder
    cfg = load_config(SFT, [f"data.cache_dir={tmp_path / 'two'}", "data.num_proc=2"])
    two = shards.prepare(cfg.data, tok).shards[0].folder
    assert one.name == two.name
    for name in ("input_ids.bin", "position_ids.bin", "labels.bin", "manifest.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes()


def test_cpt_boundaries_change_the_fingerprint_and_the_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "TOKENIZE_BATCH", 7)  # several batches through 2 workers: order must hold
    cfg = load_config(CPT, [f"data.cache_dir={tmp_path}", "data.num_proc=2"])
    tok = build_tokenizer(cfg.model)
    texts = [json.loads(line)["text"] for line in (ROOT / cfg.data.sources[0].path).read_text().splitlines()]
    text_ids = [t for ids in tok(texts, add_special_tokens=False)["input_ids"] for t in ids]
    ours = shards.prepare(cfg.data, tok).shards[0]
    cfg = load_config(CPT, [f"data.cache_dir={tmp_path}", "data.cpt_boundaries=reference"])
    ref = shards.prepare(cfg.data, tok).shards[0]
    assert ours.folder != ref.folder
    assert (
        ours.manifest["key"]["cpt_boundaries"] == "documents"
        and ref.manifest["key"]["cpt_boundaries"] == "reference"
    )
    bos, eos = tok.bos_token_id, tok.eos_token_id
    ids = np.asarray(ref.input_ids).ravel()
    assert eos not in ids and int((ids == bos).sum()) == len(texts) - 1  # the last text ends in the tail
    assert ids[ids != bos].tolist() == text_ids[: len(ids) - len(texts) + 1]  # exactly the tokenizer's ids
    assert (np.asarray(ref.position_ids) == np.arange(cfg.data.seq_len)).all()
    ids = np.asarray(ours.input_ids).ravel()
    assert ids[(ids != bos) & (ids != eos)].tolist() == text_ids[: int(((ids != bos) & (ids != eos)).sum())]
    assert int((ids == eos).sum()) == len(texts) - 1


def test_special_token_strings_in_cpt_text_stay_text(tmp_path):
    f = tmp_path / "code.jsonl"
    text = "tokens such as <|end_of_text|> and <|begin_of_text|> mark documents in a tokenizer's vocabulary"
    f.write_text(json.dumps({"text": text}) + "\n")
    cfg = load_config(CPT, [f"data.cache_dir={tmp_path}", f"data.sources=[{{path: {f}}}]", "data.seq_len=16"])
    tok = build_tokenizer(cfg.model)
    shard = shards.prepare(cfg.data, tok).shards[0]
    as_text = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    ids = [tok.bos_token_id, *as_text, tok.eos_token_id]
    assert np.asarray(shard.input_ids).ravel().tolist() == ids[: shard.manifest["rows"] * 16]
    assert shard.manifest["documents"] == 1 and tok.eos_token_id not in as_text


def test_bad_rows_stop_prepare_with_file_and_row(tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "only a question"}]}\n')
    cfg = load_config(SFT, [f"data.cache_dir={tmp_path}", f"data.sources=[{{path: {f}, adapter: messages}}]"])
    with pytest.raises(DataError, match=rf"{f}:1: the conversation does not end with an assistant turn"):
        shards.prepare(cfg.data, build_tokenizer(cfg.model))


def test_skipped_rows_are_counted_in_the_manifest_and_logged(tmp_path, caplog):
    f = tmp_path / "corpus.jsonl"
    good = json.dumps({"text": "春天来了，河边的柳树慢慢长出了嫩绿的新芽。" * 4}, ensure_ascii=False)
    f.write_text(f'{good}\n{{"text": 5}}\n{{"txt": "x"}}\n{{"text": "broken\n{good}\n')
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.sources=[{{path: {f}}}]", "data.seq_len=8"]
    cfg = load_config(CPT, [*sets, "data.on_error=skip"])
    with caplog.at_level("WARNING"):
        m = shards.prepare(cfg.data, build_tokenizer(cfg.model)).shards[0].manifest
    assert (m["skipped_rows"], m["documents"]) == (3, 2)
    assert [r.split(": ", 1)[0] for r in m["skip_reasons"]] == [f"{f}:{n}" for n in (2, 3, 4)]
    assert "skipped 3 bad rows" in caplog.text and f"{f}:3: text field 'text' is missing" in caplog.text
    with pytest.raises(DataError, match=rf"{f}:2: field 'text' must be a string"):  # the default: stop
        shards.prepare(load_config(CPT, sets).data, build_tokenizer(cfg.model))


def test_chat_check_failures_are_bad_rows_skipped_and_counted_or_stopping_with_file_and_row(tmp_path, caplog):
    f = tmp_path / "chat.jsonl"
    good = {
        "messages": [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four."}]
    }
    bos_inside = {"messages": [{"role": "user", "content": "<|begin_of_text|>Hi"}, good["messages"][1]]}
    f.write_text("".join(json.dumps(r) + "\n" for r in (good, bos_inside, good)))
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.sources=[{{path: {f}, adapter: messages}}]"]
    tok = build_tokenizer(load_config(SFT).model)
    with caplog.at_level("WARNING"):
        m = shards.prepare(load_config(SFT, [*sets, "data.on_error=skip"]).data, tok).shards[0].manifest
    reason = f"{f}:2: turn 0 (user): content holds the special token '<|begin_of_text|>'"
    assert (m["skipped_rows"], m["samples"]) == (1, 2)
    assert len(m["skip_reasons"]) == 1 and m["skip_reasons"][0].startswith(reason)
    assert "skipped 1 bad rows" in caplog.text and reason in caplog.text
    with pytest.raises(DataError, match=rf"{reason}.*or set data.on_error: skip"):  # the default: stop
        shards.prepare(load_config(SFT, sets).data, tok)


def test_a_damaged_cached_shard_is_an_error_naming_its_folder(tmp_path):
    cfg = load_config(SFT, [f"data.cache_dir={tmp_path}"])
    tok = build_tokenizer(cfg.model)
    folder = shards.prepare(cfg.data, tok).shards[0].folder
    fix = "; delete the folder to rebuild it"
    (folder / "labels.bin").unlink()
    with pytest.raises(DataError, match=rf"{folder}: file labels.bin is missing{fix}"):
        shards.prepare(cfg.data, tok)
    ids = folder / "input_ids.bin"
    size = ids.stat().st_size
    ids.write_bytes(ids.read_bytes()[:-4])
    with pytest.raises(
        DataError,
        match=rf"{folder}: file input_ids.bin has {size - 4} bytes, the manifest implies {size}{fix}",
    ):
        shards.prepare(cfg.data, tok)
    (folder / "manifest.json").write_text('{"rows": ')
    with pytest.raises(DataError, match=rf"{folder}: cannot read manifest.json \(.*\){fix}"):
        shards.prepare(cfg.data, tok)
    assert ids.exists()  # nothing is deleted behind the user's back


def test_sft_smoke_recipe_trains_epochs_through_the_launcher(tmp_path):
    # Natural proportions (epochs need them): the smoke data packs into 4 rows (3 + 1 per source) and a
    # step takes 4 rows, so 1.5 epochs round up to 2 steps, the second training 2 of its 4 rows.
    sources = (
        "data.sources=[{path: tests/fixtures/datasets/sft_smoke.jsonl, adapter: messages},"
        " {name: stem_zh_instruction, path: tests/fixtures/datasets/stem_zh_instruction.json}]"
    )
    out = run_entry(
        "train.py", "--config", str(SFT), "--set", f"output_dir={tmp_path / 'run'}",
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "tracking=none", "--set", sources,
        "--set", "train.max_steps=null", "--set", "train.epochs=1.5",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    state = json.loads((tmp_path / "run/checkpoints/step-00000002/trainer_state.json").read_text())
    assert state["step"] == 2 and state["consumed_rows"] == 8
    labels = [s.label for s in load_config(SFT).data.sources]
    rows = state["source_rows"]  # one pass over the 4 rows, then 2 of the second pass's order
    assert sum(rows.values()) == 6 and rows[labels[0]] >= 3 and rows[labels[1]] >= 1, rows


def test_memory_stays_flat_as_the_corpus_grows(tmp_path):
    import tracemalloc

    docs = [json.loads(line)["text"] for line in open(ROOT / "data_prep/samples/multilingual_cpt.jsonl")]
    peaks = {}
    for copies in (20, 80):  # ~0.18M and ~0.7M tokens
        path = tmp_path / f"corpus{copies}.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs * copies))
        cfg = load_config(CPT, [f"data.cache_dir={tmp_path / 'cache'}", f"data.sources=[{{path: {path}}}]"])
        tracemalloc.start()
        rows = len(shards.prepare(cfg.data, build_tokenizer(cfg.model)))
        peaks[copies] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert rows > copies  # the corpus really was tokenized and packed
    # streamed in batches: 4x the corpus, about the same peak (whole-corpus buffering would be ~4x)
    assert peaks[80] < 1.5 * peaks[20], peaks


def _tokenizer_with(tmp_path, setting: dict):
    """The tiny tokenizer with `setting` (truncation or padding) stored in its tokenizer.json."""
    import shutil

    from train.config import ModelConfig
    from train.model import TINY_TOKENIZER

    folder = tmp_path / "tokenizer"
    shutil.copytree(TINY_TOKENIZER, folder)
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    spec.update(setting)
    (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    return build_tokenizer(ModelConfig(preset="llama3_tiny", dtype="fp32", tokenizer=str(folder)))


STORED_SETTINGS = {
    "truncation": {
        "truncation": {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    },
    "padding": {
        "padding": {
            "strategy": "BatchLongest",
            "direction": "Right",
            "pad_to_multiple_of": 64,
            "pad_id": 2047,
            "pad_type_id": 0,
            "pad_token": "<|finetune_right_pad_id|>",
        }
    },
}


@pytest.mark.parametrize("recipe", [CPT, SFT], ids=["cpt", "sft"])
@pytest.mark.parametrize("setting", list(STORED_SETTINGS))
def test_truncation_or_padding_stored_in_the_tokenizer_does_not_change_the_shard(tmp_path, recipe, setting):
    cfg = load_config(recipe, [f"data.cache_dir={tmp_path / 'clean'}"])
    cfg.data.sources = cfg.data.sources[:1]
    clean = shards.prepare(cfg.data, build_tokenizer(cfg.model)).shards[0]
    tok = _tokenizer_with(tmp_path, STORED_SETTINGS[setting])
    stored = (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding)
    assert stored != (None, None)
    cfg.data.cache_dir = str(tmp_path / "stored")
    shard = shards.prepare(cfg.data, tok).shards[0]
    assert shard.folder.name == clean.folder.name  # the same key: the setting does not reach the shard
    for name in ("input_ids.bin", "position_ids.bin", "labels.bin"):
        if (clean.folder / name).exists():
            assert (shard.folder / name).read_bytes() == (clean.folder / name).read_bytes(), name
    assert (tok.backend_tokenizer.truncation, tok.backend_tokenizer.padding) == stored  # left as it was


def test_a_lone_surrogate_is_a_skipped_bad_row_not_a_tokenizer_crash(tmp_path):
    f = tmp_path / "s.jsonl"
    good = json.dumps({"text": "春天来了，河边的柳树慢慢长出了嫩绿的新芽。" * 4}, ensure_ascii=False)
    f.write_text(f'{good}\n{{"text": "bad \\ud800 surrogate"}}\n{good}\n')
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.sources=[{{path: {f}}}]", "data.seq_len=8"]
    m = shards.prepare(
        load_config(CPT, [*sets, "data.on_error=skip"]).data, build_tokenizer(load_config(CPT).model)
    )
    assert (m.shards[0].manifest["skipped_rows"], m.shards[0].manifest["documents"]) == (1, 2)
    assert m.shards[0].manifest["skip_reasons"][0].startswith(f"{f}:2: field 'text' holds a lone surrogate")


def test_a_chat_template_that_raises_is_a_bad_row_with_file_and_row(tmp_path):
    f = tmp_path / "chat.jsonl"
    good = {
        "messages": [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four."}]
    }
    system = {"messages": [{"role": "system", "content": "Be brief."}, *good["messages"]]}
    f.write_text("".join(json.dumps(r) + "\n" for r in (good, system, good)))
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"data.sources=[{{path: {f}, adapter: messages}}]"]
    tok = build_tokenizer(load_config(SFT).model)
    refuse = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    tok.chat_template = refuse + tok.chat_template
    reason = f"{f}:2: the chat template failed: System role not supported"
    m = shards.prepare(load_config(SFT, [*sets, "data.on_error=skip"]).data, tok).shards[0].manifest
    assert (m["skipped_rows"], m["samples"], m["skip_reasons"]) == (1, 2, [reason])
    with pytest.raises(DataError, match=rf"{reason} \(or set data.on_error: skip\)"):
        shards.prepare(load_config(SFT, sets).data, tok)


def test_a_renamed_label_reuses_the_shard_and_digests_as_a_fresh_build(tmp_path):
    # The label is not in the fingerprint: the reused shard's manifest keeps the old one, and the digest that
    # resumes and ranks compare must not depend on which label the cache was first built under.
    tok = build_tokenizer(load_config(CPT).model)

    def prepared(cache, label):
        source = f"data.sources=[{{path: data_prep/samples/multilingual_cpt.jsonl, label: {label}}}]"
        return shards.prepare(load_config(CPT, [f"data.cache_dir={cache}", source]).data, tok)

    prepared(tmp_path / "a", "old")
    reused, fresh = prepared(tmp_path / "a", "new"), prepared(tmp_path / "b", "new")
    assert reused.shards[0].manifest["label"] == "old"
    assert reused.summaries() == fresh.summaries() and list(fresh.summaries()) == ["new"]


def test_a_killed_builds_temporary_folder_is_removed_by_the_next_build(tmp_path):
    import fcntl
    import os
    import socket

    cfg = load_config(CPT, [f"data.cache_dir={tmp_path}"])
    folder, _ = shards._plan(cfg.data, build_tokenizer(cfg.model))[2][0]
    host, gone = socket.gethostname(), 2**22 + 1  # a pid above any pid: no such process here

    def partial(name, lock=False):
        tmp = tmp_path / f".tmp-{folder.name}-{name}"
        tmp.mkdir(parents=True)
        (tmp / "input_ids.bin").write_bytes(b"\0" * 64)
        if lock:
            (tmp / shards._LOCK).touch()
        return tmp

    killed = partial(f"{host}-{gone}", lock=True)  # its builder's lock was freed by the kill
    killed_unlocked = partial(f"{host}-{gone + 1}")  # a folder from before the lock: the pid tells
    live = partial(f"{host}-{os.getppid()}")  # a running process's build stays
    other_host = partial(f"{host}-2-{gone}")  # host "<host>-2": not ours to judge
    # a live builder in another container on this host: its pid means nothing here, its lock is held
    other_container = partial(f"{host}-{gone + 2}", lock=True)
    held = os.open(other_container / shards._LOCK, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        shards.prepare(cfg.data, build_tokenizer(cfg.model))
    finally:
        os.close(held)
    assert not killed.exists() and not killed_unlocked.exists()
    assert live.exists() and other_host.exists() and other_container.exists()
    assert folder.is_dir() and not (folder / shards._LOCK).exists()


def test_shards_digest_as_the_checkpoints_before_them_recorded(tmp_path):
    # Digests of the smoke recipes' shards as built at 6c771d0: a rebuild today must match them, or every
    # resume of an older run (and ranks mixing old and new caches) would be refused as other data.
    pinned = {
        SFT: {
            "stem_zh_instruction": "9e483c13b690acd8",
            "tests/fixtures/datasets/sft_smoke.jsonl": "bdbd7398684c6270",
        },
        CPT: {"data_prep/samples/multilingual_cpt.jsonl": "c45f672a46362cc4"},
    }
    for recipe, digests in pinned.items():
        cfg = load_config(recipe, [f"data.cache_dir={tmp_path}"])
        summaries = shards.prepare(cfg.data, build_tokenizer(cfg.model)).summaries()
        assert {label: s["digest"] for label, s in summaries.items()} == digests, recipe.name


def test_documents_reordered_at_the_same_counts_change_the_rows_hash_not_the_digest(tmp_path):
    tok = build_tokenizer(load_config(CPT).model)
    docs = [
        json.loads(line)
        for line in (ROOT / "data_prep/samples/multilingual_cpt.jsonl").read_text().splitlines()
    ]

    def summary(name, rows):
        f = tmp_path / name / "docs.jsonl"
        f.parent.mkdir()
        f.write_text("".join(json.dumps(d) + "\n" for d in rows))
        cfg = load_config(
            CPT, [f"data.cache_dir={tmp_path / 'cache'}", f"data.sources=[{{path: {f}, label: web}}]"]
        )
        return shards.prepare(cfg.data, tok).summaries()["web"]

    first, swapped = summary("a", docs), summary("b", [docs[1], docs[0], *docs[2:]])
    assert (first["digest"], first["rows"], first["tokens"]) == (
        swapped["digest"],
        swapped["rows"],
        swapped["tokens"],
    )
    assert first["content"] != swapped["content"]
    assert summary("c", docs)["content"] == first["content"]  # the same rows, another path: equal
