"""The in-training eval hook: benchmark suites on every rank in lockstep, results beside the run.

Training is left exactly as it was: the runner restores RNG states and train mode, and the data
position is not touched, so the losses after an eval equal those of a run without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from train import distributed as dist
from train.config import RunConfig, config_hash
from train.tracking import Tracker

log = logging.getLogger(__name__)


def due(cfg: RunConfig, step: int, saved: bool) -> bool:
    e = cfg.eval
    return bool(e.suites) and (
        (e.every_steps is not None and step % e.every_steps == 0) or (e.at_checkpoints and saved)
    )


def _score_and_write(engine, tokenizer, cfg: RunConfig, step: int, tracker: Tracker) -> None:
    from eval_hooks.runner import evaluate, scalars, write_results

    results = evaluate(
        engine.module,
        tokenizer,
        cfg.eval.suites,
        cfg.eval.data_dir,
        limit=cfg.eval.limit,
        batch_size=cfg.eval.batch_size,
        max_gen_tokens=cfg.eval.max_gen_tokens,
    )
    if not dist.is_main() or results is None:
        return
    path = Path(cfg.output_dir) / "eval" / f"step-{step:08d}.json"
    write_results(path, results, engine.module, cfg.eval.data_dir, step=step, config_hash=config_hash(cfg))
    tracker.log_eval(step, scalars(results), results["tasks"])
    log.info("eval at step %d written to %s", step, path)


def _failed_ranks(failed: bool) -> list[int]:
    """The ranks that failed, the same list on every rank."""
    flags = torch.zeros(dist.world_size(), device=dist.device())
    flags[dist.rank()] = float(failed)
    return [r for r, f in enumerate(dist.all_reduce_sum(flags).tolist()) if f]


def run(engine, tokenizer, cfg: RunConfig, step: int, tracker: Tracker) -> None:
    """Score `cfg.eval.suites`; rank 0 writes <output_dir>/eval/step-N.json and logs scalars and a table.

    The outcome is collective: if any rank fails, every rank warns and continues, or every rank
    raises when `eval.fail_on_error` is set, so no rank waits forever for peers that went on."""
    error: Exception | None = None
    try:
        _score_and_write(engine, tokenizer, cfg, step, tracker)
    except Exception as e:  # noqa: BLE001  (an eval problem must not cost the training run unless asked)
        error = e
    # This rescues failures between collectives (bad data, a write or a logger error). A rank that
    # fails in the middle of one of lm-eval's collectives leaves its peers blocked in it until the
    # process-group timeout; no agreement afterwards can save that.
    failed = _failed_ranks(error is not None)
    if not failed:
        return
    detail = f"{type(error).__name__}: {error}" if error is not None else "see that rank's log"
    message = f"eval at step {step} failed on rank(s) {failed} ({detail})"
    if cfg.eval.fail_on_error:
        raise RuntimeError(f"{message}; set eval.fail_on_error=false to log it and keep training") from error
    if error is not None or dist.is_main():  # the failing rank has the traceback's context
        log.warning("%s; training continues", message)
    tracker.event("eval_error", step=step, ranks=failed, error=detail)
