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
