import pytest

from train.errors import UserError
from train.expansion.placement import placed_layers, plan_expansion


def test_concat16_and_8_on_32_layers():
    assert placed_layers(32, 16) == list(range(1, 32, 2))
    assert placed_layers(32, 8) == list(range(3, 32, 4))


def test_more_expansions_than_layers_expands_every_layer():
    assert placed_layers(4, 16) == [0, 1, 2, 3]


def test_a_count_that_does_not_divide_the_layers_is_refused():
    # every 2nd of 32 layers would be 16 blocks, not the 12 asked for
    with pytest.raises(
        UserError,
        match=r"num_exp_layers 12 does not divide the model's 32 layers; choose one of \[1, 2, 4, 8, 16, 32\]",
    ):
        placed_layers(32, 12)


def test_hybrid16_on_32_layers():
    plan = plan_expansion(32, 16, "hybrid")
    assert len(plan.sources) == 40
    assert len(plan.pairs) == 8 and len(plan.stacked) == 8
    # Stacked copies follow layers 1, 5, ..., 29; side-cars sit on layers 3, 7, ..., 31.
    assert [plan.sources[j] for j in plan.stacked] == list(range(1, 32, 4))
    assert [plan.sources[j] for j in plan.pairs] == list(range(3, 32, 4))
    assert all(plan.sources[j - 1] == plan.sources[j] for j in plan.stacked)


def test_concat_and_stack_layouts():
    concat = plan_expansion(32, 16, "concat")
    assert concat.sources == list(range(32)) and concat.pairs == list(range(1, 32, 2)) and not concat.stacked
    stack = plan_expansion(32, 16, "stack")
    assert len(stack.sources) == 48 and not stack.pairs and len(stack.stacked) == 16
