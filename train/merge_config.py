"""Typed merge configs: one schema per method, on the same strict base as the training recipes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from train.yaml_config import Section

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class MergeError(ValueError):
    """Inputs or options that cannot be merged; the message says what and how to fix it."""


class MergeConfigError(MergeError):
    """A merge YAML or flag set that does not validate."""


Coefficient = Annotated[float, Field(allow_inf_nan=False)]  # a NaN or inf would write a NaN model


class TaskModel(Section):
    path: str
    weight: Coefficient = 1.0


class TaskArithmeticModels(Section):
    base: str
    tasks: list[TaskModel] = Field(min_length=1)


class ChatVector(Section):
    chat: str
    base: str
    ratio: Coefficient = 1.0


class ChatVectorModels(Section):
    cpt: str
    vectors: list[ChatVector] = Field(min_length=1)


class ExpoModels(Section):
    dpo: str
    sft: str


class MergeConfig(Section):
    """Options shared by every method."""

    method: str
    output: Path
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: each tensor keeps its dtype
    max_shard_size: int = 5 * 10**9  # bytes; YAML may say 5GB, 500MB, 4MiB
    overwrite: bool = False

    @field_validator("max_shard_size", mode="before")
    @classmethod
    def _parse_size(cls, value: int | str) -> int:
        return parse_size(value)


class TaskArithmeticConfig(MergeConfig):
    """``base + sum_i w_i (model_i - base)``."""

    method: Literal["task_arithmetic"] = "task_arithmetic"
    models: TaskArithmeticModels


class ChatVectorConfig(MergeConfig):
    """``cpt + sum_i r_i (chat_i - base_i)`` with an explicit policy for embeddings and lm_head."""

    method: Literal["chat_vector"] = "chat_vector"
    models: ChatVectorModels
    vocab_policy: Literal["error", "skip", "shared_rows"] = "error"
    copy_rows: list[int] = []  # token ids whose embed/lm_head rows come from the first chat model
    tokenizer_from: Literal["chat", "cpt"] = "chat"  # cpt: keep an expanded CPT tokenizer

    @model_validator(mode="after")
    def _copy_rows_need_shared_rows(self) -> ChatVectorConfig:
        if self.copy_rows and self.vocab_policy != "shared_rows":
            raise ValueError("copy_rows only applies with vocab_policy: shared_rows")
        return self


class ExpoConfig(MergeConfig):
    """``dpo + alpha (dpo - sft)`` (ExPO model extrapolation)."""

    method: Literal["expo"] = "expo"
    models: ExpoModels
    alpha: Coefficient = 0.3


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as '5GB' or '4MiB'."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"cannot read size {value!r}; write a byte count or e.g. 5GB, 500MB or 4MiB")
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", value, flags=re.IGNORECASE)
        if not match:
            raise ValueError(f"cannot read size {value!r}; write e.g. 5GB, 500MB or 4MiB")
        size = int(float(match[1]) * _UNITS[(match[2] or "B").upper()])
    if size <= 0:
        raise ValueError("must be positive")
    return size
