"""Control-LLM Llama: some blocks are concat pairs (frozen pretrained block + trainable copy, outputs mixed).

Forward contract (`ControlLLMForCausalLM.forward` -> `ControlLLMOutput`, a `CausalLMOutputWithPast`):
- `loss`: the usual shifted cross-entropy when `labels` is given; the divergence is NOT added to it, the
  training loop computes `loss + divergence_loss` itself.
- `divergence_loss`: lambda * mean over the K pairs of each pair's divergence (cosine or mse, mean over real
  tokens: `token_mask` [B, T] if given, else a 2-D `attention_mask`), a scalar tensor in the graph; None when
  lambda is 0.
- `alphas`: detached 1-D tensor of K per-pair mean alphas (mean over real tokens for dlerp/dlerpin), for logging.
- `cache`: a `DynamicCache` where top-level block i uses slot i and pair k's expanded branch uses slot
  num_hidden_layers + k, so generation with cache works with stock `generate`.

Standalone (torch, transformers and this folder only): `save_pretrained` copies this file and its relative
imports next to the weights, so `trust_remote_code=True` loads the model without our package.
"""

from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn
from transformers import initialization as hf_init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from .configuration import ControlLLMConfig, DivergenceConfig
from .divergence import get_divergence, token_mean
from .interpolation import GateLinear, get_interpolator, interpolate


@dataclass
class ControlLLMModelOutput(BaseModelOutputWithPast):
    divergence_loss: torch.FloatTensor | None = None
    alphas: torch.FloatTensor | None = None


@dataclass
class ControlLLMOutput(CausalLMOutputWithPast):
    divergence_loss: torch.FloatTensor | None = None
    alphas: torch.FloatTensor | None = None


class ConcatPair(nn.Module):
    """A frozen pretrained block and its trainable copy, fed the same input; their outputs are interpolated."""

    def __init__(self, config: ControlLLMConfig, layer_idx: int, branch_cache_idx: int):
        super().__init__()
        expansion = config.expansion_config
        self.pretrained_layer = LlamaDecoderLayer(config, layer_idx)
        # Its own cache slot keeps the copy's keys/values apart from the pretrained branch's.
        self.expanded_layer = LlamaDecoderLayer(config, branch_cache_idx)
        self.interpolator = get_interpolator(expansion.method)
        self.interpolation_init = expansion.interpolation_factor
        setattr(
            self, self.interpolator.attr, self.interpolator.build(config.hidden_size, self.interpolation_init)
        )

    @property
    def gate(self) -> nn.Module | nn.Parameter:
        return getattr(self, self.interpolator.attr)

    def reset_interpolator(self, init: ModuleType = hf_init) -> None:
        """Set the interpolator to its starting value (`init` is transformers' or torch's init module)."""
        self.interpolator.reset(self.gate, self.interpolation_init, init)

    def alpha(self, x: torch.Tensor, h_pre: torch.Tensor, h_exp: torch.Tensor) -> torch.Tensor:
        """The mixing weight: shape [1] (lerp) or [B, T, 1] (dlerp, dlerpin)."""
        return self.interpolator.alpha(self.gate, x, h_pre, h_exp)

    def forward(
        self,
        hidden_states: torch.Tensor,
        divergence: DivergenceConfig | None = None,
        token_mask: torch.Tensor | None = None,
        **layer_kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Return the mixed output, the unweighted divergence (None if not asked for) and the mean alpha."""
        h_pre = self.pretrained_layer(hidden_states, **layer_kwargs)
        h_exp = self.expanded_layer(hidden_states, **layer_kwargs)
        alpha = self.alpha(hidden_states, h_pre, h_exp)
        div = None
        if divergence is not None:
            reference = h_pre.detach() if divergence.detach_pretrained else h_pre
            div = get_divergence(divergence.type)(reference, h_exp, token_mask)
        alpha_mean = (
            alpha.float().mean() if alpha.dim() == 1 else token_mean(alpha.squeeze(-1).float(), token_mask)
        )
        return interpolate(h_pre, h_exp, alpha), div, alpha_mean.detach()


def _reserve_branch_slots(cache: Cache, num_slots: int) -> None:
    # A DynamicCache built from the config has one slot per top-level block; the expanded branches need more.
    if cache.layer_class_to_replicate is not None or len(cache.layers) >= num_slots:
        return
    if not isinstance(cache, DynamicCache):
        raise ValueError(
            f"Control-LLM pairs need a DynamicCache with {num_slots} layers, got {type(cache).__name__}"
        )
    cache.layers.extend(DynamicLayer() for _ in range(num_slots - len(cache.layers)))


class ControlLLMPreTrainedModel(LlamaPreTrainedModel):
    config_class = ControlLLMConfig
    config: ControlLLMConfig
    _no_split_modules = ["LlamaDecoderLayer", "ConcatPair"]

    def _init_weights(self, module: nn.Module) -> None:
        # Gates skip the generic Linear init: their bias sets the starting alpha.
        if isinstance(module, GateLinear):
            module.reset_parameters(hf_init)
        else:
            super()._init_weights(module)
        if isinstance(module, ConcatPair):
            module.reset_interpolator()


class ControlLLMModel(ControlLLMPreTrainedModel):
    """The Llama decoder stack with concat pairs at `config.expansion["pair_layers"]`."""

    def __init__(self, config: ControlLLMConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        pairs = config.pair_layers
        self.layers = nn.ModuleList(
            ConcatPair(config, i, config.num_hidden_layers + pairs.index(i))
            if i in pairs
            else LlamaDecoderLayer(config, i)
            for i in range(config.num_hidden_layers)
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        token_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> ControlLLMModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        pairs = self.config.pair_layers
        if cache is not None:
            _reserve_branch_slots(cache, self.config.num_hidden_layers + len(pairs))
        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        seq_len = inputs_embeds.shape[1]
        if token_mask is None and attention_mask is not None and attention_mask.dim() == 2:
            token_mask = attention_mask[:, -seq_len:]
        divergence = self.config.expansion_config.divergence
        divergence = divergence if divergence.weight > 0 else None

        hidden_states = inputs_embeds
        layer_kwargs = dict(
            attention_mask=causal_mask,
            position_embeddings=self.rotary_emb(hidden_states, position_ids=position_ids),
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        all_hidden = [] if output_hidden_states else None
        divs, alphas = [], []
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            if isinstance(layer, ConcatPair):
                hidden_states, div, alpha = layer(hidden_states, divergence, token_mask, **layer_kwargs)
                divs.append(div)
                alphas.append(alpha)
            else:
                hidden_states = layer(hidden_states, **layer_kwargs)
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)

        return ControlLLMModelOutput(
            last_hidden_state=hidden_states,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            divergence_loss=divergence.weight * torch.stack(divs).mean() if divergence and divs else None,
            alphas=torch.stack(alphas) if alphas else None,
        )


class ControlLLMForCausalLM(ControlLLMPreTrainedModel, GenerationMixin):
    """Causal LM head over `ControlLLMModel`; see the module docstring for the output contract."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ControlLLMConfig):
        super().__init__(config)
        self.model = ControlLLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ControlLLMOutput | tuple:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        output = ControlLLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            divergence_loss=outputs.divergence_loss,
            alphas=outputs.alphas,
        )
        return output if return_dict is not False else output.to_tuple()


# save_pretrained writes auto_map and copies this file (and its relative imports) next to the weights.
ControlLLMConfig.register_for_auto_class()
ControlLLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
