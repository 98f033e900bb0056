"""Experiment tracking: wandb on rank 0 (offline when no API key) plus our own metrics.jsonl.

metrics.jsonl gets one JSON object per logged step, always, so runs can be compared and
plotted without wandb. After a resume, steps past the checkpoint are logged again: `read_metrics`
drops what an earlier attempt logged past the step its successor resumed from. wandb plots against
our `step` metric rather than its own `_step`, which only increases: a resumed run's re-logged steps
would otherwise be dropped. A fresh run in an output_dir with an earlier run's files sets them aside
(`metrics.prev-<time>.jsonl`, `wandb_run_id.prev-<time>`, `eval.prev-<time>/`) and starts a new wandb run.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import time
import uuid
from pathlib import Path

from train import distributed as dist
from train.config import RunConfig

log = logging.getLogger(__name__)


def _wandb_key_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class Tracker:
    """Rank-0 logger of scalars, events and tables; a no-op on other ranks."""

    def __init__(self, cfg: RunConfig, extra_config: dict | None = None, fresh: bool = False):
        """`fresh`: a run that starts at step 0, whose curves must not join an earlier run's in this folder."""
        self.enabled = dist.is_main()
        self.run_dir = Path(cfg.output_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.wandb = None
        if self.enabled and fresh:
            self._set_aside_earlier_run()
        if self.enabled:
            self._end_a_torn_line()
        if not self.enabled or cfg.tracking.backend == "none":
            return
        import wandb

        t = cfg.tracking
        mode = t.mode
        if mode == "auto":
            mode = "online" if _wandb_key_present() else "offline"
            if mode == "offline":
                log.info(
                    "wandb: no API key found, logging offline to %s/wandb (sync later with `wandb sync`)",
                    self.run_dir,
                )
        id_file = self.run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        self.wandb = wandb.init(
            project=t.project,
            name=t.run_name or self.run_dir.name,
            group=t.group,
            tags=t.tags,
            id=run_id,
            resume="allow",
            dir=str(self.run_dir),
            mode=mode,
            config=dict(cfg.model_dump(mode="json"), **(extra_config or {})),
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        self.wandb.define_metric("step")
        self.wandb.define_metric("*", step_metric="step")

    def _set_aside_earlier_run(self) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for path, aside in (
            (self.metrics_path, self.run_dir / f"metrics.prev-{stamp}.jsonl"),
            (self.run_dir / "wandb_run_id", self.run_dir / f"wandb_run_id.prev-{stamp}"),
            (self.run_dir / "eval", self.run_dir / f"eval.prev-{stamp}"),  # its results would join this run's
        ):
            if path.exists():
                os.replace(path, aside)
                log.warning(
                    "a fresh run in %s: the earlier run's %s is kept as %s", self.run_dir, path.name, aside
                )

    def _end_a_torn_line(self) -> None:
        """A kill mid-append leaves a line without its newline: end it, so the next record is a line of its own."""
        if self.metrics_path.is_file() and self.metrics_path.stat().st_size:
            with open(self.metrics_path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def _append(self, record: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._append({"step": step, **metrics})
        if self.wandb is not None:
            self.wandb.log({**{k: v for k, v in metrics.items() if v is not None}, "step": step})

    def log_eval(self, step: int, scalars: dict, tasks: dict[str, dict]) -> None:
        """Eval scalars (an `eval` event in metrics.jsonl) and a per-task table in wandb."""
        if not self.enabled:
            return
        self._append({"event": "eval", "step": step, **scalars})
        if self.wandb is not None:
            import wandb

            rows = [
                [task, metric, value]
                for task, metrics in tasks.items()
                for metric, value in metrics.items()
                if isinstance(value, int | float)
            ]
            table = wandb.Table(columns=["task", "metric", "value"], data=rows)
            self.wandb.log({**scalars, "eval/table": table, "step": step})

    def event(self, name: str, **data) -> None:
        """A non-metric record in metrics.jsonl (resume, stop, checkpoint), e.g. {"event": "resume", ...}."""
        if self.enabled:
            self._append({"event": name, **data})

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def read_metrics(path: str | Path) -> dict[int, dict]:
    """The metrics of each step from metrics.jsonl as the run that carried on trained them: a `resume` event
    at step S drops the records past S (an abandoned attempt's), and a step logged twice keeps its last."""
    out: dict[int, dict] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a kill mid-append tears the line; the run appends after it on resume
            log.warning("%s:%d: not a complete record (an interrupted write?), skipped", path, lineno)
            continue
        if rec.get("event") == "resume":
            out = {step: r for step, r in out.items() if step <= rec["step"]}
        elif "step" in rec and "event" not in rec:
            out[rec["step"]] = rec
    return dict(sorted(out.items()))
