"""Weight arithmetic on Hugging Face checkpoints: task arithmetic, Chat Vector and ExPO.

Every method reduces to ``anchor + sum_i c_i (plus_i - minus_i)``, computed in fp32 one tensor at a time
while streaming safetensors shards, so peak memory is about one shard per input model.
"""

from __future__ import annotations

import difflib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from transformers import AutoConfig

from train.errors import UserError
from train.merge_config import (
    ChatVectorConfig,
    ExpoConfig,
    MergeConfig,
    MergeConfigError,
    MergeError,
    TaskArithmeticConfig,
)
from train.merge_io import (
    ShardReader,
    ShardWriter,
    atomic_dir,
    check_output,
    read_json,
    tokenizer_ids,
    tokenizer_vocab,
)
from train.yaml_config import apply_overrides, describe_errors, load_yaml_tree

log = logging.getLogger(__name__)

# Rows of these tensors are indexed by token id; only they may differ in their first dimension.
VOCAB_TENSORS = ("embed_tokens.weight", "lm_head.weight")
# Config values that must agree for tensor-wise arithmetic to make sense (compared as resolved, not raw).
ARCH_KEYS = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
)
TEMPLATE_FILES = ("chat_template.jinja", "generation_config.json")
EXTRA_TEMPLATES = "additional_chat_templates"  # the folder transformers writes named chat templates to
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------- plans


@dataclass
class Term:
    """One ``coeff * (plus - minus)`` summand."""

    plus: Path
    minus: Path
    coeff: float


@dataclass
class MergePlan:
    """What a method resolved to: the arithmetic and where each non-weight file comes from."""

    anchor: Path
    terms: list[Term]
    file_sources: dict[str, Path]  # non-weight file name -> model dir it is copied from
    config_updates: dict[str, Any] = field(default_factory=dict)
    vocab_policy: str = "error"
    copy_rows: list[int] = field(default_factory=list)
    rows_source: Path | None = None


@dataclass
class MergeMethod:
    config_cls: type[MergeConfig]
    plan: Callable[[Any], MergePlan]


MERGE_METHODS: dict[str, MergeMethod] = {}


def register(name: str, config_cls: type[MergeConfig]) -> Callable:
    """Register a planning function under ``name`` with its typed config."""

    def wrap(fn: Callable[[Any], MergePlan]) -> Callable[[Any], MergePlan]:
        MERGE_METHODS[name] = MergeMethod(config_cls, fn)
        return fn

    return wrap


def get_method(name: str) -> MergeMethod:
    """Look up a merge method, suggesting the nearest name on a typo."""
    if name not in MERGE_METHODS:
        hint = difflib.get_close_matches(name, MERGE_METHODS, n=1)
        fix = f"did you mean '{hint[0]}'? " if hint else ""
        raise MergeConfigError(f"unknown merge method '{name}': {fix}known: {', '.join(MERGE_METHODS)}")
    return MERGE_METHODS[name]


def load_config(source: str | Path | dict, overrides: Sequence[str] = ()) -> MergeConfig:
    """Validate a merge config from a YAML path or a dict, after ``--set`` overrides."""
    try:  # a file may `extends:` another, as recipes do
        raw = source if isinstance(source, dict) else load_yaml_tree(source)
        raw = apply_overrides(raw, list(overrides))
    except UserError as err:
        raise MergeConfigError(str(err)) from None
    if "method" not in raw:
        raise MergeConfigError(f"missing required key 'method' (one of: {', '.join(MERGE_METHODS)})")
    method = get_method(str(raw["method"]))
    try:
        return method.config_cls.model_validate(raw)
    except ValidationError as err:
        raise MergeConfigError(
            f"invalid {method.config_cls.__name__}: {describe_errors(err, method.config_cls)}"
        ) from None


def resolve_model(ref: str) -> Path:
    """A local model directory, or a hub id (`org/name`, or `org/name@revision` to pin a commit) downloaded
    (weights, config and tokenizer only)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    repo, _, revision = ref.partition("@")
    if ref.startswith((".", "/", "~")) or repo.count("/") != 1 or ref.endswith("@"):
        raise MergeError(
            f"model '{ref}' is neither an existing directory nor a hub id like org/name or org/name@revision"
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.safetensors", "*.json", "*.jinja", "*.py", "tokenizer.model"]
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=patterns))
    except OSError as err:  # hub errors (missing repo, gated, offline, unknown revision) are all OSErrors
        raise MergeError(f"could not fetch '{ref}' from the Hugging Face hub: {err}") from None


def _files_from(tokenizer: Path, templates: Path) -> dict[str, Path]:
    return {**dict.fromkeys(TOKENIZER_FILES, tokenizer), **dict.fromkeys(TEMPLATE_FILES, templates)}


@register("task_arithmetic", TaskArithmeticConfig)
def plan_task_arithmetic(cfg: TaskArithmeticConfig) -> MergePlan:
    """``base + sum_i w_i (model_i - base)``; tokenizer and config from the base."""
    base = resolve_model(cfg.models.base)
    terms = [Term(resolve_model(t.path), base, t.weight) for t in cfg.models.tasks]
    return MergePlan(base, terms, _files_from(base, base))


@register("chat_vector", ChatVectorConfig)
def plan_chat_vector(cfg: ChatVectorConfig) -> MergePlan:
    """``cpt + sum_i r_i (chat_i - base_i)``; chat template, generation config and EOS from the chat model."""
    cpt = resolve_model(cfg.models.cpt)
    terms = [Term(resolve_model(v.chat), resolve_model(v.base), v.ratio) for v in cfg.models.vectors]
    chat = terms[0].plus
    eos = _read_config(chat).get("eos_token_id")
    return MergePlan(
        anchor=cpt,
        terms=terms,
        file_sources=_files_from(chat if cfg.tokenizer_from == "chat" else cpt, chat),
        config_updates={"eos_token_id": eos} if eos is not None else {},
        vocab_policy=cfg.vocab_policy,
        copy_rows=cfg.copy_rows,
        rows_source=chat,
    )


@register("expo", ExpoConfig)
def plan_expo(cfg: ExpoConfig) -> MergePlan:
    """``dpo + alpha (dpo - sft)`` over every tensor, embeddings included; everything else from the DPO model."""
    dpo = resolve_model(cfg.models.dpo)
    return MergePlan(dpo, [Term(dpo, resolve_model(cfg.models.sft), cfg.alpha)], _files_from(dpo, dpo))


# ---------------------------------------------------------------------------------------------- streaming


def _read_config(model: Path) -> dict:
    path = model / "config.json"
    if not path.is_file():
        raise MergeError(f"{model} has no config.json")
    config = read_json(path)
    if not isinstance(config, dict):
        raise MergeError(f"{path} is not a JSON object (a model config)")
    return config


def _is_vocab(name: str) -> bool:
    return name.endswith(VOCAB_TENSORS)


def _arch(model: Path) -> dict[str, Any]:
    """The ARCH_KEYS values ``model``'s config resolves to, defaults filled as its model type fills them.

    config.json files omit defaults differently (transformers 5 always writes head_dim; Llama-3 configs
    written by 4.40 have none), so raw values would differ where the architectures agree."""
    raw = _read_config(model)
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=False)
    except (ValueError, OSError, KeyError):  # a model type transformers does not know: the raw file
        heads, hidden = raw.get("num_attention_heads"), raw.get("hidden_size")
        derived = {"num_key_value_heads": heads, "head_dim": hidden // heads if heads and hidden else None}
        return {key: derived.get(key) if raw.get(key) is None else raw[key] for key in ARCH_KEYS}
    return {key: getattr(config, key, raw.get(key)) for key in ARCH_KEYS}


def _vocab_fix(cfg: MergeConfig) -> str:
    """How to resolve a vocabulary mismatch: a vocab_policy where the method has one."""
    if "vocab_policy" in type(cfg).model_fields:
        return (
            "set vocab_policy: skip (keep the CPT rows) or shared_rows (apply the vector to the "
            "rows both vocabularies share)"
        )
    return f"{cfg.method} needs the same vocabulary in every model (only chat_vector has a vocab_policy)"


def _check_inputs(plan: MergePlan, reader: ShardReader, cfg: MergeConfig) -> None:
    """Refuse mismatched architectures, tensor sets or shapes before anything is written."""
    models = list(reader.maps)
    configs = {m: _arch(m) for m in models}
    for key in ARCH_KEYS:
        values = {m: configs[m][key] for m in models}
        if len(set(map(repr, values.values()))) > 1:
            found = ", ".join(f"{v!r} in {m}" for m, v in values.items())
            raise MergeError(f"architecture mismatch: config '{key}' resolves to {found}")
    names = set(reader.maps[plan.anchor])
    for m in models[1:]:
        missing, extra = sorted(names - set(reader.maps[m])), sorted(set(reader.maps[m]) - names)
        if missing or extra:
            raise MergeError(
                f"tensor sets differ between {plan.anchor} and {m}: missing in the latter {missing[:5]}, "
                f"extra {extra[:5]}; refusing to skip tensors"
            )
    shapes = {m: reader.shapes(m) for m in models}
    for name, shape in shapes[plan.anchor].items():
        for m in models[1:]:
            other = shapes[m][name]
            if other == shape:
                continue
            if not _is_vocab(name) or other[1:] != shape[1:]:
                raise MergeError(
                    f"shape mismatch for tensor '{name}': {shape} in {plan.anchor} but {other} in {m}"
                )
            if plan.vocab_policy == "error":
                raise MergeError(
                    f"vocabulary mismatch for tensor '{name}': {shape} in {plan.anchor} but {other} in {m}; "
                    + _vocab_fix(cfg)
                )
    if plan.copy_rows:
        limit = min(shapes[m][n][0] for m in (plan.anchor, plan.rows_source) for n in names if _is_vocab(n))
        bad = [i for i in plan.copy_rows if not 0 <= i < limit]
        if bad:
            raise MergeError(
                f"copy_rows {bad} are outside the rows both the CPT and chat models have (< {limit})"
            )


def _vocab_rows(reader: ShardReader, model: Path) -> int | None:
    shapes = reader.shapes(model)
    return next((shape[0] for name, shape in sorted(shapes.items()) if _is_vocab(name)), None)


def _has_tokenizer(model: Path) -> bool:
    return any((model / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))


def _check_tokenizer(plan: MergePlan, reader: ShardReader) -> None:
    """The tokenizer written must reach the output's vocabulary, which is the anchor's (CPT) rows.

    A padded embedding (more rows than tokens) is fine; a CPT vocabulary with tokens the copied
    tokenizer lacks is not: their rows would be unreachable and the model's tokens silently wrong."""
    source = plan.file_sources["tokenizer.json"]
    if not _has_tokenizer(source):
        # A merged model without a tokenizer cannot be run or evaluated: refuse rather than write one.
        other = " or set tokenizer_from: cpt" if source != plan.anchor and _has_tokenizer(plan.anchor) else ""
        raise MergeError(
            f"{source} has no tokenizer (tokenizer.json or tokenizer.model), which the merged model takes "
            f"from it; copy the tokenizer files of the model it was trained from into {source}{other}"
        )
    n_tok = tokenizer_ids(source)
    rows = _vocab_rows(reader, plan.anchor)
    if n_tok is None or rows is None:
        return
    if n_tok > rows:
        raise MergeError(
            f"tokenizer mismatch: the tokenizer of {source} has ids up to {n_tok - 1}, but the output "
            f"embedding (from {plan.anchor}) has only {rows} rows"
            + ("; set tokenizer_from: cpt to keep the CPT tokenizer" if source != plan.anchor else "")
        )
    if source == plan.anchor:
        return
    # The CPT vocabulary: its tokenizer's when it has one; else its rows, when they grew past the
    # source model's (rows alone cannot tell new tokens from padding).
    cpt_tok = tokenizer_ids(plan.anchor)
    if cpt_tok is not None:
        need = cpt_tok
    else:
        source_rows = _vocab_rows(reader, source) if source in reader.maps else None
        need = rows if source_rows is not None and rows > source_rows else n_tok
    if n_tok < need:
        missing = (
            "" if cpt_tok is not None else f" ({plan.anchor} has no tokenizer.json: copy the CPT one there)"
        )
        raise MergeError(
            f"tokenizer mismatch: the output weights have the CPT vocabulary of {need} tokens ({rows} "
            f"embedding rows, from {plan.anchor}) but the tokenizer copied from {source} has {n_tok}; "
            f"set tokenizer_from: cpt, which keeps the CPT tokenizer with the chat model's chat template{missing}"
        )


def _check_eos(plan: MergePlan, reader: ShardReader) -> None:
    """The EOS ids the output's configs carry (the chat model's) must be rows of the output embedding."""
    rows = _vocab_rows(reader, plan.anchor)
    generation = plan.file_sources.get("generation_config.json")
    sources = [("config.json", plan.config_updates.get("eos_token_id"))]
    if generation is not None and (generation / "generation_config.json").is_file():
        sources.append(
            (
                f"{generation}/generation_config.json",
                read_json(generation / "generation_config.json").get("eos_token_id"),
            )
        )
    for where, eos in sources:
        ids = [eos] if isinstance(eos, int) else [i for i in eos or [] if isinstance(i, int)]
        past = [i for i in ids if rows is not None and i >= rows]
        if past:
            raise MergeError(
                f"the merged model would stop at EOS id {past} ({where}), past the {rows} embedding rows of "
                f"{plan.anchor}: it would never stop generating. The chat model has tokens the CPT model "
                "lacks; give the CPT model the chat model's vocabulary first (model.add_tokens)"
            )


def _merge_tensor(plan: MergePlan, name: str, tensors: dict[Path, torch.Tensor]) -> torch.Tensor:
    """The fp32 result for one tensor; ``tensors`` holds each input's copy in fp32."""
    out = tensors[plan.anchor]
    if not _is_vocab(name) or plan.vocab_policy == "error":
        for t in plan.terms:
            out = out + t.coeff * (tensors[t.plus] - tensors[t.minus])
        return out
    if plan.vocab_policy == "skip":
        return out
    # shared_rows: the vector only means something on token ids every vocabulary has; extra rows stay CPT.
    rows = min(t.shape[0] for t in tensors.values())
    shared = out[:rows]
    for t in plan.terms:
        shared = shared + t.coeff * (tensors[t.plus][:rows] - tensors[t.minus][:rows])
    out = out.clone()
    out[:rows] = shared
    for i in plan.copy_rows:
        out[i] = tensors[plan.rows_source][i]
    return out


def _copy_files(plan: MergePlan, cfg: MergeConfig, tmp: Path) -> None:
    """Tokenizer, template, generation and code (*.py) files from their source models; config.json from the anchor."""
    for fname, source in plan.file_sources.items():
        if (source / fname).is_file():
            shutil.copy2(source / fname, tmp / fname)
    # Older checkpoints keep the chat template inside tokenizer_config.json; it must follow the template
    # source even when the tokenizer comes from another model.
    template_src = plan.file_sources["chat_template.jinja"]
    extra = template_src / EXTRA_TEMPLATES  # named templates (tool_use, ...) beside the default one
    if extra.is_dir():
        shutil.copytree(extra, tmp / EXTRA_TEMPLATES)
    tok_config = template_src / "tokenizer_config.json"
    if not (tmp / "chat_template.jinja").exists() and tok_config.is_file():
        inline = read_json(tok_config).get("chat_template")
        if isinstance(inline, list):  # [{"name": ..., "template": ...}]: the default and named ones
            named = {t.get("name"): t.get("template") for t in inline if isinstance(t, dict)}
            inline = named.pop("default", None)
            for name, text in named.items():
                if isinstance(name, str) and isinstance(text, str):
                    (tmp / EXTRA_TEMPLATES).mkdir(exist_ok=True)
                    (tmp / EXTRA_TEMPLATES / f"{name}.jinja").write_text(text)
        if isinstance(inline, str):
            (tmp / "chat_template.jinja").write_text(inline)
    _take_eos_token(template_src, tmp)
    # Custom architectures and tokenizers (`auto_map`) need their code for trust_remote_code; the
    # anchor's files win a name clash, as config.json is the anchor's.
    for source in dict.fromkeys([plan.file_sources["tokenizer_config.json"], plan.anchor]):
        for code in source.glob("*.py"):
            shutil.copy2(code, tmp / code.name)
    config = {**_read_config(plan.anchor), **plan.config_updates}
    if cfg.dtype != "auto":
        config["dtype"] = cfg.dtype
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _token_text(token: Any) -> str | None:
    return token.get("content") if isinstance(token, dict) else token  # an AddedToken dict or its string


def _take_eos_token(template_src: Path, tmp: Path) -> None:
    """The tokenizer's EOS token is the chat model's, as its template and generation config are, when the
    tokenizer comes from another model (tokenizer_from: cpt) that has that token: tools that stop at
    `tokenizer.eos_token` (lm-eval's generation) stop where the chat model ends its turns."""
    ours, chat = tmp / "tokenizer_config.json", template_src / "tokenizer_config.json"
    if not ours.is_file() or not chat.is_file():
        return
    eos = _token_text(read_json(chat).get("eos_token"))
    config = read_json(ours)
    if eos is None or _token_text(config.get("eos_token")) == eos:
        return
    if eos in (tokenizer_vocab(tmp) or {}):
        ours.write_text(json.dumps({**config, "eos_token": eos}, indent=2, ensure_ascii=False) + "\n")


def merge(cfg: MergeConfig) -> Path:
    """Run a validated merge config; the output appears complete or not at all."""
    out = cfg.output.resolve()
    check_output(out, [], cfg.overwrite)  # a non-empty output, before resolving hub ids downloads them
    plan = get_method(cfg.method).plan(cfg)
    models = list(dict.fromkeys([plan.anchor, *(p for t in plan.terms for p in (t.plus, t.minus))]))
    check_output(out, models, overwrite=True)  # overlap with an input, before any weights are read
    try:
        reader = ShardReader(models)
    except FileNotFoundError as err:
        raise MergeError(str(err)) from None
    _check_inputs(plan, reader, cfg)
    _check_tokenizer(plan, reader)
    _check_eos(plan, reader)
    with atomic_dir(out) as tmp:
        writer = ShardWriter(tmp, cfg.max_shard_size)
        for name in reader.ordered_names(plan.anchor):
            tensors = {m: reader.get(m, name) for m in models}
            dtype = DTYPES.get(cfg.dtype, tensors[plan.anchor].dtype)
            merged = _merge_tensor(plan, name, {m: t.float() for m, t in tensors.items()})
            writer.add(name, merged.to(dtype))
        reader.close()
        writer.finish()
        _copy_files(plan, cfg, tmp)
    log.info("merged %s into %s", cfg.method, out)
    return out
