"""Fold each concat pair into one block, W = (1 - w) W_pre + w W_exp, giving a plain Llama.

w per pair: lerp's own alpha, sigmoid(theta) read from the weights; for dlerp / dlerpin (alpha varies per
token) the mean alpha over evaluation rows (the reference's choice), or else the training-batch mean logged
at the export's own step.
"""

import json
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from train.merge_io import atomic_dir, check_output

from .build import llama_fields
from .configuration import ControlLLMConfig
from .modeling import ConcatPair, ControlLLMForCausalLM

_PAIR_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Files besides weights and config that a model folder carries and the merged model keeps.
_CARRIED = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
    "additional_chat_templates",
    "generation_config.json",
)


def _pair_weights(model: ControlLLMForCausalLM, weight: float | Sequence[float] | None) -> dict[int, float]:
    pairs = model.config.pair_layers
    if weight is None:
        if model.config.expansion["method"] != "lerp":
            raise ValueError(
                "dlerp/dlerpin alphas vary per token: pass weight (e.g. measured_alphas on evaluation rows)"
            )
        pair_modules: list[ConcatPair] = [model.model.layers[j] for j in pairs]
        weight = [torch.sigmoid(p.gate.float()).item() for p in pair_modules]
    weights = [float(weight)] * len(pairs) if isinstance(weight, (int, float)) else [float(w) for w in weight]
    if len(weights) != len(pairs):
        raise ValueError(f"got {len(weights)} merge weights for {len(pairs)} pairs")
    return dict(zip(pairs, weights, strict=True))


@torch.no_grad()
def fold_pairs(
    model: ControlLLMForCausalLM, weight: float | Sequence[float] | None = None
) -> LlamaForCausalLM:
    """A plain Llama with each pair folded with weight w (one value, one per pair, or None: lerp's alpha)."""
    weights = _pair_weights(model, weight)
    config = LlamaConfig(**llama_fields(model.config))
    config._attn_implementation = model.config._attn_implementation
    with torch.device("meta"):
        merged = LlamaForCausalLM(config)
    source = model.state_dict()
    state = {}
    for key in merged.state_dict():
        match = _PAIR_KEY.fullmatch(key)
        if match is None or int(match[1]) not in weights:
            state[key] = source[key]
            continue
        w = weights[int(match[1])]
        pre = source[f"model.layers.{match[1]}.pretrained_layer.{match[2]}"]
        exp = source[f"model.layers.{match[1]}.expanded_layer.{match[2]}"]
        state[key] = ((1 - w) * pre.float() + w * exp.float()).to(pre.dtype)
    merged.load_state_dict(state, strict=True, assign=True)
    merged.model.rotary_emb = model.model.rotary_emb
    if config.tie_word_embeddings:
        merged.tie_weights()
    merged.generation_config = model.generation_config
    return merged


@torch.no_grad()
def measured_alphas(model: ControlLLMForCausalLM, rows: Iterable[Sequence[int]]) -> list[float]:
    """Per-pair mean alpha over every token of `rows` (token id lists), one unpadded row per forward pass."""
    total, tokens = None, 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for row in rows:
        ids = torch.tensor([list(row)], dtype=torch.long, device=device)
        alphas = model(input_ids=ids, use_cache=False).alphas.double().cpu() * ids.shape[1]
        total = alphas if total is None else total + alphas
        tokens += ids.shape[1]
    model.train(was_training)
    if not tokens:
        raise ValueError("no tokens to measure alphas on")
    return (total / tokens).tolist()


def alpha_rows(path: str | Path, tokenizer, max_tokens: int = 2048) -> list[list[int]]:
    """Token ids of each JSONL row's "text" (special tokens as the tokenizer adds them), cut at max_tokens."""
    if not Path(path).is_file():
        raise ValueError(f"alpha data {path} does not exist")
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: is not a JSON object")
        text = row.get("text")
        if not isinstance(text, str):
            raise ValueError(f'{path}:{n}: each row needs a "text" string')
        ids = tokenizer(text)["input_ids"][:max_tokens]
        if ids:
            rows.append(ids)
    return rows


def logged_alphas(metrics_file: str | Path, step: int) -> list[float]:
    """Per-pair mean alphas logged for `step` in a run's metrics.jsonl (`alpha/pair_k`: one training
    step's batches, at the forward pass before that step's update)."""
    from train.tracking import read_metrics

    steps = read_metrics(metrics_file)
    if step not in steps:
        logged = sorted(k for k, m in steps.items() if any(key.startswith("alpha/pair_") for key in m))
        raise ValueError(
            f"{metrics_file} logs no alphas for step {step} (logged: {logged[-5:]}); "
            "pass --alpha-data or --weight"
        )
    alphas = sorted((int(k.split("_")[-1]), v) for k, v in steps[step].items() if k.startswith("alpha/pair_"))
    if not alphas:
        raise ValueError(f"{metrics_file} logs no alpha/pair_k values: pass the weight explicitly")
    return [v for _, v in alphas]


def export_step(model_dir: str | Path) -> int | None:
    """The training step an export was written from (continualm_export.json), if known."""
    info = Path(model_dir) / "continualm_export.json"
    return json.loads(info.read_text()).get("step") if info.is_file() else None


def merge_back(
    model_dir: str | Path,
    out_dir: str | Path,
    weight: float | Sequence[float] | None = None,
    alpha_data: str | Path | None = None,
    metrics: str | Path | None = None,
    max_tokens: int = 2048,
    overwrite: bool = False,
) -> Path:
    """Load an expanded model folder, fold its pairs and save a plain Llama (with its tokenizer) to `out_dir`.

    w: `weight` if given; else lerp's sigmoid(theta); else (dlerp / dlerpin) the mean alpha over the rows of
    `alpha_data` (JSONL, "text"); else the alphas `metrics` (metrics.jsonl) logged at the export's step.
    `out_dir` appears complete or not at all; a non-empty one is replaced only with `overwrite`, and one
    that overlaps `model_dir` never.
    """
    config = AutoConfig.from_pretrained(model_dir)
    if not isinstance(config, ControlLLMConfig) or not config.expansion:
        # A plain Llama (or a stack-only expansion, already one) has no pairs to fold.
        raise ValueError(
            f"{model_dir} is not a Control-LLM export: its config.json has model_type {config.model_type!r}, "
            f"expected {ControlLLMConfig.model_type!r} with an 'expansion' section listing the concat pairs"
        )
    out = Path(out_dir)
    # replacing out must spare every input, the alpha data and metrics files included
    inputs = [Path(x) for x in (model_dir, alpha_data, metrics) if x is not None]
    check_output(out, inputs, overwrite, overwrite_hint="--overwrite (overwrite=True)")
    model = ControlLLMForCausalLM.from_pretrained(model_dir, config=config, dtype="auto")
    if weight is None and model.config.expansion["method"] != "lerp":
        weight = _dynamic_weight(model, Path(model_dir), alpha_data, metrics, max_tokens)
    merged = fold_pairs(model, weight)
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        for pattern in _CARRIED:
            for path in Path(model_dir).glob(pattern):
                if path.is_dir():
                    shutil.copytree(path, tmp / path.name)
                else:
                    shutil.copy2(path, tmp / path.name)
    return out


def _dynamic_weight(
    model: ControlLLMForCausalLM, model_dir: Path, alpha_data, metrics, max_tokens: int
) -> list[float]:
    if alpha_data is not None:
        rows = alpha_rows(alpha_data, AutoTokenizer.from_pretrained(model_dir), max_tokens)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        weight = measured_alphas(model.to(device), rows)
        model.to("cpu")
        return weight
    step = export_step(model_dir)
    if step is None or metrics is None or not Path(metrics).is_file():
        raise ValueError(
            "dlerp/dlerpin alphas vary per token: pass --alpha-data (evaluation rows; w = their mean alpha) "
            "or --weight. The fallback, the alphas logged at the export's own step, needs "
            f"{model_dir / 'continualm_export.json'} and a metrics.jsonl (looked for {metrics})"
        )
    return logged_alphas(metrics, step)
