"""Convert a released Control-LLM checkpoint folder (the reference code's config format) to our format.

The reference (linkedin/ControlLLM, `src/controlllm/utils/model_expander.py`) saves concat and hybrid models
with `model_type: "causallmexpansion"`, `architectures: ["LlamaForCausalLMExpansion"]` and an `expansion`
dict (`expand_type`, `merge_method`, `freezed_layers`, `expanded_from`, `num_ori_layers`, `num_exp_layers`,
`interpolation_*`, `freeze_*`); stack models keep `model_type: "llama"` with the same dict. Its state-dict
keys are already ours, so conversion rewrites only config.json (our `ControlLLMConfig`, plus our modeling
files for `trust_remote_code`) and copies the other top-level files byte for byte (not the reference's *.py
modeling code, nor subfolders), after checking each tensor name and shape against the model our config
describes. Anything we cannot reproduce exactly is refused, naming the config key.
"""

import json
import logging
import shutil
from pathlib import Path
from typing import NoReturn

import torch
from safetensors import SafetensorError, safe_open
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.dynamic_module_utils import custom_object_save

from train.merge_io import atomic_dir, check_output

from .build import expanded_config, llama_fields
from .configuration import DIVERGENCE_TYPES, METHODS, ControlLLMConfig, ExpansionConfig
from .modeling import ControlLLMForCausalLM

logger = logging.getLogger(__name__)

# The layout keys; with _DEFAULTS these are all the keys the reference's `_set_expansion_configs` writes,
# and any other key is refused.
_REQUIRED = ("expand_type", "freezed_layers", "num_ori_layers", "num_exp_layers")
# Optional keys with the defaults the reference itself uses when loading (`_expand_model_for_register`).
_DEFAULTS = {
    "merge_method": None,
    "expanded_from": None,
    "interpolation_factor": None,
    "interpolation_loss_alpha": 0,
    "interpolation_loss_type": "cosine",
    "interpolation_norm_alpha": 0,
    "freeze_interpolation_factor": False,
    "freeze_ori_layers": True,
    "freeze_ori_non_layers": True,
}
# Top-level keys that belong to the reference's class, not to the Llama architecture.
_REFERENCE_ONLY = ("trained_from",)
_MODEL_TYPES = {"concat": "causallmexpansion", "hybrid": "causallmexpansion", "stack": "llama"}
_ARCHITECTURES = {"causallmexpansion": "LlamaForCausalLMExpansion", "llama": "LlamaForCausalLM"}


class ReleasedFormatError(ValueError):
    """A released checkpoint uses a value we do not support; the message names the config key."""


def _fail(key: str, value, why: str) -> NoReturn:
    raise ReleasedFormatError(f"config.json {key} = {value!r}: {why}")


def _expansion_config(raw: dict, base_model: str | None) -> ExpansionConfig:
    exp = raw.get("expansion")
    if not isinstance(exp, dict):
        _fail(
            "expansion", exp, "not a Control-LLM checkpoint (no expansion section); load it as a plain model"
        )
    for key in exp:
        if key not in _REQUIRED and key not in _DEFAULTS:
            _fail(f"expansion.{key}", exp[key], f"unknown key; expected {sorted([*_REQUIRED, *_DEFAULTS])}")
    for key in _REQUIRED:
        if key not in exp:
            _fail(f"expansion.{key}", None, "missing")
    e = {**_DEFAULTS, **exp}

    expand_type = e["expand_type"]
    if expand_type not in _MODEL_TYPES:
        _fail("expansion.expand_type", expand_type, f"choose from {sorted(_MODEL_TYPES)}")
    if raw.get("model_type") != _MODEL_TYPES[expand_type]:
        _fail(
            "model_type",
            raw.get("model_type"),
            f"a {expand_type} checkpoint has {_MODEL_TYPES[expand_type]!r}",
        )
    architecture = _ARCHITECTURES[_MODEL_TYPES[expand_type]]
    if raw.get("architectures") != [architecture]:
        _fail(
            "architectures", raw.get("architectures"), f"only Llama bases are supported ([{architecture!r}])"
        )
    n = e["num_exp_layers"]
    if isinstance(n, int) and n < 0:
        _fail("expansion.num_exp_layers", n, "negative: merged back already, a plain Llama; load it directly")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        _fail("expansion.num_exp_layers", n, "must be an integer >= 1")
    layers = e["num_ori_layers"]
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        _fail("expansion.num_ori_layers", layers, "must be an integer >= 1")
    frozen = e["freezed_layers"]
    if not isinstance(frozen, list) or not all(isinstance(i, int) for i in frozen):
        _fail("expansion.freezed_layers", frozen, "must be a list of block indices")
    for key in ("freeze_ori_layers", "freeze_ori_non_layers"):
        if e[key] is not True:
            _fail(
                f"expansion.{key}",
                e[key],
                "only True (original blocks and non-block weights frozen) is supported",
            )

    fields = {"type": expand_type, "num_exp_layers": e["num_exp_layers"]}
    if expand_type != "stack":  # stack has no pairs: interpolation and divergence settings play no part
        fields.update(_pair_fields(e))
    expanded_from = base_model if base_model is not None else e["expanded_from"]
    if expanded_from is not None and Path(expanded_from).is_absolute():
        # The reference records the authors' file system path; ours keeps hub ids or relative paths only.
        logger.warning("expansion.expanded_from %r is an absolute path: base_model left unset", expanded_from)
        expanded_from = None
    return ExpansionConfig(**fields, base_model=expanded_from)


def _pair_fields(e: dict) -> dict:
    method = e["merge_method"]
    if method not in METHODS:
        _fail("expansion.merge_method", method, f"supported: {list(METHODS)} (not slerp, moe, proj, prog)")
    factor = e["interpolation_factor"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        _fail(
            "expansion.interpolation_factor",
            factor,
            "must be a number (None, 'no interpolation', is unsupported)",
        )
    norm_alpha = e["interpolation_norm_alpha"]
    if norm_alpha != 0:
        _fail("expansion.interpolation_norm_alpha", norm_alpha, "only 0 is supported (no relaxed layer norm)")
    loss_alpha = e["interpolation_loss_alpha"]
    if isinstance(loss_alpha, bool) or not isinstance(loss_alpha, (int, float)) or loss_alpha < 0:
        _fail(
            "expansion.interpolation_loss_alpha",
            loss_alpha,
            "must be >= 0 (-1, alpha-scaled, is unsupported)",
        )
    loss_type = e["interpolation_loss_type"]
    if loss_type not in DIVERGENCE_TYPES:
        _fail("expansion.interpolation_loss_type", loss_type, f"supported: {list(DIVERGENCE_TYPES)}")
    freeze = e["freeze_interpolation_factor"]
    if not isinstance(freeze, bool):
        _fail("expansion.freeze_interpolation_factor", freeze, "must be true or false")
    return {
        "method": method,
        "interpolation_factor": float(factor),
        "freeze_interpolation": freeze,
        "divergence": {"type": loss_type, "weight": float(loss_alpha)},
    }


def released_config(raw: dict, base_model: str | None = None) -> LlamaConfig:
    """Our config (ControlLLMConfig, or LlamaConfig for stack) for a released config.json's dict.

    `base_model` overrides `expansion.expanded_from` (kept only when it is a hub id or relative path).
    """
    ecfg = _expansion_config(raw, base_model)
    exp = raw["expansion"]
    fields = llama_fields(LlamaConfig(**{k: v for k, v in raw.items() if k not in _REFERENCE_ONLY}))
    base = LlamaConfig(**{**fields, "num_hidden_layers": exp["num_ori_layers"]})
    config = expanded_config(base, ecfg)
    if raw.get("num_hidden_layers") != config.num_hidden_layers:
        _fail(
            "num_hidden_layers",
            raw.get("num_hidden_layers"),
            f"{ecfg.type} of {exp['num_exp_layers']} layers on {exp['num_ori_layers']} gives "
            f"{config.num_hidden_layers} blocks",
        )
    # The reference's freezed_layers are the top-level blocks that are neither stacked copies nor pairs.
    layout = config.expansion
    trained = set(layout["stacked_layers"]) | set(layout["pair_layers"])
    expected = [i for i in range(config.num_hidden_layers) if i not in trained]
    if sorted(exp["freezed_layers"]) != expected:
        _fail("expansion.freezed_layers", exp["freezed_layers"], f"our placement rule gives {expected}")
    return config


def _weight_shapes(folder: Path) -> dict[str, list[int]]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ReleasedFormatError(f"{folder} has no *.safetensors weights (only safetensors are supported)")
    shapes = {}
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    shapes[key] = list(f.get_slice(key).get_shape())
        except SafetensorError as err:  # truncated (an interrupted download) or not safetensors at all
            raise ReleasedFormatError(f"cannot read weights file {file}: {err}") from None
    return shapes


def _meta_model(config: LlamaConfig) -> LlamaForCausalLM | ControlLLMForCausalLM:
    with torch.device("meta"):
        return (
            ControlLLMForCausalLM(config)
            if isinstance(config, ControlLLMConfig)
            else LlamaForCausalLM(config)
        )


def _check_weights(folder: Path, model: LlamaForCausalLM | ControlLLMForCausalLM) -> None:
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    found = _weight_shapes(folder)
    if model.config.tie_word_embeddings:  # the tied head may or may not be written
        expected.pop("lm_head.weight", None)
        found.pop("lm_head.weight", None)
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if missing or unexpected or wrong:
        raise ReleasedFormatError(
            f"{folder}: weights do not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {[(k, found[k], expected[k]) for k in wrong[:5]]}"
        )


def convert_released(src: Path, out: Path, base_model: str | None = None, overwrite: bool = False) -> Path:
    """Write `src` (a released Control-LLM folder) to `out` in our format: same weights, our config.json."""
    src, out = Path(src), Path(out)
    raw = json.loads((src / "config.json").read_text())
    config = released_config(raw, base_model)
    model = _meta_model(config)
    _check_weights(src, model)
    check_output(out, [src], overwrite, overwrite_hint="--overwrite")
    with atomic_dir(out) as tmp:
        for file in sorted(src.iterdir()):
            # Weights, index, tokenizer, generation config, evaluation results...: copied as they are.
            if file.is_file() and file.name != "config.json" and file.suffix != ".py":
                shutil.copy2(file, tmp / file.name)
        config.architectures = [type(model).__name__]
        if model.is_remote_code():  # writes auto_map and copies our modeling files, as save_pretrained does
            custom_object_save(model, tmp, config=config)
        config.save_pretrained(tmp)
    logger.info("converted %s (%s) to %s", src, config.expansion["type"], out)
    return out
