"""At step 0 every expanded model computes exactly what the base computes, with and without KV cache."""

import pytest
import torch
from conftest import perturb, tiny_llama
from transformers import DynamicCache

from train.expansion import ControlLLMForCausalLM, ExpansionConfig, expand_model

TYPES = ["concat", "stack", "hybrid"]
METHODS = ["lerp", "dlerp", "dlerpin"]


@torch.no_grad()
def _cached_logits(model, input_ids, prefill: int) -> torch.Tensor:
    """Logits from a prefill followed by one-token decode steps through a DynamicCache."""
    cache = DynamicCache(config=model.config)
    logits = [model(input_ids[:, :prefill], cache=cache, use_cache=True).logits]
    for t in range(prefill, input_ids.shape[1]):
        logits.append(model(input_ids[:, t : t + 1], cache=cache, use_cache=True).logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("expansion_type", TYPES)
@pytest.mark.parametrize("method", METHODS)
@torch.no_grad()
def test_logits_equal_base_at_init(expansion_type, method, input_ids):
    base = tiny_llama()
    reference = base(input_ids).logits
    reference_cached = _cached_logits(base, input_ids, prefill=5)
    model = expand_model(base, ExpansionConfig(type=expansion_type, method=method, num_exp_layers=2)).eval()
    assert isinstance(model, ControlLLMForCausalLM) == (expansion_type != "stack")
    torch.testing.assert_close(model(input_ids).logits, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        _cached_logits(model, input_ids, prefill=5), reference_cached, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize(
    ("expansion_type", "method"), [("concat", "dlerp"), ("hybrid", "lerp"), ("hybrid", "dlerpin")]
)
@torch.no_grad()
def test_greedy_generate_with_cache_matches_no_cache(expansion_type, method, input_ids):
    model = expand_model(tiny_llama(), ExpansionConfig(type=expansion_type, method=method, num_exp_layers=2))
    perturb(model, scale=0.2)
    mask = torch.ones_like(input_ids)
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = model.generate(input_ids, use_cache=True, **kwargs)
    without_cache = model.generate(input_ids, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without_cache)
    # And each cached step's logits match a full no-cache forward over the same tokens.
    torch.testing.assert_close(
        _cached_logits(model, with_cache, prefill=input_ids.shape[1]),
        model(with_cache).logits,
        atol=1e-5,
        rtol=0,
    )
