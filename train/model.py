"""Build the model and tokenizer from the config: pretrained weights, or an architecture preset.

Knows nothing of DeepSpeed; the engine wraps whatever this returns.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedModel

import data_prep
import train.expansion  # noqa: F401  (registers controlllm_llama: a Control-LLM export loads as a base)
from train.config import ModelConfig
from train.errors import UserError

TINY_TOKENIZER = Path(data_prep.__file__).parent / "assets" / "llama3_tiny_tokenizer"
LLAMA3_CHAT_TEMPLATE = Path(data_prep.__file__).parent / "assets" / "llama3_chat_template.jinja"
_LLAMA3_CHAT_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0}
_LLAMA3_COMMON = dict(
    vocab_size=128256,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    bos_token_id=128000,
    eos_token_id=128001,
    max_position_embeddings=131072,
    num_key_value_heads=8,
    num_attention_heads=32,
)
# Shapes of the published configs (config.json of the meta-llama repos).
PRESETS: dict[str, dict] = {
    "llama3_tiny": dict(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=2042,
        eos_token_id=2043,
        pad_token_id=2047,
    ),
    "llama3_2_1b": dict(
        _LLAMA3_COMMON,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        tie_word_embeddings=True,
        rope_scaling=dict(_LLAMA3_ROPE, factor=32.0, original_max_position_embeddings=8192),
    ),
    "llama3_8b": dict(  # Meta-Llama-3-8B: the 3.1 shape without rope scaling, 8K context
        _LLAMA3_COMMON,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        tie_word_embeddings=False,
        max_position_embeddings=8192,
    ),
    "llama3_1_8b": dict(
        _LLAMA3_COMMON,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        tie_word_embeddings=False,
        rope_scaling=dict(_LLAMA3_ROPE, factor=8.0, original_max_position_embeddings=8192),
    ),
}

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def preset_config(cfg: ModelConfig) -> LlamaConfig:
    """The LlamaConfig of `model.preset` with `model.overrides` applied."""
    if cfg.preset not in PRESETS:
        import difflib

        close = difflib.get_close_matches(str(cfg.preset), PRESETS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown model.preset '{cfg.preset}'.{hint} Known presets: {', '.join(PRESETS)}.")
    with _overrides_named(cfg):
        return LlamaConfig(**{**PRESETS[cfg.preset], **_checked_overrides(cfg)})


@contextlib.contextmanager
def _overrides_named(cfg: ModelConfig):
    """transformers' own checks of the architecture (types, head counts, the pad id inside the vocabulary) as
    an error naming model.overrides, which is where a bad value comes from."""
    try:
        yield
    except (StrictDataclassError, TypeError, ValueError, AssertionError) as e:
        if not cfg.overrides:
            raise
        raise UserError(f"model.overrides {cfg.overrides} give an invalid Llama architecture: {e}") from None


def _checked_overrides(cfg: ModelConfig) -> dict:
    """`model.overrides`, each key a Llama config field (LlamaConfig takes any keyword: a typo would
    change nothing)."""
    import difflib

    fields = set(LlamaConfig().to_dict()) | set(inspect.signature(LlamaConfig.__init__).parameters)
    # taken as keywords, folded into rope_parameters (transformers 5)
    fields |= {"rope_theta", "rope_scaling"}
    fields -= {"self", "kwargs", "dtype", "torch_dtype"}  # the dtype is model.dtype's
    for key in cfg.overrides:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"model.overrides: '{key}' is not a Llama config field.{hint}")
    return dict(cfg.overrides)


def _check_attention(cfg: ModelConfig) -> None:
    if cfg.attn_implementation == "flex_attention" and not torch.cuda.is_available():
        raise UserError(
            "model.attn_implementation 'flex_attention' trains on a CUDA GPU only (torch has no flex "
            "attention backward on the CPU); use 'sdpa' (the default), which also keeps packed documents apart."
        )
    if cfg.attn_implementation == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise UserError(
                "model.attn_implementation 'flash_attention_2' needs a CUDA GPU and the flash-attn package; "
                "use 'sdpa' (the default), which also keeps packed documents apart."
            )


def check_hardware(cfg: ModelConfig) -> None:
    """The GPU-only settings' needs (attention kernels, liger), before data preparation; dry runs skip this."""
    _check_attention(cfg)
    if cfg.liger:
        from train.speed import check_liger

        check_liger()


def check_positions(cfg, config) -> None:
    """A row longer than the positions the model was trained for runs RoPE past them without an error."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and cfg.data.seq_len > positions:
        raise UserError(
            f"data.seq_len ({cfg.data.seq_len}) exceeds the model's max_position_embeddings ({positions}): lower "
            "data.seq_len, or extend the context on purpose with model.overrides (max_position_embeddings and "
            "rope_scaling)"
        )


def architecture(cfg: ModelConfig):
    """The model's config (overrides applied): the weights' config.json when it is on this machine (a
    folder or the hub cache; exports need its eos ids and rope settings), else the preset's (a dry run
    without the download), else config.json from the hub."""
    from transformers import AutoConfig

    if cfg.name_or_path is not None:
        try:
            with _overrides_named(cfg):
                return AutoConfig.from_pretrained(
                    cfg.name_or_path,
                    revision=_revision(cfg),
                    local_files_only=cfg.preset is not None,
                    trust_remote_code=cfg.trust_remote_code,
                    **_checked_overrides(cfg),
                )
        except OSError as e:
            if cfg.preset is None:
                raise UserError(
                    f"cannot read the config of model.name_or_path '{cfg.name_or_path}': {e}"
                ) from None
    return preset_config(cfg)


ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "tie_word_embeddings",
)


def _check_preset_matches(cfg: ModelConfig, loaded) -> None:
    """The preset stands for the weights' architecture in dry runs and exports: it must really match."""
    preset = preset_config(cfg)
    diff = [
        f"{k}: preset {getattr(preset, k)} vs weights {getattr(loaded, k)}"
        for k in ARCH_FIELDS
        if getattr(preset, k) != getattr(loaded, k)
    ]
    if diff:
        raise UserError(
            f"model.preset '{cfg.preset}' does not match model.name_or_path '{cfg.name_or_path}' "
            f"({'; '.join(diff)}): fix the preset or remove it"
        )


def _revision(cfg: ModelConfig) -> str | None:
    """model.revision for a hub id; a local folder has no revisions, so one set there is a mistake."""
    if cfg.revision is not None and Path(cfg.name_or_path).expanduser().is_dir():
        raise UserError(
            f"model.revision '{cfg.revision}' pins a hub model, but model.name_or_path '{cfg.name_or_path}' is a "
            "local folder: drop model.revision"
        )
    return cfg.revision


def build_model(cfg: ModelConfig, meta: bool = False) -> PreTrainedModel:
    """Pretrained weights when `name_or_path` is set, else a random init of the preset; `meta`: shapes only."""
    dtype = DTYPES[cfg.dtype]
    if meta or cfg.name_or_path is None:
        if not meta:
            _check_attention(cfg)
        # shapes only: any kernel will do, and dry runs and exports must work where flash-attn is not installed
        attention = "sdpa" if meta else cfg.attn_implementation
        with torch.device("meta") if meta else contextlib.nullcontext(), _overrides_named(cfg):
            model = AutoModelForCausalLM.from_config(
                architecture(cfg), dtype=dtype, attn_implementation=attention
            )
    else:
        _check_attention(cfg)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                cfg.name_or_path,
                revision=_revision(cfg),
                dtype=dtype,
                attn_implementation=cfg.attn_implementation,
                trust_remote_code=cfg.trust_remote_code,
                **_checked_overrides(cfg),
            )
        except OSError as e:
            raise UserError(f"cannot load model.name_or_path '{cfg.name_or_path}': {e}") from None
        if cfg.preset is not None:
            _check_preset_matches(cfg, model.config)
    model.config.use_cache = False
    return model


def build_tokenizer(cfg: ModelConfig, added: list[str] | None = None):
    """The tokenizer named by the config, or the bundled tiny Llama-3-style one for `llama3_tiny`. `added`: a
    checkpoint's own added tokens (`added_tokens`), used instead of reading `model.add_tokens` again."""
    source = cfg.tokenizer or cfg.name_or_path
    if source is None and cfg.preset == "llama3_tiny":
        source = str(TINY_TOKENIZER)
    if source is None:
        raise UserError(f"model.preset '{cfg.preset}' has no bundled tokenizer: set model.tokenizer")
    try:
        revision = _revision(cfg) if source == cfg.name_or_path else None
        tok = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=cfg.trust_remote_code
        )
    except OSError as e:
        raise UserError(f"cannot load tokenizer '{source}': {e}") from None
    if tok.pad_token is None and "<|finetune_right_pad_id|>" in tok.get_vocab():
        tok.pad_token = "<|finetune_right_pad_id|>"  # Llama-3's reserved pad; never add a token
    if cfg.chat_template == "llama3":
        missing = [t for t in _LLAMA3_CHAT_TOKENS if t not in tok.get_vocab()]
        if missing:
            raise UserError(
                f"model.chat_template 'llama3' needs the Llama-3 special tokens, and tokenizer '{source}' lacks "
                f"{missing}: set model.chat_template: tokenizer to use its own template"
            )
        tok.chat_template = LLAMA3_CHAT_TEMPLATE.read_text(encoding="utf-8")
    if cfg.add_tokens:
        tok.add_tokens(new_tokens(cfg, tok) if added is None else added)
    return tok


def new_tokens(cfg: ModelConfig, tokenizer) -> list[str]:
    """The tokens of `model.add_tokens` that the tokenizer does not have yet, in file order. A token it has
    is one it encodes as one id: byte-level BPE keys its vocabulary by byte symbols ("æĿ±äº¬" for 東京), so a
    vocabulary lookup misses every non-ASCII token and would add a duplicate row."""
    path = Path(cfg.add_tokens)
    if not path.is_file():
        raise UserError(f"model.add_tokens: file not found: {path}")
    vocab = tokenizer.get_vocab()
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]

    def known(token: str) -> bool:
        return token in vocab or len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1

    return list(dict.fromkeys(t for t in lines if t and not known(t)))


@torch.no_grad()
def expand_vocabulary(
    model: PreTrainedModel, cfg: ModelConfig, init: bool = True, added: list[str] | None = None
) -> list[int]:
    """Add `model.add_tokens` rows (or `added`'s, a checkpoint's own list): each new input/output embedding is
    the mean of its pieces' rows. `init=False` only resizes (a meta-device model whose trained rows are loaded
    afterwards)."""
    tok = build_tokenizer(cfg.model_copy(update={"add_tokens": None}))
    tokens = new_tokens(cfg, tok) if added is None else added
    pieces = [tok(t, add_special_tokens=False)["input_ids"] for t in tokens]
    # The new ids are the tokenizer's, not the embedding's size: embeddings are often padded past
    # the tokenizer (rows rounded up for the matmuls), and those rows must neither be cut nor reused
    # for other ids than the tokenizer gives.
    tok.add_tokens(tokens)
    ids = tok.convert_tokens_to_ids(tokens)
    rows = model.get_input_embeddings().weight.shape[0]
    if ids and max(ids) >= rows:
        model.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
    embeddings = [model.get_input_embeddings().weight]
    if not model.config.tie_word_embeddings:
        embeddings.append(model.get_output_embeddings().weight)
    for new_id, piece_ids in zip(ids, pieces, strict=True):
        for weight in embeddings if init else []:
            weight[new_id] = weight[piece_ids].mean(dim=0)
    model.config.continualm_added_tokens = {
        "file": Path(cfg.add_tokens).name,
        "count": len(tokens),
        "first_id": min(ids) if ids else None,
        "tokens": tokens,
    }
    return ids


def added_tokens(model: torch.nn.Module) -> list[str]:
    """The tokens `expand_vocabulary` gave this model rows for, in id order (empty when none): a checkpoint
    keeps them, so its export and resume do not depend on the token file or the rule that filtered it."""
    return list(getattr(model.config, "continualm_added_tokens", {}).get("tokens", []))


@dataclass(frozen=True)
class ParamCounts:
    total: int
    trainable: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    def __str__(self) -> str:
        return f"total {self.total:,} | trainable {self.trainable:,} | frozen {self.frozen:,}"


def count_parameters(model: torch.nn.Module) -> ParamCounts:
    """Unique parameters (tied weights once), whatever device they live on (meta included)."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = getattr(p, "ds_numel", p.numel())  # ZeRO-3 partitions hide the full size
        total += n
        trainable += n if p.requires_grad else 0
    return ParamCounts(total, trainable)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder stack (`...model.layers`), also under a peft wrapper."""
    for name, module in model.named_modules():
        if name.endswith("model.layers") and isinstance(module, torch.nn.ModuleList):
            return module
    raise ValueError(f"{type(model).__name__} has no decoder stack named model.layers")


def _numel(params) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) for p in params)


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token as really computed (documented in docs/BENCHMARKS.md).

    Each block's matmul weights cost 2 FLOPs per parameter forward, 2 for the input-gradient when the
    gradient flows through the block (it is at or above the lowest trainable block) and 2 for the
    weight-gradient when the weight trains; attention adds 4 d T forward and 8 d T backward. For a
    plain model that is 6 N + 12 L d T. A concat pair is two blocks side by side: its frozen branch needs
    no input-gradient when the pair is the lowest trainable block. The input embedding is a lookup and is
    left out (a tied lm_head is counted once, as a matmul).
    """
    layers = decoder_layers(model)
    embed = model.get_input_embeddings().weight
    in_layers = {id(p) for p in layers.parameters()}
    rest = {id(p): p for p in model.parameters() if id(p) not in in_layers}  # dedups a tied lm_head
    head = [p for p in rest.values() if p is not embed or _is_tied(model)]
    # Units of computation in depth order: each block, or a pair's two branches side by side.
    stages = [_branches(layer) for layer in layers]
    trainable_below = embed.requires_grad
    lowest = -1 if trainable_below else None
    for k, units in enumerate(stages):
        if lowest is None and any(p.requires_grad for unit in units for p in unit.parameters()):
            lowest = k
    d, total = model.config.hidden_size, 0.0
    for k, units in enumerate(stages):
        for unit in units:
            params = list(unit.parameters())
            n, n_train = _numel(params), _numel(p for p in params if p.requires_grad)
            grads_flow = lowest is not None and (k > lowest or (k == lowest and n_train > 0))
            total += 2 * n + 4 * d * seq_len  # forward: weights and attention
            total += (2 * n + 8 * d * seq_len) if grads_flow else 0  # input-gradients
            total += 2 * n_train  # weight-gradients
    n_head, n_head_train = _numel(head), _numel(p for p in head if p.requires_grad)
    return total + 2 * n_head + (2 * n_head if lowest is not None else 0) + 2 * n_head_train


def _is_tied(model: torch.nn.Module) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def _branches(layer: torch.nn.Module) -> list[torch.nn.Module]:
    """A concat pair's two blocks (its interpolator rides with the trainable one), else the block itself."""
    pretrained = getattr(layer, "pretrained_layer", None)
    if pretrained is None:
        return [layer]
    return [pretrained, _Without(layer, pretrained)]


class _Without:
    """The parameters of `module` that are not in `part` (a view, for counting)."""

    def __init__(self, module: torch.nn.Module, part: torch.nn.Module):
        self.module, self.part = module, part

    def parameters(self):
        skip = {id(p) for p in self.part.parameters()}
        return [p for p in self.module.parameters() if id(p) not in skip]


# Dense bf16 peak TFLOP/s per device, for MFU; the first name found in the device's name wins (the H100 PCIe
# and NVL cards are slower than the SXM one).
PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "H200 NVL": 835.0,
    "H200": 989.0,
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
}


def peak_tflops(dtype: str = "bf16") -> float | None:
    """The GPU's dense bf16 tensor-core peak (None on CPU, for fp32 or an unknown GPU: give it by hand)."""
    if not torch.cuda.is_available() or dtype != "bf16":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


# The settings that decide what an expanded model trains: a run continuing an export must have the export's.
CONTINUED_KEYS = ("type", "method", "num_exp_layers", "freeze_interpolation", "divergence")


def _continued_expansion(cfg) -> dict | None:
    """The `expansion` section of model.name_or_path when it is a Control-LLM export (read from its config.json,
    before any weights load), else None. Such a model trains only with that section: its pretrained blocks must
    stay frozen, and its divergence loss is part of its forward."""
    if cfg.model.name_or_path is None:
        return None
    saved = getattr(architecture(cfg.model), "expansion", None)
    if not isinstance(saved, dict):
        return None
    shown = {k: saved.get(k) for k in CONTINUED_KEYS if k != "divergence"}
    where = f"model.name_or_path '{cfg.model.name_or_path}' is a Control-LLM export ({shown})"
    if cfg.expansion is None and saved.get("type") == "stack":
        return None  # a plain Llama, deeper: tuned in full (LLaMA-Pro's SFT) or with LoRA like any other
    if cfg.expansion is None and cfg.peft is not None:
        raise UserError(
            f"{where}: LoRA on its two branches is not supported; fold it into a plain Llama first "
            "(docs/merging.md, merge-back) and put the adapters on that, or continue it with an `expansion:` "
            "section equal to its own"
        )
    if cfg.expansion is None:
        raise UserError(
            f"{where}: trained as a plain model its frozen pretrained blocks would train; continue it with an "
            "`expansion:` section equal to its own (its config.json's `expansion`), or fold it into a plain "
            "Llama first (docs/merging.md, merge-back)"
        )
    wanted = cfg.expansion.model_dump(mode="json")
    diff = [
        f"expansion.{k}: {wanted[k]!r} here, {saved.get(k)!r} in the export"
        for k in CONTINUED_KEYS
        if wanted[k] != saved.get(k)
    ]
    if diff:
        raise UserError(
            f"{where}, expanded otherwise than this config says ({'; '.join(diff)}): set them as the export has them"
        )
    return saved


def _expand(cfg, meta: bool) -> torch.nn.Module:
    from train.expansion import ExpansionConfig, apply_freeze_policy, build_meta, expand_model

    e = cfg.expansion
    if _continued_expansion(cfg) is not None:  # an export trained on: already expanded, as checked
        model = build_model(cfg.model, meta=meta)
        apply_freeze_policy(model, "expansion")
        return model
    if e.type == "partial":
        model = build_model(cfg.model, meta=meta)
        apply_freeze_policy(model, "partial", e.num_exp_layers)
        return model
    base_ref = cfg.model.name_or_path
    ecfg = ExpansionConfig(
        type=e.type,
        method=e.method,
        num_exp_layers=e.num_exp_layers,
        interpolation_factor=e.interpolation_factor,
        freeze_interpolation=e.freeze_interpolation,
        divergence=e.divergence.model_dump(),
        base_model=base_ref if base_ref and not Path(base_ref).is_absolute() else None,
    )
    if meta:
        model = build_meta(architecture(cfg.model), ecfg)
    else:
        model = expand_model(build_model(cfg.model), ecfg)
    apply_freeze_policy(model, "expansion")
    return model


def build_for_training(
    cfg, meta: bool = False, stored: bool = False, added: list[str] | None = None
) -> torch.nn.Module:
    """The model the engine trains: the base model, expanded (Control-LLM) or with LoRA adapters. `stored`:
    a checkpoint's model (for its export), which trained as it was: new runs' refusals do not apply; `added`:
    its added tokens (`added_tokens`)."""
    if cfg.expansion is not None:
        model = _expand(cfg, meta)
    else:
        if not stored:
            _continued_expansion(cfg)  # refuses a Control-LLM export, whose frozen blocks would train
        model = build_model(cfg.model, meta=meta)
    if cfg.model.add_tokens:
        expand_vocabulary(model, cfg.model, init=not meta, added=added)
    if cfg.model.liger and not meta:  # a dry run only counts shapes
        from train.speed import apply_liger

        apply_liger(model)
    if cfg.train.compile and not meta:
        from train.speed import compile_blocks

        compile_blocks(decoder_layers(model))
    if cfg.model.activation_checkpointing != "none":
        kwargs = {"use_reentrant": False}
        if cfg.model.activation_checkpointing == "selective":
            from train.speed import selective_checkpoint_contexts

            kwargs["context_fn"] = selective_checkpoint_contexts
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        # transformers (and peft, below) hook the embeddings' output to require a gradient, which only
        # reentrant checkpointing needs: it runs the backward of the frozen blocks below the lowest trainable
        # one (Control-LLM's, LoRA's) for an embedding gradient nobody uses. Each enable replaces the list
        # of hooks that a disable removes, so each is undone at once.
        model.disable_input_require_grads()
    if cfg.peft is not None:
        from train.lora import apply_lora

        model = apply_lora(model, cfg.peft)
        if cfg.model.activation_checkpointing != "none":
            model.get_base_model().disable_input_require_grads()
    if cfg.train.loss_chunk_tokens is not None:
        from train.chunked_loss import use_chunked_loss

        use_chunked_loss(model, cfg.train.loss_chunk_tokens)
    model.config.use_cache = False
    return model
