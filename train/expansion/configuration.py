"""The Control-LLM expansion settings and the Hugging Face config class of an expanded Llama.

Standalone (torch, transformers and this folder only): shipped verbatim next to saved models so that
`AutoConfig.from_pretrained(dir, trust_remote_code=True)` works without our package.
"""

import difflib
from dataclasses import asdict, dataclass, field

from transformers import LlamaConfig

EXPANSION_TYPES = ("concat", "stack", "hybrid")
METHODS = ("lerp", "dlerp", "dlerpin")
DIVERGENCE_TYPES = ("cosine", "mse")


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown {kind} {value!r}; choose from {list(choices)}.{hint}")


@dataclass
class DivergenceConfig:
    """Alignment loss between the branches of each pair; weight 0 turns it off."""

    type: str = "cosine"
    weight: float = 1.0
    # The reference does not detach h_pre; detaching stops the loss from reaching earlier trainable blocks
    # through the pretrained branch.
    detach_pretrained: bool = False

    def __post_init__(self) -> None:
        _check_choice("divergence type", self.type, DIVERGENCE_TYPES)
        if self.weight < 0:
            raise ValueError(f"divergence weight must be >= 0, got {self.weight}")


@dataclass
class ExpansionConfig:
    """How to expand a Llama: layer count, block type, interpolator and divergence loss."""

    type: str = "concat"
    method: str = "lerp"
    num_exp_layers: int = 16
    interpolation_factor: float = 0.0
    # lerp: theta stays at interpolation_factor. dlerp / dlerpin: only the gate bias is frozen, the gate
    # weight trains (as the reference).
    freeze_interpolation: bool = False
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    # A hub id or a path relative to the model folder; never an absolute path.
    base_model: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.divergence, dict):
            self.divergence = DivergenceConfig(**self.divergence)
        _check_choice("expansion type", self.type, EXPANSION_TYPES)
        _check_choice("interpolation method", self.method, METHODS)
        if self.num_exp_layers < 1:
            raise ValueError(f"num_exp_layers must be >= 1, got {self.num_exp_layers}")
        if self.base_model is not None and self.base_model.startswith("/"):
            raise ValueError(f"base_model must be a hub id or a relative path, got {self.base_model!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class ControlLLMConfig(LlamaConfig):
    """A Llama config whose `expansion` section describes the concat pairs.

    `num_hidden_layers` counts top-level blocks (original plus stacked copies); `expansion["pair_layers"]`
    lists the top-level indices that hold a concat pair, `expansion["stacked_layers"]` those holding
    stacked copies, and `expansion["source_layers"]` the original layer each top-level block came from.
    """

    model_type = "controlllm_llama"
    expansion: dict | None = None

    @property
    def pair_layers(self) -> list[int]:
        return list((self.expansion or {}).get("pair_layers", []))

    @property
    def expansion_config(self) -> ExpansionConfig:
        keys = ExpansionConfig.__dataclass_fields__
        return ExpansionConfig(**{k: v for k, v in (self.expansion or {}).items() if k in keys})
