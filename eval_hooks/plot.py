"""Suite aggregates over training steps, from the results JSONs under a run folder: forgetting versus gain."""

from __future__ import annotations

import json
from pathlib import Path


def collect(run_dir: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{card: {aggregate: [(step, value), ...]}} from every results JSON (with a step) under run_dir."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for path in sorted(Path(run_dir).rglob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(record, dict) or record.get("step") is None or "aggregates" not in record:
            continue
        for card, board in record["aggregates"].items():
            for name, value in board["aggregates"].items():
                if value is not None:
                    series.setdefault(card, {}).setdefault(name, []).append((record["step"], value))
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
