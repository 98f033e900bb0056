"""The peer for the benchmark: the same model, data and settings through `transformers.Trainer` + DeepSpeed.

Collators: `hf` feeds packed rows as they are (full, cpt) and pads SFT samples per batch to the longest,
as DataCollatorForSeq2Seq(padding="longest") does; `hf_flat` is the peer's best packing path,
DataCollatorWithFlattening (samples of a batch concatenated into one row, positions restarting).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import Dataset

from train.synthetic import SyntheticRows

IGNORE = -100
PEERS = ("hf", "hf_flat")


class _Items(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def items_for(rows: SyntheticRows, kind: str) -> list[dict]:
    """What the peer's dataset holds: SFT samples unpacked, otherwise the same packed rows we train on."""
    if kind == "sft":
        return [{"input_ids": ids.tolist(), "labels": labels.tolist()} for ids, labels in rows.samples]
    items = []
    for ids, pos, labels in zip(rows.input_ids, rows.position_ids, rows.labels, strict=True):
        item = {"input_ids": ids.tolist(), "labels": labels.tolist()}
        if kind == "cpt":  # the same document boundaries, so the peer does the same attention work
            item["position_ids"] = pos.tolist()
        items.append(item)
    return items


class PadToLongest:
    """Right-pad a batch to its longest sample (DataCollatorForSeq2Seq(padding='longest') behaviour)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(it["input_ids"]) for it in items)
        out = {
            k: np.full((len(items), width), v) for k, v in (("input_ids", self.pad_id), ("labels", IGNORE))
        }
        out["attention_mask"] = np.zeros((len(items), width), dtype=np.int64)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            out["input_ids"][i, :n], out["labels"][i, :n], out["attention_mask"][i, :n] = (
                it["input_ids"],
                it["labels"],
                1,
            )
        return {k: torch.from_numpy(v.astype(np.int64)) for k, v in out.items()}


class Recorded:
    """Wraps a collator and records each batch's (tokens computed, row length, non-pad tokens) in call order."""

    def __init__(self, collate):
        self.collate, self.shapes = collate, []

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.collate(items)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else ids.numel()
        self.shapes.append((ids.numel(), ids.shape[1], real))
        return batch


def _default_collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([it[k] for it in items]) for k in items[0]}


def _timer_callback(times: list[float]):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            times.append(time.perf_counter() - self.t0)

    return StepTimer()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_peer(
    peer: str, model, cfg, liger: bool, rows: SyntheticRows, kind: str, micro_batch: int, steps: int, out_dir
):
    """Train `steps` optimizer steps with HF Trainer; return (seconds per step, recorded batch shapes)."""
    from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

    config = model.config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    if peer == "hf_flat":
        collate = DataCollatorWithFlattening(return_position_ids=True)
    elif kind == "sft":
        collate = PadToLongest(pad)
    else:
        collate = _default_collate
    recorded, times = Recorded(collate), []
    t, o = cfg.train, cfg.optim
    ds = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage, "overlap_comm": cfg.deepspeed.overlap_comm},
    }
    if cfg.model.dtype == "bf16":  # the same micro-batch sums as ours
        ds["data_types"] = {"grad_accum_dtype": cfg.deepspeed.grad_accum_dtype}
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=steps,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=t.grad_accum_steps,
        learning_rate=o.lr,
        lr_scheduler_type="constant",
        max_grad_norm=o.grad_clip or 0.0,
        bf16=cfg.model.dtype == "bf16",
        optim="adamw_torch_fused" if o.fused else "adamw_torch",
        activation_checkpointing=cfg.model.activation_checkpointing != "none",  # it has no selective mode
        use_liger_kernel=liger,
        torch_compile=t.compile,
        deepspeed=ds,
        use_cpu=not torch.cuda.is_available(),
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=cfg.seed,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Items(items_for(rows, kind)),
        data_collator=recorded,
        callbacks=[_timer_callback(times)],
    )
    if not trainer.is_deepspeed_enabled:
        raise RuntimeError("the HF Trainer peer did not enable DeepSpeed; the comparison would be unfair")
    try:
        trainer.train()
    finally:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        # TrainingArguments leaves a process-wide ZeRO-3 flag that would make later model builds zero.Init ones
        unset_hf_deepspeed_config()
        # the Trainer never destroys its engine, whose hooks keep model and optimizer state alive (and in the
        # next peer's peak memory)
        if hasattr(trainer.model_wrapped, "destroy"):
            trainer.model_wrapped.destroy()
    return times, recorded.shapes
