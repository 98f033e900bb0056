"""Where Control-LLM puts its expanded blocks (see docs: shared/reference/control_llm.md)."""

from dataclasses import dataclass

from train.errors import UserError


def placed_layers(num_layers: int, num_exp_layers: int) -> list[int]:
    """Original layer indices (0-based) to expand: every `split`-th layer, the last one always included."""
    if num_layers < 1 or num_exp_layers < 1:
        raise ValueError(
            f"need num_layers >= 1 and num_exp_layers >= 1, got {num_layers} and {num_exp_layers}"
        )
    if num_exp_layers < num_layers and num_layers % num_exp_layers:
        # Every split-th layer would give more blocks than asked; the reference code caps them differently
        # per layout, so a released checkpoint of that shape would not match ours.
        divisors = [d for d in range(1, num_layers + 1) if num_layers % d == 0]
        raise UserError(
            f"expansion.num_exp_layers {num_exp_layers} does not divide the model's {num_layers} layers; "
            f"choose one of {divisors} (or >= {num_layers} to expand every layer)"
        )
    split = max(num_layers // num_exp_layers, 1)
    return [i for i in range(num_layers) if (i + 1) % split == 0]


@dataclass(frozen=True)
class Plan:
    """The expanded layout: one entry per top-level block, in order.

    `sources[j]` is the original layer index block j starts from; `stacked` lists the top-level indices of
    inserted identity copies (zeroed o_proj/down_proj) and `pairs` those of concat pairs.
    """

    sources: list[int]
    stacked: list[int]
    pairs: list[int]


def plan_expansion(num_layers: int, num_exp_layers: int, expansion_type: str) -> Plan:
    """Lay out the top-level blocks for `concat`, `stack` or `hybrid` (stack 1st, 3rd... placed; concat 2nd, 4th...)."""
    if expansion_type not in ("concat", "stack", "hybrid"):
        raise ValueError(f"unknown expansion type {expansion_type!r}; expected concat, stack or hybrid")
    sources: list[int] = []
    stacked: list[int] = []
    pairs: list[int] = []
    placed = placed_layers(num_layers, num_exp_layers)
    for i in range(num_layers):
        sources.append(i)
        if i not in placed:
            continue
        rank = placed.index(i)
        if expansion_type == "concat" or (expansion_type == "hybrid" and rank % 2 == 1):
            pairs.append(len(sources) - 1)
        else:
            sources.append(i)
            stacked.append(len(sources) - 1)
    return Plan(sources=sources, stacked=stacked, pairs=pairs)
