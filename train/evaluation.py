"""The in-training eval hook: benchmark suites on every rank in lockstep, results beside the run.

Training is left exactly as it was: the runner restores RNG states and train mode, and the data
position is not touched, so the losses after an eval equal those of a run without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from train import distributed as dist
from train.config import RunConfig, config_hash
from train.tracking import Tracker

log = logging.getLogger(__name__)


def due(cfg: RunConfig, step: int, saved: bool) -> bool:
    e = cfg.eval
    return bool(e.suites) and (
        (e.every_steps is not None and step % e.every_steps == 0) or (e.at_checkpoints and saved)
    )


def run(engine, tokenizer, cfg: RunConfig, step: int, tracker: Tracker) -> None:
    """Score `cfg.eval.suites`; rank 0 writes <output_dir>/eval/step-N.json and logs scalars and a table."""
    from eval_hooks.runner import evaluate, scalars, write_results

    try:
        results = evaluate(
            engine.module,
            tokenizer,
            cfg.eval.suites,
            cfg.eval.data_dir,
            limit=cfg.eval.limit,
            max_gen_tokens=cfg.eval.max_gen_tokens,
        )
    except Exception as e:  # noqa: BLE001  (an eval problem must not cost the training run unless asked)
        if cfg.eval.fail_on_error:
            raise
        log.warning("eval at step %d failed, training continues: %s", step, e)
        tracker.event("eval_error", step=step, error=str(e))
        return
    if not dist.is_main() or results is None:
        return
    path = Path(cfg.output_dir) / "eval" / f"step-{step:08d}.json"
    write_results(path, results, engine.module, cfg.eval.data_dir, step=step, config_hash=config_hash(cfg))
    tracker.log_eval(step, scalars(results), results["tasks"])
    log.info("eval at step %d written to %s", step, path)
