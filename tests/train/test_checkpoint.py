"""Checkpoint discovery: incomplete or truncated checkpoints are skipped with a reason, never loaded; a resume on
other prepared data is refused naming the source."""

from __future__ import annotations

import json
import logging
import re

import pytest

from tests.conftest import torchrun_helper
from train.checkpoint import (
    STATE_FILE,
    _prune,
    check_complete,
    check_same_data,
    latest_complete,
    set_aside_newer,
    tag_for,
)
from train.errors import UserError


def _fake_checkpoint(root, step, files=None):
    folder = root / tag_for(step)
    folder.mkdir(parents=True)
    files = files or {"mp_rank_00_model_states.pt": b"x" * 100, "rng_rank0.pt": b"y" * 10}
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    manifest = {name: len(blob) for name, blob in files.items()}
    state = {"step": step, "consumed_rows": 0, "tokens": 0, "config_hash": "x", "config": {}, "world_size": 1}
    (folder / STATE_FILE).write_text(json.dumps({**state, "files": manifest}))
    return folder


def test_newest_complete_checkpoint_wins(tmp_path):
    for step in (3, 6, 9):
        _fake_checkpoint(tmp_path, step)
    assert latest_complete(tmp_path).name == "step-00000009"


def test_truncated_file_is_skipped_with_reason(tmp_path, caplog):
    _fake_checkpoint(tmp_path, 3)
    bad = _fake_checkpoint(tmp_path, 6)
    (bad / "mp_rank_00_model_states.pt").write_bytes(b"x" * 40)  # torn write
    with caplog.at_level(logging.WARNING):
        assert latest_complete(tmp_path).name == "step-00000003"
    assert "mp_rank_00_model_states.pt has 40 bytes, the manifest says 100" in caplog.text


def test_missing_state_or_file_is_incomplete(tmp_path):
    no_state = _fake_checkpoint(tmp_path, 3)
    (no_state / STATE_FILE).unlink()
    with pytest.raises(UserError, match="no trainer_state.json"):
        check_complete(no_state)
    missing = _fake_checkpoint(tmp_path, 6)
    (missing / "rng_rank0.pt").unlink()
    with pytest.raises(UserError, match="file rng_rank0.pt is missing"):
        check_complete(missing)
    assert latest_complete(tmp_path) is None


def test_temporary_folders_are_ignored(tmp_path):
    _fake_checkpoint(tmp_path, 3)
    (tmp_path / ".tmp-step-00000006").mkdir()
    assert latest_complete(tmp_path).name == "step-00000003"


def test_pruning_keeps_the_new_checkpoint_and_never_deletes_newer_ones(tmp_path):
    for step in (2, 4, 6, 8):
        _fake_checkpoint(tmp_path, step)
    _prune(tmp_path, 6, keep_last=2)  # resumed from step 4 of a run that had reached step 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000006", "step-00000008"]


def test_pruning_deletes_through_a_rename_and_sweeps_what_a_kill_left(tmp_path):
    for step in (2, 4, 6):
        _fake_checkpoint(tmp_path, step)
    (tmp_path / ".deleting-step-00000001").mkdir()  # a prune killed mid-delete: its shards stay out of view
    (tmp_path / ".deleting-step-00000001" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"z")
    _prune(tmp_path, 6, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000006"]


def test_a_resume_sets_the_abandoned_attempts_checkpoints_aside(tmp_path):
    # Resumed from step 4 of a run that had reached 8: should this run die before its first save, `--resume
    # auto` must come back to 4, not to the abandoned 6 and 8 (which `latest` named).
    for step in (2, 4, 6, 8):
        _fake_checkpoint(tmp_path, step)
    (tmp_path / "latest").write_text(tag_for(8))
    set_aside_newer(tmp_path, tmp_path / tag_for(4), 4)
    assert latest_complete(tmp_path).name == "step-00000004"
    assert (tmp_path / "latest").read_text() == tag_for(4)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name != "latest")
    assert names[:2] == ["step-00000002", "step-00000004"]
    assert [re.sub(r"-\d{8}-\d{6}$", "", n) for n in names[2:]] == [
        "step-00000006.abandoned",
        "step-00000008.abandoned",
    ]  # kept, and out of reach of auto and pruning
    assert check_complete(tmp_path / names[3])["step"] == 8


def test_a_resume_sets_the_abandoned_attempts_eval_results_aside(tmp_path):
    root, results = tmp_path / "checkpoints", tmp_path / "eval"
    _fake_checkpoint(root, 4)
    results.mkdir()
    for step in (2, 4, 6):
        (results / f"{tag_for(step)}.json").write_text(json.dumps({"step": step}))
    set_aside_newer(root, root / tag_for(4), 4)
    names = sorted(re.sub(r"-\d{8}-\d{6}$", "", p.name) for p in results.iterdir())
    assert names == ["step-00000002.json", "step-00000004.json", "step-00000006.json.abandoned"]


def test_a_resume_path_that_is_not_a_checkpoint_says_what_it_is(tmp_path):
    with pytest.raises(UserError, match="nope does not exist"):
        check_complete(tmp_path / "nope")
    _fake_checkpoint(tmp_path / "run" / "checkpoints", 2)
    (tmp_path / "run" / "checkpoints" / "latest").write_text(tag_for(2))
    with pytest.raises(UserError, match="latest is a file, not a checkpoint"):
        check_complete(tmp_path / "run" / "checkpoints" / "latest")
    for folder in (tmp_path / "run", tmp_path / "run" / "checkpoints"):
        with pytest.raises(UserError, match="is a run or checkpoints folder, not a checkpoint: give a step-"):
            check_complete(folder)


def test_resume_under_another_zero_stage_is_refused(tmp_path):
    from tests.conftest import SMOKE
    from train.checkpoint import check_compatible
    from train.config import config_hash, load_config

    saved = load_config(SMOKE, ["deepspeed.zero_stage=2"])
    cfg = load_config(SMOKE, ["deepspeed.zero_stage=3"])
    state = {"world_size": 1, "config_hash": config_hash(saved), "config": saved.model_dump(mode="json")}
    with pytest.raises(UserError, match="saved under ZeRO stage 2, this run uses 3"):
        check_compatible(cfg, state, tmp_path, force=True)  # the shards cannot be read, forced or not


def test_resume_with_another_world_size_is_refused(tmp_path):
    from tests.conftest import SMOKE
    from train.checkpoint import check_compatible
    from train.config import config_hash, load_config

    cfg = load_config(SMOKE)
    state = {"world_size": 2, "config_hash": config_hash(cfg), "config": cfg.model_dump(mode="json")}
    with pytest.raises(UserError, match="saved with 2 ranks, this run has 1"):
        check_compatible(cfg, state, tmp_path, force=True)  # not even --allow-config-change
    check_compatible(cfg, dict(state, world_size=1), tmp_path, force=False)


def test_latest_pointer_wins_over_newer_abandoned_checkpoints(tmp_path):
    for step in (6, 7, 8):  # 8 is of a run that was resumed from 6 and saved 7
        _fake_checkpoint(tmp_path, step)
    (tmp_path / "latest").write_text(tag_for(7))
    assert latest_complete(tmp_path).name == "step-00000007"
    (tmp_path / tag_for(7) / STATE_FILE).unlink()  # broken: the one before it, not the abandoned 8
    assert latest_complete(tmp_path).name == "step-00000006"
    (tmp_path / tag_for(6) / STATE_FILE).unlink()
    assert latest_complete(tmp_path) is None


def test_resume_auto_names_what_it_cannot_take(tmp_path):
    from tests.conftest import SMOKE
    from train.checkpoint import find_resume
    from train.config import load_config

    root = tmp_path / "checkpoints"
    for step in (7, 8):
        _fake_checkpoint(root, step)
    (root / "latest").write_text(tag_for(7))
    (root / tag_for(7) / "rng_rank0.pt").write_bytes(b"")
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}"])
    with pytest.raises(UserError) as e:
        find_resume(cfg, "auto")
    assert "rng_rank0.pt has 0 bytes" in str(e.value)
    assert (
        f"step-00000008 is newer than the one `latest` names (an abandoned attempt's; --resume {root / tag_for(8)}"
        in str(e.value)
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{}", "not a checkpoint state (missing or empty: step, consumed_rows"),
        ("[]", "not a checkpoint state"),
        (
            '{"step": 1, "consumed_rows": 0, "tokens": 0, "config_hash": "x", "config": {}, "world_size": 1, '
            '"files": {}}',
            "missing or empty: files",
        ),
        (b"\xff\xfe{", "unreadable"),
    ],
)
def test_a_malformed_state_file_is_incomplete(tmp_path, text, fragment):
    folder = _fake_checkpoint(tmp_path, 3)
    state = folder / STATE_FILE
    state.write_bytes(text) if isinstance(text, bytes) else state.write_text(text)
    with pytest.raises(UserError, match=re.escape(fragment)):
        check_complete(folder)


def test_checkpoints_path_that_is_a_file_is_refused(tmp_path):
    from tests.conftest import SMOKE
    from train.checkpoint import find_resume
    from train.config import load_config

    (tmp_path / "checkpoints").write_text("")
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match="is a file, not the checkpoints folder"):
        find_resume(cfg, "auto")


def test_export_never_replaces_the_checkpoint_or_foreign_files(tmp_path):
    from train.checkpoint import EXPORT_MARKER, _check_export_target

    ckpt = _fake_checkpoint(tmp_path / "run" / "checkpoints", 2)
    for out in (tmp_path / "run", ckpt / "hf"):
        with pytest.raises(UserError, match="overlap"):
            _check_export_target(ckpt, out, overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        _check_export_target(ckpt, tmp_path / "file", overwrite=True)
    notes = tmp_path / "export"
    notes.mkdir()
    (notes / "MYNOTES.txt").write_text("mine")
    with pytest.raises(UserError, match="not an export of ours"):
        _check_export_target(ckpt, notes, overwrite=True)
    (notes / EXPORT_MARKER).write_text("{}")  # an earlier export: replaced only when asked
    with pytest.raises(UserError, match="pass --overwrite"):
        _check_export_target(ckpt, notes, overwrite=False)
    _check_export_target(ckpt, notes, overwrite=True)


def test_a_run_that_would_replace_foreign_files_at_its_end_stops_at_start(tmp_path):
    from tests.conftest import SMOKE
    from train.config import load_config
    from train.loop import train

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "MYNOTES.txt").write_text("mine")
    cfg = load_config(SMOKE, [f"output_dir={tmp_path}", "checkpoint.export_at_end=true", "tracking=none"])
    with pytest.raises(
        UserError, match="not an export of ours: move them or set checkpoint.export_at_end: false"
    ):
        train(cfg)
    assert (tmp_path / "export" / "MYNOTES.txt").read_text() == "mine"


def test_resume_on_other_prepared_data_names_each_changed_source(tmp_path):
    web, books = {"digest": "a", "rows": 12, "tokens": 424}, {"digest": "b", "rows": 3, "tokens": 90}
    saved = {"data": {"web": web, "books": books}}
    check_same_data(saved, {"web": web, "books": books}, tmp_path, force=False)
    check_same_data({}, {"web": web}, tmp_path, force=False)  # a checkpoint from before the record
    now = {"web": {**web, "rows": 13, "tokens": 430}, "books": {**books, "digest": "c"}, "code": books}
    with pytest.raises(UserError) as e:
        check_same_data(saved, now, tmp_path, force=False)
    assert str(e.value).startswith(
        f"{tmp_path} was trained on other prepared data: source 'books' (the same counts; its tokenizer, "
        "template, packing or format differ); source 'code' added; source 'web' (rows 12 -> 13, tokens 424 -> 430)."
    )
    check_same_data(saved, now, tmp_path, force=True)


def test_the_rows_hash_tells_documents_changed_at_the_same_counts(tmp_path):
    web = {"digest": "a", "rows": 12, "tokens": 424, "content": "c1"}
    check_same_data({"data": {"web": web}}, {"web": web}, tmp_path, force=False)
    with pytest.raises(
        UserError, match=r"source 'web' \(the same counts and settings, other rows: its documents"
    ):
        check_same_data({"data": {"web": web}}, {"web": {**web, "content": "c2"}}, tmp_path, force=False)
    recorded_without = {k: v for k, v in web.items() if k != "content"}  # a checkpoint from before the hash
    check_same_data(
        {"data": {"web": recorded_without}}, {"web": {**web, "content": "c2"}}, tmp_path, force=False
    )


def test_an_output_dir_the_ranks_do_not_share_is_refused_on_every_rank(tmp_path):
    """Node-local output_dirs gave checkpoints marked complete without the other nodes' shards, and a resume
    that paired a resumed rank with a fresh one (a hang)."""
    r = torchrun_helper("tests/train/shared_dir_worker.py", str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = {line for rank in (0, 1) for line in (tmp_path / f"rank{rank}.txt").read_text().splitlines()}
    for rank in (0, 1):
        assert f"shared rank {rank}: ok" in lines
        local = (
            f"local rank {rank}: output_dir {tmp_path}/node{rank} is not on a file system every node shares"
        )
        assert any(
            line.startswith(f"{local}: rank 0's file there is not seen by rank(s) [1]") for line in lines
        )
        assert (
            f"diverging rank {rank}: the ranks would resume from different checkpoints ({tmp_path}/step-0, "
            f"{tmp_path}/step-1); is {tmp_path}/shared shared?"
        ) in lines
