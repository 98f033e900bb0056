"""Tracking: wandb gets every logged step, including steps logged again after a resume."""

import glob
from pathlib import Path

from tests.wandb_reader import history
from train.config import load_config
from train.tracking import Tracker, read_metrics

ROOT = Path(__file__).resolve().parents[2]


def test_steps_logged_again_reach_wandb(tmp_path):
    # A run resumed from step 2 re-logs step 3, which wandb's own monotonic `_step` would drop.
    cfg = load_config(
        ROOT / "configs/smoke/cpt_tiny.yaml", [f"output_dir={tmp_path}", "tracking.mode=offline"]
    )
    tracker = Tracker(cfg)
    for step, loss in [(1, 4.0), (2, 3.0), (3, 2.5), (3, 2.0), (4, 1.5)]:
        tracker.log(step, {"loss": loss})
    tracker.finish()
    import wandb

    # finish() may return before wandb's service has written the offline file (seen under load: a 7-byte
    # file); a training process writes it at exit, so does this one's service when torn down
    wandb.teardown()
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows = [(row["step"], row["loss"]) for row in history(run_file)]
    assert rows == [(1, 4.0), (2, 3.0), (3, 2.5), (3, 2.0), (4, 1.5)]
    assert {s: m["loss"] for s, m in read_metrics(tmp_path / "metrics.jsonl").items()} == {
        1: 4.0,
        2: 3.0,
        3: 2.0,
        4: 1.5,
    }


def test_records_an_abandoned_attempt_logged_past_the_resume_are_dropped(tmp_path):
    cfg = load_config(ROOT / "configs/smoke/cpt_tiny.yaml", [f"output_dir={tmp_path}", "tracking=none"])
    tracker = Tracker(cfg)
    for step in range(1, 6):  # the first attempt, killed after step 5
        tracker.log(step, {"loss": 10.0 - step})
    tracker.event("resume", step=4, checkpoint="step-00000004")
    tracker.log(6, {"loss": 0.5})  # resumed with log_every=2: step 5 is not logged again
    assert {s: m["loss"] for s, m in read_metrics(tmp_path / "metrics.jsonl").items()} == {
        1: 9.0,
        2: 8.0,
        3: 7.0,
        4: 6.0,
        6: 0.5,
    }


def test_a_fresh_run_sets_an_earlier_runs_files_aside(tmp_path):
    cfg = load_config(ROOT / "configs/smoke/cpt_tiny.yaml", [f"output_dir={tmp_path}", "tracking=none"])
    Tracker(cfg).log(1, {"loss": 3.0})
    (tmp_path / "wandb_run_id").write_text("733a8f26")
    Tracker(cfg).log(2, {"loss": 2.0})  # a resumed run appends
    assert list(read_metrics(tmp_path / "metrics.jsonl")) == [1, 2]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "step-00000002.json").write_text("{}")
    Tracker(cfg, fresh=True).log(1, {"loss": 5.0})  # checkpoints moved away, started over
    assert (
        not (tmp_path / "eval").exists() and len(list(tmp_path.glob("eval.prev-*/step-00000002.json"))) == 1
    )
    assert {s: m["loss"] for s, m in read_metrics(tmp_path / "metrics.jsonl").items()} == {1: 5.0}
    (old_metrics,) = tmp_path.glob("metrics.prev-*.jsonl")
    assert list(read_metrics(old_metrics)) == [1, 2]
    (old_id,) = tmp_path.glob("wandb_run_id.prev-*")  # the next wandb run gets a new id
    assert old_id.read_text() == "733a8f26" and not (tmp_path / "wandb_run_id").exists()


def test_a_record_torn_by_a_kill_is_skipped_and_the_resumed_run_logs_after_it(tmp_path, caplog):
    cfg = load_config(ROOT / "configs/smoke/cpt_tiny.yaml", [f"output_dir={tmp_path}", "tracking=none"])
    Tracker(cfg).log(1, {"loss": 3.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # killed mid-write
    tracker = Tracker(cfg)  # the resumed run
    tracker.event("resume", step=1, checkpoint="step-00000001")
    tracker.log(2, {"loss": 2.0})
    assert {s: m["loss"] for s, m in read_metrics(tmp_path / "metrics.jsonl").items()} == {1: 3.0, 2: 2.0}
    assert "metrics.jsonl:2: not a complete record" in caplog.text
