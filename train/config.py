"""Typed run configuration: the recipe schema, its cross-key checks, loading and hashing.

Every section is a strict pydantic model (train/yaml_config.py) that forbids unknown keys, so a typo fails at
start-up with the key's dotted path and the nearest valid name.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from train.errors import UserError
from train.yaml_config import Section, apply_overrides, describe_errors, load_yaml_tree


def _stored(info: ValidationInfo) -> bool:
    """Validating a checkpoint's own config (`validate(..., stored=True)`), not a new run's."""
    return bool((info.context or {}).get("stored"))


class ModelConfig(Section):
    preset: str | None = None
    """Architecture preset (llama3_tiny, llama3_2_1b, llama3_8b, llama3_1_8b): random init, or the shape for
    --dry-run."""
    name_or_path: str | None = None
    """Hub id or local folder of pretrained weights (from_pretrained)."""
    revision: str | None = None
    """Hub revision of name_or_path (a commit hash pins it; a branch or tag moves), also used for the tokenizer
    when it comes from name_or_path; unset: the default branch as it is at download."""
    tokenizer: str | None = None
    """Tokenizer hub id or folder; defaults to name_or_path, or the bundled tiny one for llama3_tiny."""
    chat_template: Literal["llama3", "tokenizer"] = "llama3"
    """How SFT conversations (and exports) are rendered: llama3, the reference's Llama-3 format (BOS once, then
    header, content, <|eot_id|> per turn; data_prep/assets/llama3_chat_template.jinja), whatever template the
    tokenizer ships (a base Llama-3 has none; Llama-3.1's adds a dated system turn); tokenizer, its own (the
    one choice for a tokenizer without the Llama-3 special tokens, which llama3 refuses at start-up)."""
    dtype: Literal["bf16", "fp32"]
    attn_implementation: Literal["sdpa", "flash_attention_2", "flex_attention", "eager"] = "sdpa"
    """All keep packed documents apart (transformers reads the boundaries from position_ids): sdpa with a
    dense per-document mask, flash_attention_2 varlen (needs flash-attn; a micro-batch trains as one row of
    micro_batch_size x seq_len tokens), flex_attention with a block mask
    that skips the masked blocks (compiled on first use)."""
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    """Recompute activations in the backward: none; full (each block keeps only its input); selective
    (blocks keep their matmul and attention outputs, norms and activation functions are recomputed).
    true / false mean full / none."""
    liger: bool = False
    """Liger's Triton kernels (RMSNorm, SwiGLU MLP) swapped into this model's modules at build; CUDA only."""
    trust_remote_code: bool = False
    overrides: dict[str, int | float | str | bool | dict[str, int | float | str | None]] = Field(
        default_factory=dict
    )
    """Architecture fields changed on top of the preset (e.g. num_hidden_layers; rope_scaling takes a mapping)."""
    add_tokens: str | None = None
    """Vocabulary expansion: a text file with one new token per line; new embedding rows start as the mean
    of the token's pieces under the original tokenizer."""

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _bool_means_full(cls, value: Any) -> Any:
        return {True: "full", False: "none"}[value] if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _needs_weights_or_shape(self) -> ModelConfig:
        if self.preset is None and self.name_or_path is None:
            raise ValueError(
                "set model.preset (random init from an architecture) or model.name_or_path (weights)"
            )
        if self.revision is not None and self.name_or_path is None:
            raise ValueError(
                "model.revision pins the hub weights of model.name_or_path: set it or drop revision"
            )
        return self


class PeftConfig(Section):
    method: Literal["lora"] = "lora"
    r: int = Field(gt=0)
    alpha: float = Field(gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1)
    """Modules to adapt as peft matches them (a name or dotted suffix), e.g. [q_proj, v_proj] (the Control-LLM
    paper's LoRA baseline); [all-linear] adapts every linear layer but the head."""
    merge_on_export: bool = True
    """Also write the adapters merged into a full model (export/); the peft adapter goes to export/adapter."""


class DivergenceSection(Section):
    type: Literal["cosine", "mse"] = "cosine"
    weight: float = Field(default=1.0, ge=0)
    """lambda; 0 turns the divergence loss off."""
    detach_pretrained: bool = False
    """The reference does not detach the pretrained branch."""


class ExpansionSection(Section):
    """Control-LLM expansion (see reference/control_llm.md); `partial` is the unfreeze-in-place baseline."""

    type: Literal["concat", "stack", "hybrid", "partial"]
    method: Literal["lerp", "dlerp", "dlerpin"] = "lerp"
    num_exp_layers: int = Field(gt=0)
    """Blocks to expand, every (layers / num_exp_layers)-th one: a divisor of the layer count, or at least the
    count (every layer); checked when the model is built."""
    interpolation_factor: float = 0.0
    """Initial logit of alpha (0 -> alpha 0.5); for dlerp / dlerpin the initial gate bias."""
    freeze_interpolation: bool = False
    """lerp: alpha stays sigmoid(interpolation_factor). dlerp / dlerpin: only the gate bias is frozen, the gate
    weight trains (as the reference)."""
    divergence: DivergenceSection = Field(default_factory=DivergenceSection)

    @model_validator(mode="after")
    def _interpolation_needs_two_branches(self, info: ValidationInfo) -> ExpansionSection:
        if self.type in ("concat", "hybrid") or _stored(info):
            return self
        unused = [
            f"expansion.{key}"
            for key, default in (
                ("method", "lerp"),
                ("interpolation_factor", 0.0),
                ("freeze_interpolation", False),
            )
            if getattr(self, key) != default
        ]
        unused += ["expansion.divergence"] if self.divergence != DivergenceSection() else []
        if unused:
            raise ValueError(
                f"{', '.join(unused)} set the interpolation of a concat or hybrid expansion; a {self.type} "
                "expansion has none: drop them"
            )
        return self


# adapter options -> the one adapter that reads each
_OPTION_READER = {
    "text_key": "text",
    "messages_key": "messages",
    "alpaca_input": "alpaca",
    "langs": "oasst_top1",
}


class SourceConfig(Section):
    name: str | None = None
    """A dataset from the registry (data_prep/registry.py: alpaca_zh, oasst2_en_top1, syne_web_cn, ...)."""
    path: str | None = None
    """Local file, glob or folder (jsonl, json, parquet, csv, arrow); overrides the registry's hub id."""
    hub_id: str | None = None
    """Hugging Face dataset id (loaded with datasets.load_dataset)."""
    data_files: str | None = None
    """Hub only: a glob of files inside the dataset repo."""
    revision: str | None = None
    """Hub only: the dataset commit (or tag) to read. Pin it: a shard built from the hub is reused while
    the source's settings are unchanged, even if the dataset changed upstream."""
    split: str | None = None
    """Hub split, or the split of a local DatasetDict `save_to_disk` folder ("a+b" for several; default:
    the registry's, else train)."""
    adapter: str | None = None
    """Raw schema: text, alpaca, messages, sharegpt, oasst_top1 (default: the registry's, else text)."""
    text_key: str = "text"
    messages_key: str | None = None
    """messages adapter: the list's key (default: the first of messages / dialog / conversation)."""
    alpaca_input: Literal["system", "concat"] = "system"
    """Non-empty alpaca input: instruction as system turn and input as user (the reference), or
    instruction + newline + input as the user turn (LLaMA-Factory)."""
    langs: list[str] | None = None
    """oasst_top1: root-prompt languages to keep (default: the registry's)."""
    label: str | None = None
    """The name stages' weights use (default: name, else path, else hub_id)."""
    weight: float | None = Field(default=None, gt=0)
    """Share of training tokens (relative to the other sources); unset on all: natural shares."""

    @model_validator(mode="after")
    def _one_location(self, info: ValidationInfo) -> SourceConfig:
        from data_prep.adapters import ADAPTERS, suggest
        from data_prep.registry import DATASETS

        if self.name is not None and self.name not in DATASETS:
            raise ValueError(
                f"data source name '{self.name}' is not in the registry.{suggest(self.name, DATASETS)}"
            )
        if self.adapter is not None and self.adapter not in ADAPTERS:
            raise ValueError(
                f"data source adapter '{self.adapter}' is unknown.{suggest(self.adapter, ADAPTERS)} "
                f"Adapters: {', '.join(ADAPTERS)}"
            )
        if self.path is not None and self.hub_id is not None:
            raise ValueError("a data source takes 'path' or 'hub_id', not both")
        if self.path is not None and self.revision is not None:
            raise ValueError("data source 'revision' pins a hub dataset; a local 'path' has none")
        if self.path is not None and self.data_files is not None:
            raise ValueError(
                "data source 'data_files' selects files of a hub dataset; with a local 'path', put the glob "
                f"in the path (path: {self.path}/{self.data_files})"
            )
        if self.name is None and self.path is None and self.hub_id is None:
            raise ValueError("each data source needs a registry 'name', a 'path' or a 'hub_id'")
        adapter = self.adapter or (DATASETS[self.name].adapter if self.name else "text")
        # an option the source's adapter never reads would look as if it took effect
        unread = {
            key: reader
            for key, reader in _OPTION_READER.items()
            if getattr(self, key) != type(self).model_fields[key].default and adapter != reader
        }
        if unread and not _stored(info):  # a checkpoint's config trained as it was
            readers = ", ".join(f"{key} by {reader}" for key, reader in unread.items())
            raise ValueError(
                f"data source {', '.join(unread)} is not read by its adapter '{adapter}' (only {readers}): "
                "drop it or set the source's adapter"
            )
        if self.label is None:
            self.label = self.name or self.path or self.hub_id
        return self


class StageConfig(Section):
    tokens: int | None = Field(default=None, gt=0)
    """Token budget of the stage in real tokens (not padding); only the last may leave it unset. The last stage
    keeps its mixture past its budget if training runs longer."""
    weights: dict[str, float] = Field(min_length=1)
    """Source label -> share of the stage's tokens (relative; missing sources get none)."""


class DataConfig(Section):
    sources: list[SourceConfig] = Field(min_length=1)
    seq_len: int = Field(gt=1)
    shuffle: bool = True
    """False keeps each source's stored order (curriculum order)."""
    cache_dir: str = ".cache/continualm"
    """Where tokenized, packed shards are cached by fingerprint."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad rows: stop with file and row, or skip them (counted, first reasons logged)."""
    sft_packing: Literal["best_fit", "pad"] = "best_fit"
    overlong: Literal["drop", "truncate", "split"] = "drop"
    """SFT samples longer than seq_len."""
    train_on_prompt: bool = False
    """"Mixed training": loss on every chat token, not only the assistant's."""
    cpt_boundaries: Literal["documents", "reference"] = "documents"
    """CPT packing: BOS + text + EOS per document with attention kept inside documents, or Control-LLM's
    reference (BOS + text, no EOS, attention across the whole row) for exact reproduction."""
    num_proc: int = Field(default=1, gt=0)
    """Worker processes that tokenize (capped at the CPU count); shards are the same for any value."""
    stages: list[StageConfig] = Field(default_factory=list)
    """Mixture stages in order, each with its own token weights and budget."""

    @model_validator(mode="after")
    def _mixture(self) -> DataConfig:
        labels = [s.label for s in self.sources]
        if len(set(labels)) != len(labels):
            raise ValueError(
                f"data.sources labels must be unique, got {labels}: set 'label' on the duplicates"
            )
        weights = [s.weight is not None for s in self.sources]
        if self.stages and any(weights):
            raise ValueError("with data.stages, give the weights per stage, not data.sources[].weight")
        if any(weights) and not all(weights):
            raise ValueError("set data.sources[].weight on every source or on none")
        for i, stage in enumerate(self.stages):
            if any(w <= 0 for w in stage.weights.values()):
                raise ValueError(
                    f"data.stages.{i}.weights must be positive (leave a source out to give it none)"
                )
            if stage.tokens is None and i != len(self.stages) - 1:
                raise ValueError(
                    f"data.stages.{i}.tokens is required (only the last stage may be open-ended)"
                )
            for key in stage.weights:
                if key not in labels:
                    close = difflib.get_close_matches(key, labels, n=1)
                    hint = f" Did you mean '{close[0]}'?" if close else ""
                    raise ValueError(
                        f"data.stages.{i}.weights: unknown source '{key}'.{hint} Sources: {labels}"
                    )
        return self


class TrainConfig(Section):
    micro_batch_size: int = Field(gt=0)
    grad_accum_steps: int = Field(default=1, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)
    """Row tokens to train on (steps x rows per step x seq_len, the padding of SFT rows included; stage
    budgets count real tokens)."""
    epochs: float | None = Field(default=None, gt=0)
    """Passes over the packed rows (natural proportions only); steps = ceil(epochs x rows / rows per step),
    the last step's rows past epochs x rows computed without targets (each row trains once a pass)."""
    log_every: int = Field(default=1, gt=0)
    """Log every N steps (and the last, and at a stop): each record covers the steps since the previous one
    (`steps`): loss their token-weighted mean, divergence and alpha/* their step means, tokens_per_s and MFU
    over their time, lr and grad_norm the last step's; `tokens_seen` and `source_tokens/*` are cumulative."""
    peak_tflops: float | None = None
    """Per-device peak bf16 TFLOP/s for MFU; detected for known GPUs when unset."""
    compile: bool = False
    """torch.compile each decoder block (in place; the first steps pay the compilation)."""
    loss_chunk_tokens: int | None = Field(default=None, gt=0)
    """lm_head + cross-entropy this many tokens at a time, so a micro-batch's logits are never materialised
    (the GPU recipes use 4096 with Llama-3's 128K vocabulary); None: the plain head and loss."""

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        budgets = [k for k in ("max_steps", "max_tokens", "epochs") if getattr(self, k) is not None]
        if len(budgets) != 1:
            given = f" (got {', '.join(f'train.{k}' for k in budgets)})" if budgets else ""
            raise ValueError(
                f"set exactly one of train.max_steps, train.max_tokens or train.epochs{given}; "
                "a child recipe replacing its parent's budget sets the parent's key to null"
            )
        return self


class OptimConfig(Section):
    name: Literal["adamw_torch", "fused_adam", "cpu_adam"] = "adamw_torch"
    lr: float = Field(gt=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    weight_decay_mode: Literal["fixed", "lr_ratio"] = "fixed"
    """lr_ratio re-sets weight decay to weight_decay * current lr each step (the Control-LLM rule)."""
    grad_clip: float | None = Field(default=1.0, gt=0)
    fused: bool = False
    """adamw_torch only: torch's fused AdamW kernel (one kernel for all parameters)."""


class ScheduleConfig(Section):
    name: Literal["cosine", "wsd", "constant"]
    warmup_steps: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)
    """The decay's end, reached at step total_steps, one past the last trained step (as HF's schedules count):
    the last step trains at one decay step above it (cosine: a hair; wsd: (lr - min_lr) / decay_steps)."""
    decay_steps: int | None = Field(default=None, gt=0)
    """wsd only: length of the final decay phase."""

    @model_validator(mode="after")
    def _wsd_needs_decay(self) -> ScheduleConfig:
        if self.name == "wsd" and self.decay_steps is None:
            raise ValueError("schedule.name 'wsd' needs schedule.decay_steps (length of the decay phase)")
        if self.name != "wsd" and self.decay_steps is not None:
            raise ValueError("schedule.decay_steps only applies to schedule.name 'wsd'")
        return self


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2, 3]
    offload_optimizer: bool = False
    offload_params: bool = False
    overlap_comm: bool = True
    reduce_bucket_size: int = Field(default=500_000_000, gt=0)
    allgather_bucket_size: int = Field(default=500_000_000, gt=0)
    grad_accum_dtype: Literal["fp32", "bf16"] = "fp32"
    """What the gradients of a step's micro-batches are summed in when model.dtype is bf16 (fp32 weights sum in
    fp32): fp32 as Megatron and torchtitan do; bf16 (DeepSpeed's default, and ours before this key) loses
    precision over many micro-batches."""


class CheckpointConfig(Section):
    every_steps: int | None = Field(default=None, gt=0)
    keep_last: int = Field(default=2, gt=0)
    export_at_end: bool = False
    """Also write a Hugging Face folder to <output_dir>/export when training ends."""


class TrackingConfig(Section):
    backend: Literal["wandb", "none"] = "wandb"
    project: str = "continualm"
    run_name: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)
    mode: Literal["auto", "online", "offline"] = "auto"
    """auto: online when a wandb API key is configured, otherwise offline."""


class EvalConfig(Section):
    suites: list[str] = Field(default_factory=list)
    """Suites (control_llm_zh, swallow_ja, swallow_en, mera, ...) or single tasks of eval_hooks/tasks."""
    every_steps: int | None = Field(default=None, gt=0)
    at_checkpoints: bool = False
    limit: int | None = Field(default=None, gt=0)
    data_dir: str | None = None
    max_gen_tokens: int | None = Field(default=None, gt=0)
    """Cap on generated tokens for generation tasks (None: each task's own limit)."""
    batch_size: int = Field(default=8, gt=0)
    """Requests per model call (log-likelihood and generation); more is faster on a GPU with memory left."""
    fail_on_error: bool = False
    """On any rank's eval failure, every rank raises; else rank 0 logs it and an `eval_error` event, all train on.
    A failure inside generation, or inside a ZeRO-3 forward, stops the run either way (docs/eval.md)."""

    @field_validator("suites")
    @classmethod
    def _known(cls, suites: list[str], info: ValidationInfo) -> list[str]:
        if _stored(info):
            return suites
        from eval_hooks import task_names

        known = task_names()
        for name in suites:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown suite or task {name!r}.{hint} (eval_hooks/tasks lists them)")
        return suites


class RunConfig(Section):
    output_dir: str
    seed: int = Field(default=42, ge=0)
    model: ModelConfig
    peft: PeftConfig | None = None
    expansion: ExpansionSection | None = None
    data: DataConfig
    train: TrainConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    deepspeed: DeepSpeedConfig
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _tracking_none(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("tracking") in ("none", None) and "tracking" in data:
            data = {**data, "tracking": {"backend": "none"}}
        return data

    @model_validator(mode="after")
    def _combinations(self, info: ValidationInfo) -> RunConfig:
        ds, opt = self.deepspeed, self.optim
        if ds.offload_params and ds.zero_stage != 3:
            raise ValueError("deepspeed.offload_params needs deepspeed.zero_stage: 3")
        if ds.offload_optimizer and ds.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage 1, 2 or 3")
        if self.model.dtype == "bf16" and ds.zero_stage == 0 and not _stored(info):
            # DeepSpeed's ZeRO-0 bf16 optimizer steps once with zero gradients while it is built: Adam's bias
            # correction then starts a step late, and the weights take one decay step at the peak lr
            raise ValueError(
                "model.dtype bf16 needs deepspeed.zero_stage 1, 2 or 3 (ZeRO-0 bf16 shifts Adam by one step): "
                "set deepspeed.zero_stage: 1, which holds no more memory"
            )
        if (
            self.model.dtype == "bf16"
            and ds.zero_stage == 1
            and ds.grad_accum_dtype == "fp32"
            and not _stored(info)
        ):
            raise ValueError(
                "deepspeed.zero_stage 1 with model.dtype bf16 and deepspeed.grad_accum_dtype fp32 runs DeepSpeed's "
                "BF16_Optimizer, whose checkpoints its zero_to_fp32 cannot export: use deepspeed.zero_stage: 2 "
                "(no more memory; gradients partitioned too), or set deepspeed.grad_accum_dtype: bf16"
            )
        if self.model.dtype == "fp32" and ds.grad_accum_dtype == "bf16":
            raise ValueError("deepspeed.grad_accum_dtype bf16 needs model.dtype bf16: set it to fp32")
        if opt.name == "cpu_adam" and not ds.offload_optimizer:
            raise ValueError("optim.name 'cpu_adam' runs on the CPU: set deepspeed.offload_optimizer: true")
        if ds.offload_optimizer and opt.name != "cpu_adam":  # DeepSpeed refuses GPU optimizers there
            raise ValueError(
                "deepspeed.offload_optimizer keeps optimizer state on the CPU: use optim.name 'cpu_adam'"
            )
        if opt.fused and opt.name != "adamw_torch":
            raise ValueError(
                f"optim.fused applies to optim.name 'adamw_torch' (got '{opt.name}'): set optim.fused: false"
            )
        if self.model.add_tokens and (self.peft is not None or self.expansion is not None):
            raise ValueError(
                "model.add_tokens needs trainable embeddings: it cannot be combined with peft or expansion"
            )
        if self.peft is not None and self.train.loss_chunk_tokens is not None and not _stored(info):
            # the chunked head computes from the base weight alone: the adapter would never train
            if any(m.split(".")[-1] == "lm_head" for m in self.peft.target_modules):
                raise ValueError(
                    "peft.target_modules adapts lm_head, which train.loss_chunk_tokens replaces by a chunked "
                    "head of the base weight: drop lm_head from the targets or set train.loss_chunk_tokens: null"
                )
        if self.peft is not None and self.expansion is not None:
            raise ValueError("peft and expansion cannot be combined: choose LoRA or Control-LLM expansion")
        if self.schedule.min_lr > opt.lr:
            raise ValueError("schedule.min_lr is larger than optim.lr")
        if self.eval.suites and self.eval.every_steps is None and not self.eval.at_checkpoints:
            raise ValueError("eval.suites is set but never runs: set eval.every_steps or eval.at_checkpoints")
        if self.eval.suites and self.eval.data_dir is None:
            raise ValueError("eval.suites needs eval.data_dir (the benchmark files, see docs/eval.md)")
        if self.train.epochs is not None and (self.data.stages or any(s.weight for s in self.data.sources)):
            raise ValueError(
                "train.epochs counts passes over the data in its natural proportions; with data.stages or "
                "data.sources[].weight the mixture decides what is seen: give train.max_tokens instead"
            )
        return self

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one optimizer step for the current world size (set by the launcher)."""
        return self.rows_per_step * self.data.seq_len

    @property
    def rows_per_step(self) -> int:
        """Packed rows in one optimizer step over all ranks (for the current world size)."""
        from train.distributed import world_size

        return self.train.micro_batch_size * self.train.grad_accum_steps * world_size()

    def total_steps(self, num_rows: int | None = None) -> int:
        """Optimizer steps in the run: train.max_steps, or train.max_tokens or train.epochs (over
        `num_rows` packed rows) rounded up to whole steps."""
        if self.train.max_steps is not None:
            return self.train.max_steps
        if self.train.max_tokens is not None:
            return -(-self.train.max_tokens // self.tokens_per_step)
        return -(-self.epoch_rows(num_rows) // self.rows_per_step)

    def check_plan(self, total_steps: int) -> None:
        """Refuse settings the run's length makes impossible (as soon as it is known: before data preparation
        unless train.epochs needs the packed rows)."""
        s, e = self.schedule, self.eval
        if s.name == "wsd" and s.warmup_steps + s.decay_steps > total_steps:
            raise UserError(
                f"schedule.warmup_steps ({s.warmup_steps}) + schedule.decay_steps ({s.decay_steps}) exceed the "
                f"run's {total_steps} steps: the decay would start inside the warmup; shorten them"
            )
        if e.suites and e.every_steps is not None and e.every_steps > total_steps and not e.at_checkpoints:
            raise UserError(
                f"eval.every_steps ({e.every_steps}) is past the run's {total_steps} steps and eval.at_checkpoints "
                "is false: no eval would run; lower eval.every_steps or set eval.at_checkpoints: true"
            )
        budget = total_steps * self.tokens_per_step  # stage budgets count real tokens: at most this many
        before = 0
        for i, stage in enumerate(self.data.stages):
            if before >= budget:
                raise UserError(
                    f"data.stages.{i} never trains: the stages before it take {before} tokens, the run at most "
                    f"{budget} ({total_steps} steps x {self.tokens_per_step} tokens); shorten "
                    f"data.stages.{i - 1}.tokens or raise the train.* budget"
                )
            before += stage.tokens or 0

    def epoch_rows(self, num_rows: int | None) -> int:
        """The rows train.epochs trains, each once per pass: the last step masks the rows past them."""
        if num_rows is None:
            raise ValueError("train.epochs needs the packed row count: prepare the data first")
        return math.ceil(Fraction(repr(self.train.epochs)) * num_rows)  # exact: 0.1 x 30 rows is 3, not 4


# Keys that do not change what is trained: resuming with a different value is allowed.
NON_TRAINING_KEYS = (
    "output_dir",
    "tracking",
    "checkpoint",
    "eval",
    "train.log_every",
    "train.peak_tflops",
    "data.num_proc",
    "data.cache_dir",
    # speed and memory switches: the same computation, other kernels or recomputation
    "model.activation_checkpointing",
    "model.liger",
    "train.compile",
    "train.loss_chunk_tokens",
    "optim.fused",
)


# Source keys added after checkpoints existed: left out of the hash while unset, so those runs still resume.
UNHASHED_WHEN_UNSET = ("revision",)
# Speed switches that were hashed once: hashed at their default whatever their value, so old runs' hashes
# hold and switching them (same computation, other kernels) keeps a run resumable.
HASHED_AT_DEFAULT = {
    "model.attn_implementation": "sdpa",
    "deepspeed.overlap_comm": True,
    # communication granularity (memory against overlap): the same reductions in other chunks, so a run whose
    # buckets were shrunk around an OOM resumes
    "deepspeed.reduce_bucket_size": 500_000_000,
    "deepspeed.allgather_bucket_size": 500_000_000,
    "peft.merge_on_export": True,  # what the export writes, not what trains
}
# Of those, the ones pinned after checkpoints existed: those hashed the run's own value, accepted on resume.
PINNED_LATER = ("deepspeed.reduce_bucket_size", "deepspeed.allgather_bucket_size", "peft.merge_on_export")
# Keys added later whose default renders data differently for some runs from before them: left out of the hash
# only at the value that reproduces those runs, so they resume with it set and are refused (naming it) without.
UNHASHED_AT = {"model.chat_template": "tokenizer", "deepspeed.grad_accum_dtype": "bf16"}


def accepted_hashes(cfg: RunConfig) -> set[str]:
    """The hashes a checkpoint of this config may hold: today's, and the one from before PINNED_LATER."""
    return {
        config_hash(cfg),
        config_hash(cfg, pinned=[k for k in HASHED_AT_DEFAULT if k not in PINNED_LATER]),
    }


def config_hash(cfg: RunConfig, pinned: list[str] | None = None) -> str:
    """Hash of the keys that change training (a resume with a different hash is refused); `pinned`: the
    HASHED_AT_DEFAULT keys to pin (all)."""
    data = cfg.model_dump(mode="json")
    for key in NON_TRAINING_KEYS:
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    for key, default in HASHED_AT_DEFAULT.items():
        if pinned is not None and key not in pinned:
            continue
        section, leaf = key.split(".")
        if data[section] is not None:  # an optional section (peft) may be absent
            data[section][leaf] = default
    for key, old_value in UNHASHED_AT.items():
        section, leaf = key.split(".")
        if data[section][leaf] == old_value:
            data[section].pop(leaf)
    if data["model"]["dtype"] == "fp32":  # fp32 weights sum their gradients in fp32 whatever it says
        data["deepspeed"].pop("grad_accum_dtype", None)
    if data["model"].get("revision") is None:  # added after checkpoints existed, like the sources' revision
        data["model"].pop("revision", None)
    for source in data["data"]["sources"]:
        for key in UNHASHED_WHEN_UNSET:
            if source.get(key) is None:
                source.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def training_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dumps, skipping non-training keys."""
    out = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        if path in NON_TRAINING_KEYS or path in HASHED_AT_DEFAULT:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += training_diff(va, vb, path + ".")
        elif isinstance(va, list) and isinstance(vb, list) and len(va) == len(vb):  # e.g. data.sources
            for i, (ia, ib) in enumerate(zip(va, vb, strict=True)):
                if isinstance(ia, dict) and isinstance(ib, dict):
                    out += training_diff(ia, ib, f"{path}[{i}].")
                elif ia != ib:
                    out.append(f"{path}[{i}]: {ia!r} -> {ib!r}")
        elif va != vb:
            out.append(f"{path}: {va!r} -> {vb!r}")
    return out


def validate(data: dict, source: str = "config", stored: bool = False) -> RunConfig:
    """Build a RunConfig, turning pydantic's errors into one readable paragraph. `stored`: a checkpoint's
    config, which trained: refusals added for new runs (unknown eval suites, LoRA on a chunked lm_head) must
    not lock its weights in."""
    try:
        return RunConfig.model_validate(data, context={"stored": stored})
    except ValidationError as e:
        raise UserError(f"invalid {source}: {describe_errors(e, RunConfig)}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a recipe (with its `extends:` chain), apply `--set` overrides and validate."""
    data = apply_overrides(load_yaml_tree(path), overrides or [])
    return validate(data, source=str(path))


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (what is written into the run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
