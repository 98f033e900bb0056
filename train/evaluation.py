"""The in-training eval hook: benchmark suites on every rank in lockstep, results beside the run.

Training is left exactly as it was: the runner restores RNG states and train mode, and the data
position is not touched, so the losses after an eval equal those of a run without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from eval_hooks.lockstep import OutOfStep, PeerFailed
from train import distributed as dist
from train.config import RunConfig, config_hash
from train.tracking import Tracker

log = logging.getLogger(__name__)


def due(cfg: RunConfig, step: int, saved: bool) -> bool:
    e = cfg.eval
    return bool(e.suites) and (
        (e.every_steps is not None and step % e.every_steps == 0) or (e.at_checkpoints and saved)
    )


def result_path(cfg: RunConfig, step: int) -> Path:
    return Path(cfg.output_dir) / "eval" / f"step-{step:08d}.json"


def pending(cfg: RunConfig, step: int) -> bool:
    """An eval due at the checkpoint `step` that has no result: a stop signal there saves and skips it (to
    exit fast), or the run died during it. Rank 0's view, on every rank (the ranks see one output_dir)."""
    missing = not result_path(cfg, step).is_file() if dist.is_main() else None
    return due(cfg, step, saved=True) and dist.all_gather_object(missing)[0]


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
    path = result_path(cfg, step)
    write_results(path, results, engine.module, cfg.eval.data_dir, step=step, config_hash=config_hash(cfg))
    tracker.log_eval(step, scalars(results), results["tasks"])
    log.info("eval at step %d written to %s", step, path)


def _failures(error: Exception | None) -> dict[int, str]:
    """{rank: its error} of the ranks whose eval failed, the same on every rank (a peer's abort is not one)."""
    own = None if error is None or isinstance(error, PeerFailed) else f"{type(error).__name__}: {error}"
    return {r: e for r, e in enumerate(dist.all_gather_object(own)) if e is not None}


def run(engine, tokenizer, cfg: RunConfig, step: int, tracker: Tracker) -> None:
    """Score `cfg.eval.suites`; rank 0 writes <output_dir>/eval/step-N.json and logs scalars and a table.

    The outcome is collective: if any rank fails, every rank warns and continues, or every rank
    raises when `eval.fail_on_error` is set, so no rank waits forever for peers that went on. A rank
    that fails where its peers cannot be rejoined (eval_hooks.lockstep.OutOfStep) stops the run."""
    error: Exception | None = None
    try:
        _score_and_write(engine, tokenizer, cfg, step, tracker)
    except OutOfStep:
        raise
    except Exception as e:  # noqa: BLE001  (an eval problem must not cost the training run unless asked)
        error = e
    failures = _failures(error)
    if not failures:
        return
    if error is not None and not isinstance(error, PeerFailed):
        log.warning("eval at step %d failed on this rank (%d)", step, dist.rank(), exc_info=error)
    detail = "; ".join(f"rank {r}: {e}" for r, e in failures.items())
    message = f"eval at step {step} failed on rank(s) {list(failures)} ({detail})"
    if cfg.eval.fail_on_error:
        raise RuntimeError(f"{message}; set eval.fail_on_error=false to log it and keep training") from error
    if dist.is_main():
        log.warning("%s; training continues", message)
    tracker.event("eval_error", step=step, ranks=list(failures), error=detail)
