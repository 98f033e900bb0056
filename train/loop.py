"""The training loop: one optimizer step at a time, with checkpoints, tracking and clean stops.

Loss normalisation: every micro-batch's summed token loss is divided by the number of target
tokens in the whole optimizer step (all micro-batches, all ranks), so the update is the same
whatever the micro-batch / accumulation / rank split of the same data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import resource
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data_prep.mixture import make_sampler
from data_prep.shards import MixedRows, prepare
from train import checkpoint, evaluation
from train import distributed as dist
from train.chunked_loss import chunked_head
from train.config import RunConfig, config_hash, dump_yaml
from train.engine import (
    apply_optim_settings,
    apply_weight_decay_rule,
    build_engine,
    check_optimizer,
    deepspeed_config,
)
from train.errors import UserError
from train.faults import maybe_fault
from train.model import (
    PEAK_TFLOPS,
    added_tokens,
    build_for_training,
    build_tokenizer,
    check_hardware,
    check_positions,
    count_parameters,
    flops_per_token,
    peak_tflops,
)
from train.tracking import Tracker

log = logging.getLogger(__name__)


class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop finishes the step, saves and exits. A second Ctrl-C (SIGINT) kills;
    more SIGTERMs do not: launchers forward theirs to the workers (a `pkill` or `scancel` reaches both)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        """Give the signals back to whoever had them (matters when train() runs inside another program)."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt  # asked twice: stop now, without the save
        self.signum = self.signum or signum

    def agreed(self) -> bool:
        """True on every rank once any rank got a signal (the launcher may reach ranks at different times)."""
        return bool(dist.all_reduce_max(torch.tensor([int(self.signum is not None)])).item())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def real_tokens(position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, T] False on padding: the segments (positions restart at 0) that have no target at all. Every
    packed sample or document has targets; the pad filling a row is its own segment without any."""
    segment = (position_ids == 0).cumsum(1)
    targets = torch.zeros(labels.shape[0], labels.shape[1] + 1, dtype=torch.long)
    targets.scatter_add_(1, segment, (labels != -100).long())
    return targets.gather(1, segment) > 0


def as_one_row(batch: dict) -> dict:
    """The micro-batch's rows laid end to end as one row, for flash attention: transformers reads document
    boundaries from position_ids only in a single row (with several it attends across the documents of
    each row). Every row starts at position 0, so rows stay apart as well; a row's first label, never a
    target in its own row, is kept out of the targets of the row before it."""
    labels = batch["labels"].clone()
    labels[:, 0] = -100
    flat = {k: batch[k].reshape(1, -1) for k in ("input_ids", "position_ids")}
    return {**batch, **flat, "labels": labels.reshape(1, -1)}


def train_step(engine, data: MixedRows, rows: np.ndarray, cfg: RunConfig, live: int | None = None) -> dict:
    """One optimizer step over the global `rows` (all ranks' micro-batches); returns step metrics.
    Rows past the first `live` (the last step of train.epochs, past the end of the data) are computed
    without targets, so each row trains once while every rank keeps its micro-batch shape.

    `loss` is the token-mean cross-entropy; `source_targets` the step's target tokens per source.
    Expanded models add `divergence`, `loss_total` and the mean interpolation weight of each concat
    pair (`alpha/pair_k`).
    """
    micro, accum, world, rank = (
        cfg.train.micro_batch_size,
        cfg.train.grad_accum_steps,
        dist.world_size(),
        dist.rank(),
    )
    batches = [
        data.batch(rows[(k * world + rank) * micro : (k * world + rank + 1) * micro]) for k in range(accum)
    ]
    live = len(rows) if live is None else live
    for k, b in enumerate(batches):
        b["labels"][max(0, live - (k * world + rank) * micro) :] = -100
    local_targets = torch.zeros(len(data.source_labels), dtype=torch.float64)
    for b in batches:
        local_targets.index_add_(0, b["source"], (b["labels"][:, 1:] != -100).sum(1).double())
    source_targets = [int(t) for t in dist.all_reduce_sum(local_targets).tolist()]
    targets = sum(source_targets)
    # DeepSpeed divides by `accum` and averages over ranks; undo both so the step sums over all targets.
    scale = accum * world / max(targets, 1)
    # the divergence is a mean per micro-batch: over those holding live rows (all but the last step: all)
    live_micro = -(-live // micro)
    div_scale = accum * world / live_micro  # 1.0 (exact) unless the step ends an epoch
    lr = engine.get_lr()[0]
    apply_weight_decay_rule(cfg, engine)
    loss_sum = torch.zeros((), dtype=torch.float64)
    div_sum, alpha_sum = torch.zeros((), dtype=torch.float64), None
    device = engine.device
    head = chunked_head(engine.module)
    pairs = cfg.expansion is not None and cfg.expansion.type in ("concat", "hybrid")
    one_row = cfg.model.attn_implementation == "flash_attention_2"
    for k, batch in enumerate(batches):
        holds_live = (k * world + rank) * micro < live
        if one_row:
            batch = as_one_row(batch)
        labels = batch["labels"][:, 1:].to(device)
        inputs = dict(
            input_ids=batch["input_ids"].to(device),
            position_ids=batch["position_ids"].to(device),
            use_cache=False,
        )
        if pairs:  # divergence and alpha means over real tokens, not the padding of SFT rows
            real = real_tokens(batch["position_ids"], batch["labels"])
            if not real.all():
                inputs["token_mask"] = real.to(device)
        if head is None:
            out = engine(**inputs)
            logits = out.logits[:, :-1]
            ce = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="sum"
            )
        else:  # the head returns the summed cross-entropy in place of the logits
            with head.targets(F.pad(labels, (0, 1), value=-100)):
                out = engine(**inputs)
            ce = out.logits
        loss = ce * scale
        divergence = getattr(out, "divergence_loss", None)  # Control-LLM: already a mean, lambda applied
        if divergence is not None and holds_live:  # (one without live rows has no real tokens: 0)
            div_sum += divergence.detach().double().cpu()
            loss = loss + divergence * div_scale  # DeepSpeed's 1/accum and rank average make it the step mean
        if getattr(out, "alphas", None) is not None:  # every rank sums (and reduces below), live or not
            alphas = out.alphas.detach().double().cpu() * holds_live
            alpha_sum = alphas if alpha_sum is None else alpha_sum + alphas
        engine.backward(loss)
        engine.step()
        loss_sum += ce.detach().double().cpu()
    ce_mean = dist.all_reduce_sum(loss_sum.reshape(1)).item() / max(targets, 1)
    grad_norm = engine.get_global_grad_norm()
    metrics = {
        "loss": ce_mean,
        "lr": lr,
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "target_tokens": targets,
        "source_targets": source_targets,
        "tokens": len(rows) * cfg.data.seq_len,
    }
    if cfg.expansion is not None and cfg.expansion.type in ("concat", "hybrid"):
        metrics["divergence"] = dist.all_reduce_sum(div_sum.reshape(1)).item() / live_micro
        metrics["loss_total"] = metrics["loss"] + metrics["divergence"]
        if alpha_sum is not None:
            alpha_mean = dist.all_reduce_sum(alpha_sum) / live_micro
            metrics.update({f"alpha/pair_{k}": a for k, a in enumerate(alpha_mean.tolist())})
    return metrics


class LogWindow:
    """The steps since the last record, so a record with `log_every: N` covers all N of them: the loss is
    their token-weighted mean, divergence and alphas their step means, tokens/s their total over their time;
    lr and grad_norm are the last step's."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.steps, self.targets, self.loss_sum, self.tokens, self.seconds = 0, 0, 0.0, 0, 0.0
        self.sums: dict[str, float] = {}
        self.last: dict = {}

    def add(self, metrics: dict, seconds: float) -> None:
        self.steps += 1
        self.targets += metrics["target_tokens"]
        self.loss_sum += metrics["loss"] * metrics["target_tokens"]
        self.tokens += metrics["tokens"]
        self.seconds += seconds
        for k, v in metrics.items():
            if k == "divergence" or k.startswith("alpha/"):
                self.sums[k] = self.sums.get(k, 0.0) + v
        self.last = metrics

    def flush(self) -> dict:
        """The record of the window's steps; the window starts empty again."""
        record = {
            **self.last,
            **{k: v / self.steps for k, v in self.sums.items()},
            # one step: its own loss, not (loss x n) / n rounded
            "loss": self.loss_sum / max(self.targets, 1) if self.steps > 1 else self.last["loss"],
            "target_tokens": self.targets,
            "tokens": self.tokens,
            "steps": self.steps,
            "tokens_per_s": self.tokens / self.seconds,
            "step_seconds": self.seconds / self.steps,
        }
        if "divergence" in record:
            record["loss_total"] = record["loss"] + record["divergence"]
        self._reset()
        return record


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def write_run_files(cfg: RunConfig) -> None:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    (out / "config_hash").write_text(config_hash(cfg) + "\n")


def check_same_data_on_all_ranks(data: MixedRows) -> dict[str, dict]:
    """The data's summaries, refused on every rank alike when the ranks' shards differ (node-local caches
    built from other inputs, e.g. an unpinned hub dataset that changed between the nodes' builds)."""
    summaries = data.summaries()
    digest = int(hashlib.sha256(json.dumps(summaries, sort_keys=True).encode()).hexdigest()[:15], 16)
    extremes = dist.all_reduce_max(torch.tensor([digest, -digest], dtype=torch.int64))
    if extremes[0] != -extremes[1]:
        raise UserError(
            "the ranks read different prepared data (rows of node-local caches built from other inputs?); "
            f"this rank's shards: {', '.join(str(s.folder) for s in data.shards)}. Rebuild them from the same inputs"
        )
    return summaries


def train(
    cfg: RunConfig,
    resume: str | None = None,
    allow_config_change: bool = False,
    allow_data_change: bool = False,
) -> None:
    """Run (or resume) the training described by `cfg`; the flags let a resume past a changed config or
    changed prepared data."""
    folder = checkpoint.find_resume(cfg, resume)  # before any collective: a refusal stops every rank alike
    if cfg.checkpoint.export_at_end:  # fail now, not after the training
        checkpoint.check_export_folder(
            Path(cfg.output_dir) / "export", overwrite=True, fix="set checkpoint.export_at_end: false"
        )
    if cfg.eval.suites and not Path(cfg.eval.data_dir).is_dir():
        raise UserError(
            f"eval.data_dir {cfg.eval.data_dir} is not a folder (the benchmark files, docs/eval.md)"
        )
    # everything the config alone decides fails before data preparation, which can take hours
    shape = build_for_training(cfg, meta=True)  # the model's settings (LoRA targets, overrides)
    check_positions(cfg, shape.config)
    check_hardware(cfg.model)  # and the GPU-only ones
    check_optimizer(cfg)
    if cfg.train.epochs is None:  # else the run's length needs the packed rows
        cfg.check_plan(cfg.total_steps())
    dist.init()
    checkpoint.check_shared_output_dir(cfg, folder)
    if folder is not None:
        saved = checkpoint.check_complete(folder)
        checkpoint.check_compatible(cfg, saved, folder, allow_config_change)
    seed_everything(cfg.seed)
    tokenizer = build_tokenizer(cfg.model)
    if len(tokenizer) > shape.config.vocab_size:
        raise UserError(
            f"the tokenizer has {len(tokenizer)} tokens, the model's vocabulary only {shape.config.vocab_size}"
        )
    del shape
    data = prepare(cfg.data, tokenizer)
    model = build_for_training(cfg)
    counts = count_parameters(model)
    flops_token = flops_per_token(model, cfg.data.seq_len)
    total_steps = cfg.total_steps(len(data))
    epoch_rows = None
    if cfg.train.epochs is not None:
        epoch_rows = cfg.epoch_rows(len(data))
        log.info(
            "train.epochs=%s over %d packed rows: %d steps; the last trains %d of its %d rows",
            cfg.train.epochs,
            len(data),
            total_steps,
            epoch_rows - (total_steps - 1) * cfg.rows_per_step,
            cfg.rows_per_step,
        )
    engine = build_engine(cfg, model, dist.world_size(), total_steps)
    sampler = make_sampler(data, cfg.data, cfg.seed)
    labels = data.source_labels
    state = {
        "step": 0,
        "consumed_rows": 0,
        "tokens": 0,
        "source_rows": dict.fromkeys(labels, 0),
        "source_target_tokens": dict.fromkeys(labels, 0),
        "data": check_same_data_on_all_ranks(data),
        "added_tokens": added_tokens(model),
    }
    if folder is not None:
        checkpoint.check_same_data(saved, state["data"], folder, allow_data_change)
        checkpoint.check_same_added_tokens(saved, state["added_tokens"], folder)
        if saved["step"] > total_steps:  # before loading: nothing would train
            raise UserError(
                f"{folder} is at step {saved['step']}, past this config's {total_steps} steps: raise the budget "
                "(train.max_steps / max_tokens / epochs), or export the checkpoint (launch/export.py)"
            )
        saved = checkpoint.load(engine, folder)
        apply_optim_settings(cfg, engine)
        for k in ("step", "consumed_rows", "tokens"):
            state[k] = saved[k]
        for k in ("source_rows", "source_target_tokens"):  # a source added since starts at 0
            state[k].update(saved[k])
        if dist.is_main():
            checkpoint.set_aside_newer(Path(cfg.output_dir) / "checkpoints", folder, state["step"])
        log.info("resumed from %s at step %d", folder, state["step"])
    if dist.is_main():
        write_run_files(cfg)
        log.info("parameters: %s", counts)
    extra = {"params_total": counts.total, "params_trainable": counts.trainable}
    tracker = Tracker(cfg, extra, fresh=folder is None)
    if folder is not None:
        tracker.event("resume", step=state["step"], checkpoint=str(folder))
    if folder is not None and evaluation.pending(cfg, state["step"]):  # a stop at its step skipped it
        evaluation.run(engine, tokenizer, cfg, state["step"], tracker)
    stop = StopRequest()
    every = cfg.checkpoint.every_steps
    world = dist.world_size()
    rows_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * world
    peak = cfg.train.peak_tflops or peak_tflops(cfg.model.dtype)
    saved_step = state["step"] if folder is not None else None
    window = LogWindow()
    engine.train()
    while state["step"] < total_steps:
        t0 = time.perf_counter()
        rows = sampler.rows(state["consumed_rows"], rows_per_step)
        live = (
            rows_per_step if epoch_rows is None else min(rows_per_step, epoch_rows - state["consumed_rows"])
        )
        metrics = train_step(engine, data, rows, cfg, live)
        seconds = time.perf_counter() - t0
        state["step"] += 1
        state["consumed_rows"] += rows_per_step
        state["tokens"] += metrics["tokens"]
        for label, n in zip(
            labels, np.bincount(data.source_of(rows[:live]), minlength=len(labels)), strict=True
        ):
            state["source_rows"][label] += int(n)
        for label, n in zip(labels, metrics.pop("source_targets"), strict=True):
            state["source_target_tokens"][label] += n
        step = state["step"]
        window.add(metrics, seconds)
        maybe_fault("sigkill", step, dist.rank())
        maybe_fault("sigterm", step, dist.rank())
        maybe_fault("user_error", step, dist.rank())
        stopping = stop.agreed()
        if step % cfg.train.log_every == 0 or step == total_steps or stopping:
            record = window.flush()
            record.update(
                tokens_seen=state["tokens"],
                peak_mem_gb=peak_memory_gb(),
                mfu=record["tokens_per_s"] * flops_token / (peak * 1e12 * world) if peak else None,
            )
            if len(labels) > 1:  # the mixture as trained: cumulative target tokens per source
                record.update({f"source_tokens/{k}": v for k, v in state["source_target_tokens"].items()})
            tracker.log(step, record)
            if dist.is_main():
                log.info(
                    "step %d/%d loss %.4f lr %.3g grad_norm %s tok/s %.0f",
                    step,
                    total_steps,
                    record["loss"],
                    record["lr"],
                    "n/a" if record["grad_norm"] is None else f"{record['grad_norm']:.3f}",  # ZeRO-0 fp32
                    record["tokens_per_s"],
                )
        if stopping or step == total_steps or (every and step % every == 0):
            checkpoint.save(engine, cfg, step, state)
            saved_step = step
        if evaluation.due(cfg, step, saved_step == step) and not stopping:
            evaluation.run(engine, tokenizer, cfg, step, tracker)
        if stopping:
            tracker.event("stop", step=step, signal=stop.signum)
            log.info("stopped by signal after step %d; checkpoint saved", step)
            break
    if saved_step != state["step"]:
        checkpoint.save(engine, cfg, state["step"], state)
    stop.restore()
    tracker.finish()
    dist.barrier()
    if cfg.checkpoint.export_at_end and state["step"] == total_steps:
        # Rank 0 exports alone (a 70B export outlasts the process group's 10-minute timeout): the others wait
        # without it. An export error exits rank 0 at once, and the launcher stops the others.
        if dist.is_main():
            ckpt = Path(cfg.output_dir) / "checkpoints" / checkpoint.tag_for(state["step"])
            log.info(
                "exported %s", checkpoint.export_hf(ckpt, Path(cfg.output_dir) / "export", overwrite=True)
            )
        dist.wait_for_main()


def dry_run(cfg: RunConfig) -> str:
    """The resolved config, parameter counts (built on the meta device) and the DeepSpeed JSON."""
    import json

    model = build_for_training(cfg, meta=True)
    check_positions(cfg, model.config)  # what a run refuses before its data, a dry run refuses too
    world = dist.world_size()
    if cfg.train.epochs is None:
        cfg.check_plan(cfg.total_steps())
        steps = f"{cfg.total_steps():,}"
    else:
        steps = f"train.epochs={cfg.train.epochs} x packed rows / {cfg.rows_per_step} rows per step (after data preparation)"
    lines = [
        "# resolved config",
        dump_yaml(cfg),
        f"# config hash: {config_hash(cfg)}",
        f"# parameters: {count_parameters(model)}",
        compute_line(cfg, flops_per_token(model, cfg.data.seq_len)),
        f"# world size: {world}; tokens per optimizer step: {cfg.tokens_per_step:,}; steps: {steps}",
        "# DeepSpeed config",
        json.dumps(deepspeed_config(cfg, world), indent=2),
    ]
    return "\n".join(lines)


def compute_line(cfg: RunConfig, flops_token: float) -> str:
    """The run's model FLOPs and their floor in H100-hours (at 100% MFU: divide by the measured MFU)."""
    line = f"# model FLOPs per token: {flops_token / 1e9:.1f} G (docs/BENCHMARKS.md)"
    if cfg.train.epochs is not None:
        return line + "; the run's total follows from the packed row count"
    tokens = cfg.total_steps() * cfg.tokens_per_step
    total = flops_token * tokens
    hours = total / (PEAK_TFLOPS["H100"] * 1e12) / 3600
    return line + f"; {tokens:,} tokens: {total:.3g} FLOPs = {hours:,.0f} H100-hours at 100% MFU"


def setup_logging() -> None:
    level = logging.INFO if dist.is_main() else logging.WARNING
    logging.basicConfig(
        level=level, format=f"[%(asctime)s rank{dist.rank()}] %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
