"""Control-LLM expansion of Llama models: concat / stack / hybrid blocks, interpolators, divergence loss.

Importing this package registers `controlllm_llama` with `AutoConfig` and `AutoModelForCausalLM`.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .build import apply_freeze_policy, build_meta, count_parameters, expand_model, expanded_config
from .configuration import ControlLLMConfig, DivergenceConfig, ExpansionConfig
from .merge_back import fold_pairs, merge_back
from .modeling import ConcatPair, ControlLLMForCausalLM, ControlLLMOutput
from .placement import placed_layers, plan_expansion

AutoConfig.register(ControlLLMConfig.model_type, ControlLLMConfig, exist_ok=True)
AutoModelForCausalLM.register(ControlLLMConfig, ControlLLMForCausalLM, exist_ok=True)

__all__ = [
    "ConcatPair",
    "ControlLLMConfig",
    "ControlLLMForCausalLM",
    "ControlLLMOutput",
    "DivergenceConfig",
    "ExpansionConfig",
    "apply_freeze_policy",
    "build_meta",
    "count_parameters",
    "expand_model",
    "expanded_config",
    "fold_pairs",
    "merge_back",
    "placed_layers",
    "plan_expansion",
]
