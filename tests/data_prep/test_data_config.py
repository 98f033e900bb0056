"""The data section of a recipe: registry names, adapters and mixture keys are checked at load time."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from train.config import DataConfig


def data(**kw) -> DataConfig:
    return DataConfig.model_validate({"seq_len": 16, **kw})


def test_registry_name_and_adapter_suggestions():
    with pytest.raises(
        ValidationError, match="name 'alpaca_zn' is not in the registry. Did you mean 'alpaca_zh'"
    ):
        data(sources=[{"name": "alpaca_zn"}])
    with pytest.raises(ValidationError, match="adapter 'sharegtp' is unknown. Did you mean 'sharegpt'"):
        data(sources=[{"path": "x.jsonl", "adapter": "sharegtp"}])


def test_labels_default_and_stage_weights_must_name_sources():
    cfg = data(sources=[{"name": "alpaca_zh", "path": "a.json"}, {"path": "b.jsonl"}])
    assert [s.label for s in cfg.sources] == ["alpaca_zh", "b.jsonl"]
    with pytest.raises(
        ValidationError, match=r"data.stages.0.weights: unknown source 'alpaca_zn'. Did you mean"
    ):
        data(sources=[{"name": "alpaca_zh"}], stages=[{"tokens": 10, "weights": {"alpaca_zn": 1}}])
    with pytest.raises(ValidationError, match=r"data.stages.0.weights must be positive"):
        data(sources=[{"name": "alpaca_zh"}], stages=[{"weights": {"alpaca_zh": 0}}])
    with pytest.raises(ValidationError, match=r"data.stages.0.tokens is required"):
        data(
            sources=[{"name": "alpaca_zh"}],
            stages=[{"weights": {"alpaca_zh": 1}}, {"weights": {"alpaca_zh": 1}}],
        )


def test_weights_on_all_sources_or_none():
    with pytest.raises(ValidationError, match="on every source or on none"):
        data(sources=[{"path": "a", "weight": 1}, {"path": "b"}])
    with pytest.raises(ValidationError, match="labels must be unique"):
        data(sources=[{"path": "a"}, {"path": "a"}])
