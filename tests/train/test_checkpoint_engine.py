"""Checkpoints of a real engine (one in-process rank): a step saved again keeps the earlier one, and files
with the right sizes but the wrong bytes stop the resume with the folder named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import SMOKE
from train import checkpoint
from train import distributed as dist
from train.config import load_config
from train.engine import build_engine
from train.errors import UserError
from train.model import build_for_training


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    dist.init()
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(SMOKE, ["tracking=none", f"output_dir={out}"])
    engine = build_engine(cfg, build_for_training(cfg), 1, cfg.total_steps())
    state = {"step": 2, "consumed_rows": 8, "tokens": 1024, "source_rows": {}, "source_target_tokens": {}}
    first = checkpoint.save(engine, cfg, 2, state)
    checkpoint.save(engine, cfg, 2, state)  # e.g. a run resumed from an earlier step reaches step 2 again
    return engine, first


def test_a_step_saved_again_keeps_the_earlier_one(saved):
    _, folder = saved
    (kept,) = folder.parent.glob("step-00000002.replaced-*")
    assert checkpoint.check_complete(kept)["step"] == checkpoint.check_complete(folder)["step"] == 2
    assert checkpoint.latest_complete(folder.parent) == folder


@pytest.mark.parametrize("name", ["rng_rank0.pt", "mp_rank_00_model_states.pt"])
def test_garbage_of_the_right_size_is_refused(saved, name, tmp_path):
    engine, folder = saved
    broken = tmp_path / "checkpoints" / folder.name
    broken.parent.mkdir()
    shutil.copytree(folder, broken)
    size = (broken / name).stat().st_size
    (broken / name).write_bytes(b"\x07" * size)
    assert checkpoint.check_complete(broken)  # the manifest cannot tell
    with pytest.raises(UserError, match=f"{broken}: a file cannot be read"):
        checkpoint.load(engine, broken)


def test_an_export_replaced_is_set_aside_until_the_new_one_is_in_place(saved, tmp_path, monkeypatch):
    _, folder = saved
    out = tmp_path / "export"
    checkpoint.export_hf(folder, out)
    first = sorted(p.name for p in out.iterdir())
    real_replace = checkpoint.os.replace

    def killed_before_the_new_export_lands(src, dst):
        if str(src).endswith(".tmp-export"):
            raise KeyboardInterrupt  # stands in for a kill between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_before_the_new_export_lands)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.export_hf(folder, out, overwrite=True)
    assert sorted(p.name for p in (tmp_path / ".old-export").iterdir()) == first  # nothing deleted yet
    monkeypatch.undo()
    checkpoint.export_hf(folder, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == first and not (tmp_path / ".old-export").exists()


def test_a_kill_between_latest_and_the_rename_resumes_the_newest_complete(saved, monkeypatch):
    engine, folder = saved
    cfg = load_config(SMOKE, ["tracking=none", f"output_dir={folder.parent.parent}"])
    real_replace = checkpoint.os.replace

    def killed_before_the_rename(src, dst):
        if Path(src).name == ".tmp-step-00000003":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_before_the_rename)
    state = {"step": 3, "consumed_rows": 12, "tokens": 1536, "source_rows": {}, "source_target_tokens": {}}
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(engine, cfg, 3, state)
    assert (folder.parent / "latest").read_text() == "step-00000003"  # names no folder yet
    assert checkpoint.find_resume(cfg, "auto") == folder  # step 2, the newest complete
    monkeypatch.undo()
    (folder.parent / "latest").write_text(folder.name)  # as it was, for the other tests
