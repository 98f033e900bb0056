"""Hand-computed checks: the pair output, the interpolators and the divergence losses against their formulas."""

import pytest
import torch
import torch.nn.functional as F
from conftest import perturb, tiny_llama

from train.expansion import (
    ControlLLMForCausalLM,
    ExpansionConfig,
    apply_freeze_policy,
    expand_model,
    expanded_config,
)
from train.expansion.divergence import cosine_divergence, get_divergence, mse_divergence
from train.expansion.interpolation import get_interpolator, interpolate


def _expected_alpha(method: str, pair, x, h_pre, h_exp) -> torch.Tensor:
    if method == "lerp":
        return torch.sigmoid(pair.interpolation_factor)
    fc = pair.interp_weight.fc
    features = torch.cat([h_pre, h_exp], dim=-1) if method == "dlerp" else x
    return torch.sigmoid(features @ fc.weight.T + fc.bias)


def _branches(model, pair, x) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair's (h_pre, h_exp) recomputed from its input x (attention_mask=None: SDPA masks causally itself)."""
    position_ids = torch.arange(x.shape[1])[None]
    kwargs = dict(
        attention_mask=None,
        position_embeddings=model.model.rotary_emb(x, position_ids),
        position_ids=position_ids,
    )
    return pair.pretrained_layer(x, **kwargs), pair.expanded_layer(x, **kwargs)


def _record_pair_inputs(model) -> dict[int, torch.Tensor]:
    """Filled by the next forward: each pair's input hidden state, by its top-level layer index."""
    seen = {}
    for j in model.config.pair_layers:
        model.model.layers[j].register_forward_pre_hook(lambda mod, args, j=j: seen.__setitem__(j, args[0]))
    return seen


@pytest.mark.parametrize("method", ["lerp", "dlerp", "dlerpin"])
@pytest.mark.parametrize("divergence", ["cosine", "mse"])
@torch.no_grad()
def test_pair_output_and_divergence_match_formula(method, divergence, input_ids):
    cfg = ExpansionConfig(
        type="concat", method=method, num_exp_layers=1, divergence={"type": divergence, "weight": 0.7}
    )
    model = expand_model(tiny_llama(num_layers=2), cfg)
    perturb(model)
    pair = model.model.layers[1]
    seen = {}
    pair.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], out=out[0]))
    outputs = model(input_ids)

    # Recompute the pair from its two blocks (attention_mask=None: SDPA applies the causal mask itself).
    x = seen["x"]
    position_ids = torch.arange(x.shape[1])[None]
    rope = model.model.rotary_emb(x, position_ids)
    h_pre = pair.pretrained_layer(x, attention_mask=None, position_embeddings=rope, position_ids=position_ids)
    h_exp = pair.expanded_layer(x, attention_mask=None, position_embeddings=rope, position_ids=position_ids)
    assert not torch.allclose(h_pre, h_exp)
    a = _expected_alpha(method, pair, x, h_pre, h_exp)
    torch.testing.assert_close(seen["out"], (1 - a) * h_pre + a * h_exp, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        outputs.logits, model.lm_head(model.model.norm(seen["out"])), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(outputs.alphas, a.mean().reshape(1), atol=1e-6, rtol=0)

    if divergence == "cosine":
        cos = (h_pre * h_exp).sum(-1) / (h_pre.norm(dim=-1) * h_exp.norm(dim=-1))
        d = (1 - cos).clamp(min=0)
        per_token = torch.where(d < 1, 0.5 * d**2, d - 0.5)
    else:
        per_token = ((h_exp - h_pre) ** 2).mean(-1)
    torch.testing.assert_close(outputs.divergence_loss, 0.7 * per_token.mean(), atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("divergence", ["cosine", "mse"])
@torch.no_grad()
def test_divergence_loss_is_the_weighted_mean_over_the_pairs(divergence, input_ids):
    cfg = ExpansionConfig(
        type="concat", method="dlerp", num_exp_layers=2, divergence={"type": divergence, "weight": 0.7}
    )
    model = expand_model(tiny_llama(num_layers=4), cfg)
    perturb(model)
    inputs = _record_pair_inputs(model)
    outputs = model(input_ids)

    assert sorted(inputs) == model.config.pair_layers == [1, 3]
    per_pair = [
        get_divergence(divergence)(*_branches(model, model.model.layers[j], inputs[j])) for j in (1, 3)
    ]
    # Pairs that diverge by different amounts, so the mean is told apart from either pair alone.
    assert abs(per_pair[0] - per_pair[1]) > 0.2 * max(per_pair)
    expected = 0.7 * (per_pair[0] + per_pair[1]) / 2
    torch.testing.assert_close(outputs.divergence_loss, expected, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("detach", [False, True])
def test_detach_pretrained_decides_whether_divergence_flows_back_through_the_frozen_block(detach, input_ids):
    """The last pair's divergence reaches its input (so earlier trainable blocks) through the trainable copy
    always, and through the frozen pretrained block only when detach_pretrained is false."""
    divergence = {"type": "mse", "weight": 1.0, "detach_pretrained": detach}
    model = expand_model(tiny_llama(num_layers=4), ExpansionConfig(num_exp_layers=2, divergence=divergence))
    perturb(model)
    apply_freeze_policy(model)
    last = model.model.layers[3]
    seen = _record_pair_inputs(model)
    last.pretrained_layer.register_forward_hook(lambda mod, args, out: seen.update(h_pre=out))
    outputs = model(input_ids)
    assert seen[3].requires_grad  # it depends on the first pair's copy

    grad_h_pre, grad_x = torch.autograd.grad(
        outputs.divergence_loss, [seen["h_pre"], seen[3]], allow_unused=True
    )
    # The last pair's h_pre enters the divergence as the reference only (its mixed output feeds no pair).
    assert (grad_h_pre is None) == detach
    assert detach or grad_h_pre.abs().sum() > 0

    x = seen[3].detach().requires_grad_()
    h_pre, h_exp = _branches(model, last, x)
    # weight 1, mean over 2 pairs; the first pair's divergence does not depend on x
    (through_copy,) = torch.autograd.grad(mse_divergence(h_pre.detach(), h_exp) / 2, x, retain_graph=True)
    (through_both,) = torch.autograd.grad(mse_divergence(h_pre, h_exp) / 2, x)
    assert (through_both - through_copy).norm() > 0.1 * through_copy.norm()
    torch.testing.assert_close(grad_x, through_copy if detach else through_both, atol=1e-7, rtol=1e-4)


def test_divergence_weight_zero_gives_none(input_ids):
    cfg = ExpansionConfig(type="concat", num_exp_layers=2, divergence={"weight": 0.0})
    assert expand_model(tiny_llama(), cfg)(input_ids).divergence_loss is None


def test_divergences_average_over_real_tokens_only():
    g = torch.Generator().manual_seed(0)
    h_pre, h_exp = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    keep = mask.bool()
    d = (1 - F.cosine_similarity(h_pre, h_exp, dim=-1)).clamp(min=0)[keep]
    expected_cos = torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()
    torch.testing.assert_close(cosine_divergence(h_pre, h_exp, mask), expected_cos)
    expected_mse = ((h_exp - h_pre) ** 2).mean(-1)[keep].mean()
    torch.testing.assert_close(mse_divergence(h_pre, h_exp, mask), expected_mse)


@pytest.mark.parametrize("method", ["lerp", "dlerp", "dlerpin"])
def test_identical_branches_have_zero_divergence_and_exact_interpolation(method):
    torch.manual_seed(0)
    h = torch.randn(2, 3, 8)
    assert mse_divergence(h, h.clone()) == 0
    assert cosine_divergence(h, h.clone()) < 1e-12
    interpolator = get_interpolator(method)
    gate = interpolator.build(8, 0.3)
    with torch.no_grad():
        alpha = interpolator.alpha(gate, h, h, h.clone())
    assert ((0.05 < alpha) & (alpha < 0.95)).all()  # a real mix, not an end point
    # Bit for bit (a Control-LLM model equals its base at init), which (1 - a) h + a h is not.
    assert torch.equal(interpolate(h, h.clone(), alpha), h)


@pytest.mark.parametrize("method", ["lerp", "dlerp"])
@torch.no_grad()
def test_bf16_alpha_and_blend_are_computed_in_fp32(method):
    """In bf16, sigmoid rounds to steps of 1/256 near 0.5: a theta of 0.005 would mix at exactly 0.5."""
    torch.manual_seed(0)
    h_pre, h_exp = torch.randn(2, 3, 8).bfloat16(), torch.randn(2, 3, 8).bfloat16()
    interpolator = get_interpolator(method)
    gate = interpolator.build(8, 0.005)
    if method == "dlerp":
        gate.fc.weight.zero_()
    gate = gate.bfloat16()
    alpha = interpolator.alpha(gate, h_pre, h_pre, h_exp)
    assert alpha.dtype == torch.float32
    torch.testing.assert_close(alpha, torch.sigmoid(torch.tensor(0.005)).expand_as(alpha))
    blend = interpolate(h_pre, h_exp, alpha)
    expected = (h_pre.double() + alpha.double() * (h_exp.double() - h_pre.double())).bfloat16()
    assert blend.dtype == torch.bfloat16 and (blend.float() - expected.float()).abs().max() <= 2**-7


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'dlerp'"):
        get_interpolator("dlrep")
    with pytest.raises(ValueError, match="Did you mean 'cosine'"):
        ExpansionConfig(divergence={"type": "cosin"})
    with pytest.raises(ValueError, match="hub id or a relative path"):
        ExpansionConfig(base_model="/home/me/llama")


@pytest.mark.parametrize("method", ["lerp", "dlerp", "dlerpin"])
def test_interpolator_init_from_config(method):
    """A model built from its config alone (as from_pretrained does for missing keys) starts at interpolation_factor."""
    cfg = ExpansionConfig(type="concat", method=method, num_exp_layers=2, interpolation_factor=0.3)
    model = ControlLLMForCausalLM(expanded_config(tiny_llama().config, cfg))
    for j in model.config.pair_layers:
        gate = model.model.layers[j].gate
        start = gate if method == "lerp" else gate.fc.bias
        torch.testing.assert_close(start.detach(), torch.tensor([0.3]))


@pytest.mark.parametrize("method", ["lerp", "dlerp"])
@torch.no_grad()
def test_padding_of_a_packed_row_is_left_out_of_divergence_and_alpha(method, input_ids):
    from train.loop import real_tokens

    cfg = ExpansionConfig(type="concat", method=method, num_exp_layers=1, divergence={"weight": 1.0})
    model = expand_model(tiny_llama(num_layers=2), cfg)
    perturb(model)
    sample = input_ids[:1, :5]
    row = torch.cat([sample, torch.zeros(1, 3, dtype=torch.long)], 1)  # + a pad segment without targets
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
    labels = torch.cat([torch.full((1, 1), -100), sample[:, 1:], torch.full((1, 3), -100)], 1)
    mask = real_tokens(positions, labels)
    assert mask.tolist() == [[True] * 5 + [False] * 3]
    alone, packed = model(sample), model(row, position_ids=positions, token_mask=mask)
    torch.testing.assert_close(packed.divergence_loss, alone.divergence_loss)
    torch.testing.assert_close(packed.alphas, alone.alphas)
    assert not torch.allclose(model(row, position_ids=positions).divergence_loss, alone.divergence_loss)


@torch.no_grad()
def test_a_padded_batch_masks_divergence_and_alpha_by_its_attention_mask(input_ids):
    # an HF-style batch (the Trainer, generation) says where its padding is in attention_mask alone
    cfg = ExpansionConfig(type="concat", method="dlerp", num_exp_layers=1, divergence={"weight": 1.0})
    model = expand_model(tiny_llama(num_layers=2), cfg)
    perturb(model)
    mask = torch.ones_like(input_ids)
    mask[1, 5:] = 0  # the second sample is 5 tokens, right-padded
    padded = model(input_ids, attention_mask=mask)
    masked = model(input_ids, attention_mask=mask, token_mask=mask)
    torch.testing.assert_close(padded.divergence_loss, masked.divergence_loss)
    torch.testing.assert_close(padded.alphas, masked.alphas)
    unmasked = model(input_ids, attention_mask=mask, token_mask=torch.ones_like(mask))
    assert not torch.allclose(unmasked.divergence_loss, masked.divergence_loss)
