"""What trains: only the copies and (unless frozen) the interpolators; and the partial / full baselines."""

from collections import Counter

import pytest
import torch
from conftest import perturb, tiny_llama

from train.expansion import ExpansionConfig, apply_freeze_policy, count_parameters, expand_model


def _is_trainable_part(name: str, stacked: list[int]) -> bool:
    return "expanded_layer" in name or "interp" in name or any(f"layers.{j}." in name for j in stacked)


@pytest.mark.parametrize(("expansion_type", "method"), [("concat", "dlerp"), ("hybrid", "lerp")])
def test_one_step_changes_only_copies_and_interpolators(expansion_type, method, input_ids):
    model = expand_model(tiny_llama(), ExpansionConfig(type=expansion_type, method=method, num_exp_layers=2))
    perturb(model)
    model.train()
    total, trainable, frozen = apply_freeze_policy(model)
    assert (total, trainable + frozen) == (count_parameters(model)[0], total)
    stacked = model.config.expansion["stacked_layers"]
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names == {name for name, _ in model.named_parameters() if _is_trainable_part(name, stacked)}

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0
    )
    outputs = model(input_ids, labels=input_ids)
    (outputs.loss + outputs.divergence_loss).backward()
    optimizer.step()

    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= names
    # Every pair's copy and interpolator and every stacked copy moved; frozen parameters got no gradient.
    pairs = model.config.pair_layers
    gate = model.model.layers[pairs[0]].interpolator.attr
    parts = [f"model.layers.{j}.{part}." for j in pairs for part in ("expanded_layer", gate)]
    parts += [f"model.layers.{j}." for j in stacked]
    assert [part for part in parts if not any(f"{name}.".startswith(part) for name in changed)] == []
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_frozen_interpolation_factor_stays_frozen():
    cfg = ExpansionConfig(type="concat", method="lerp", num_exp_layers=2, freeze_interpolation=True)
    model = expand_model(tiny_llama(), cfg)
    apply_freeze_policy(model)
    assert not any(p.requires_grad for name, p in model.named_parameters() if "interpolation_factor" in name)
    assert any(p.requires_grad for name, p in model.named_parameters() if "expanded_layer" in name)


@pytest.mark.parametrize("method", ["dlerp", "dlerpin"])
def test_frozen_dlerp_gate_freezes_only_its_bias(method, input_ids):
    """As the reference's dlerp / dlerpin: freezing fixes fc.bias, the gate weight keeps training."""
    cfg = ExpansionConfig(type="concat", method=method, num_exp_layers=2, freeze_interpolation=True)
    model = expand_model(tiny_llama(), cfg)
    perturb(model)
    apply_freeze_policy(model)
    gate = {name: p for name, p in model.named_parameters() if "interp_weight" in name}
    assert len(gate) == 4  # two pairs, fc.weight and fc.bias each
    trainable = {name for name, p in gate.items() if p.requires_grad}
    assert trainable == {name for name in gate if name.endswith("fc.weight")}
    model.train()
    outputs = model(input_ids, labels=input_ids)
    (outputs.loss + outputs.divergence_loss).backward()
    assert all((p.grad is not None) == (name in trainable) for name, p in gate.items())
    assert all(gate[name].grad.abs().sum() > 0 for name in trainable)


def test_partial_and_full_baselines():
    model = tiny_llama()
    total, trainable, _ = apply_freeze_policy(model, "partial", num_exp_layers=2)
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    assert trainable == 2 * per_layer
    assert {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad} == {"1", "3"}
    assert apply_freeze_policy(model, "full") == (total, total, 0)
    with pytest.raises(ValueError, match="Did you mean 'partial'"):
        apply_freeze_policy(model, "parital")


def _count_branch_runs(model) -> Counter:
    """Counts, by (pair index, branch), how often each branch's MLP runs, a backward's recompute included.

    The MLP's own forward is wrapped: transformers checkpoints a block's forward inside the block's hooks,
    and a non-reentrant recompute fires no module hooks, so a hook would not see the recompute.
    """
    runs = Counter()

    def counted(forward, key):
        def run(*args, **kwargs):
            runs[key] += 1
            return forward(*args, **kwargs)

        return run

    for j in model.config.pair_layers:
        for branch in ("pretrained_layer", "expanded_layer"):
            mlp = getattr(model.model.layers[j], branch).mlp
            mlp.forward = counted(mlp.forward, (j, branch))
    return runs


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_covers_both_branches(use_reentrant, input_ids):
    def loss_grads_and_runs(checkpointing: bool):
        model = expand_model(tiny_llama(), ExpansionConfig(type="hybrid", method="dlerp", num_exp_layers=4))
        perturb(model)
        apply_freeze_policy(model)
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
        runs = _count_branch_runs(model)
        outputs = model(input_ids, labels=input_ids)
        (outputs.loss + outputs.divergence_loss).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        return outputs.loss, grads, dict(runs), model.config.pair_layers

    loss, grads, runs, pairs = loss_grads_and_runs(False)
    loss_ckpt, grads_ckpt, runs_ckpt, _ = loss_grads_and_runs(True)
    # Each branch of every pair, the frozen one too, runs once more: recomputed in the backward.
    branches = [(j, branch) for j in pairs for branch in ("pretrained_layer", "expanded_layer")]
    assert len(branches) == 4
    assert runs == dict.fromkeys(branches, 1)
    assert runs_ckpt == dict.fromkeys(branches, 2)
    torch.testing.assert_close(loss_ckpt, loss)
    for g, g_ckpt in zip(grads, grads_ckpt, strict=True):
        torch.testing.assert_close(g_ckpt, g, atol=1e-6, rtol=1e-5)
