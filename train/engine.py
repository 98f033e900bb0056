"""The DeepSpeed engine: its JSON generated from the typed config, the optimizer and the lr schedule."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from train import distributed as dist
from train.config import RunConfig
from train.errors import UserError

log = logging.getLogger(__name__)


def deepspeed_config(cfg: RunConfig, world_size: int) -> dict:
    """The full DeepSpeed JSON; no "auto" values, so what is printed is what runs."""
    ds, t = cfg.deepspeed, cfg.train
    zero: dict = {
        "stage": ds.zero_stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": ds.reduce_bucket_size,
        "allgather_bucket_size": ds.allgather_bucket_size,
    }
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    extra = {"data_types": {"grad_accum_dtype": ds.grad_accum_dtype}} if cfg.model.dtype == "bf16" else {}
    return {
        **extra,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum_steps,
        "train_batch_size": t.micro_batch_size * t.grad_accum_steps * world_size,
        "gradient_clipping": cfg.optim.grad_clip or 0.0,
        "bf16": {"enabled": cfg.model.dtype == "bf16"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def lr_lambda(cfg: RunConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of optim.lr after `step` optimizer steps (warmup, then cosine / wsd / constant)."""
    s, peak = cfg.schedule, cfg.optim.lr
    floor = s.min_lr / peak
    if s.warmup_steps > total_steps and dist.is_main():  # fine in a smoke test, a mistake at scale
        log.warning(
            "schedule.warmup_steps (%d) exceeds the run's %d steps: the lr never reaches optim.lr (%g) and %s "
            "never starts; the steps follow from train.* and the number of ranks",
            s.warmup_steps,
            total_steps,
            peak,
            "the decay" if s.name != "constant" else "the constant phase",
        )
    if s.name == "constant" and s.min_lr != 0 and dist.is_main():  # e.g. inherited from a cosine recipe
        log.warning("schedule.min_lr (%g) is unused: a constant schedule does not decay", s.min_lr)
    cfg.check_plan(total_steps)  # train() checks it before data preparation where the steps are known then

    def factor(step: int) -> float:
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.name == "constant":
            return 1.0
        if s.name == "cosine":
            progress = min(1.0, (step - s.warmup_steps) / max(1, total_steps - s.warmup_steps))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        decay_start = total_steps - s.decay_steps  # wsd: stable, then linear decay to min_lr
        if step < decay_start:
            return 1.0
        return 1.0 - (1 - floor) * min(1.0, (step - decay_start) / s.decay_steps)

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters only; no decay on 1-D tensors (norm weights, biases) as in HF Trainer."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    if not decay and not no_decay:
        raise UserError("the model has no trainable parameters: check the freeze / expansion settings")
    # "_decays" tags the groups: DeepSpeed drops empty ones, so their position says nothing
    return [
        {"params": decay, "weight_decay": weight_decay, "_decays": True},
        {"params": no_decay, "weight_decay": 0.0, "_decays": False},
    ]


def check_optimizer(cfg: RunConfig) -> None:
    """What the optimizer needs from the machine, before data preparation."""
    if cfg.optim.name == "fused_adam" and not torch.cuda.is_available():
        raise UserError("optim.name 'fused_adam' needs a CUDA GPU; use 'adamw_torch' on CPU")


def build_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = param_groups(model, o.weight_decay)
    kwargs = dict(lr=o.lr, betas=o.betas, eps=o.eps)
    if o.name == "adamw_torch":
        return torch.optim.AdamW(groups, fused=o.fused or None, **kwargs)
    check_optimizer(cfg)
    if o.name == "fused_adam":
        from deepspeed.ops.adam import FusedAdam

        try:  # DeepSpeed compiles the op here: no nvcc or ninja, or a CUDA mismatch, fails it
            return FusedAdam(groups, adam_w_mode=True, **kwargs)
        except (ImportError, RuntimeError, OSError) as e:
            raise UserError(
                f"optim.name 'fused_adam': DeepSpeed could not build its FusedAdam op ({type(e).__name__}: {e}); "
                "use optim.name 'adamw_torch' with optim.fused: true, torch's own fused kernel"
            ) from None
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)


def build_engine(cfg: RunConfig, model: torch.nn.Module, world_size: int, total_steps: int):
    """Wrap the model in a DeepSpeed engine with our optimizer and a LambdaLR schedule over `total_steps`."""
    import deepspeed

    optimizer = build_optimizer(cfg, model)
    schedule = lr_lambda(cfg, total_steps)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=deepspeed_config(cfg, world_size),
    )
    return engine


def apply_optim_settings(cfg: RunConfig, engine) -> None:
    """After a checkpoint load: the restored optimizer and scheduler carry the saved lr, betas, eps and
    weight decay. Set the config's, so a resume with --allow-config-change trains with what it says
    (an unchanged config sets the same values)."""
    o, scheduler = cfg.optim, engine.lr_scheduler
    scheduler.base_lrs = [o.lr] * len(scheduler.base_lrs)
    lr = o.lr * scheduler.lr_lambdas[0](scheduler.last_epoch)
    for i, group in enumerate(engine.optimizer.param_groups):
        group.update(lr=lr, initial_lr=o.lr, betas=o.betas, eps=o.eps)
        decays = group.setdefault("_decays", i == 0)  # untagged: a checkpoint of before the tags
        if o.weight_decay_mode != "lr_ratio":
            group["weight_decay"] = o.weight_decay if decays else 0.0
    scheduler._last_lr = [lr] * len(scheduler.base_lrs)


def apply_weight_decay_rule(cfg: RunConfig, engine) -> None:
    """Control-LLM rule: weight decay re-set to weight_decay x current lr before each optimizer step."""
    if cfg.optim.weight_decay_mode != "lr_ratio":
        return
    for group in engine.optimizer.param_groups:
        if group.setdefault("_decays", group.get("weight_decay", 0.0) > 0.0):
            group["weight_decay"] = cfg.optim.weight_decay * group["lr"]
