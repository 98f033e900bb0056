"""Control-LLM expansion of Llama models: concat / stack / hybrid blocks, interpolators, divergence loss.

Importing this package registers `controlllm_llama` with `AutoConfig` and `AutoModelForCausalLM`.

Use from the training loop (before the DeepSpeed engine is built):
    model = expand_model(base, ExpansionConfig(type="concat", method="lerp", num_exp_layers=16))
    total, trainable, frozen = apply_freeze_policy(model)          # or ("partial", n) / ("full") on a plain Llama
    out = model(input_ids, labels=labels, position_ids=position_ids)
    loss = out.loss + out.divergence_loss if out.divergence_loss is not None else out.loss
    log(out.alphas)                                                 # 1-D, one mean alpha per pair
Stack-only expansion returns a plain, deeper `LlamaForCausalLM` (its outputs have no divergence / alphas).
`build_meta(llama_config, cfg)` gives the same model on the meta device for dry runs and counts.
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
