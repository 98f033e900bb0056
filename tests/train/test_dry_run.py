"""`--dry-run` of the flagship builds the Llama-3.1-8B Concat16 shape on the meta device, with no
download: 3.49B trainable of 11.52B parameters, and prints the generated DeepSpeed JSON."""

from __future__ import annotations

import json

from tests.conftest import ROOT, run_entry


def test_flagship_dry_run_counts_without_downloading():
    r = run_entry(
        "train.py",
        "--config",
        str(ROOT / "configs/synE_concat16.yaml"),
        "--dry-run",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "# parameters: total 11,520,053,264 | trainable 3,489,792,016 | frozen 8,030,261,248" in r.stdout
    ds = json.loads(r.stdout.split("# DeepSpeed config\n", 1)[1])
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is True
    assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["gradient_accumulation_steps"] == 8
