"""Suite aggregates over training steps, from the results JSONs under a run folder: forgetting versus gain."""

from __future__ import annotations

import json
from pathlib import Path


def collect(run_dir: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{card: {aggregate: [(step, value), ...]}} from every results JSON (with a step) under run_dir; an aggregate
    of partial columns is a series of its own, "<aggregate> (partial)"."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for path in sorted(Path(run_dir).rglob("*.json")):
        if any(".prev-" in part for part in path.relative_to(run_dir).parts):
            continue  # an earlier run's results, set aside by a fresh run in the folder
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(record, dict) or record.get("step") is None or "aggregates" not in record:
            continue
        for card, board in record["aggregates"].items():
            partial = board.get("partial", [])  # absent in results written before partial boards were marked
            for name, value in board["aggregates"].items():
                if value is not None:
                    # a partial aggregate never joins the line of the card-comparable one
                    label = f"{name} (partial)" if name in partial else name
                    series.setdefault(card, {}).setdefault(label, []).append((record["step"], value))
    return {card: {k: sorted(v) for k, v in aggs.items()} for card, aggs in series.items()}


def plot(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw one panel per card with its aggregates against the step; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    series = collect(run_dir)
    if not series:
        raise FileNotFoundError(f"no results JSON with a step and aggregates under {run_dir}")
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.5), squeeze=False)
    for ax, (card, aggs) in zip(axes[0], sorted(series.items()), strict=True):
        for name, points in aggs.items():
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o", label=name)
        ax.set(title=card, xlabel="step")
        ax.legend()
    out = Path(out) if out else Path(run_dir) / "eval_aggregates.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
