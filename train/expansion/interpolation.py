"""Interpolators that mix a concat pair's branches: h = (1 - alpha) h_pre + alpha h_exp.

Each interpolator owns how its parameters are named on the pair, so the state-dict keys match the released
Control-LLM checkpoints: `interpolation_factor` (lerp, shape [1]) and `interp_weight.fc.{weight,bias}`
(dlerp, dlerpin). This file imports only torch and the standard library: it is shipped verbatim next to
saved models for `trust_remote_code` loading.
"""

import difflib
import math

import torch
from torch import nn


class Gate(nn.Module):
    """A one-output linear gate; `fc` keeps the released key name."""

    def __init__(self, in_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, 1)


class Lerp:
    """alpha = sigmoid(theta), one scalar per pair."""

    attr = "interpolation_factor"

    @staticmethod
    def build(hidden_size: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(1))

    @staticmethod
    def reset(param: nn.Parameter, factor: float, init) -> None:
        init.constant_(param, factor)

    @staticmethod
    def alpha(param: nn.Parameter, x: torch.Tensor, h_pre: torch.Tensor, h_exp: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(param)


class DLerp:
    """alpha_t = sigmoid(w . [h_pre_t ; h_exp_t] + b), per token."""

    attr = "interp_weight"
    fan_in = 2

    @classmethod
    def build(cls, hidden_size: int) -> Gate:
        return Gate(cls.fan_in * hidden_size)

    @staticmethod
    def reset(gate: Gate, factor: float, init) -> None:
        # The weight keeps torch's default Linear init, as the reference; the bias sets the starting alpha.
        init.kaiming_uniform_(gate.fc.weight, a=math.sqrt(5))
        init.constant_(gate.fc.bias, factor)

    @staticmethod
    def alpha(gate: Gate, x: torch.Tensor, h_pre: torch.Tensor, h_exp: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(gate.fc(torch.cat([h_pre, h_exp], dim=-1)))


class DLerpIn(DLerp):
    """alpha_t = sigmoid(w . x_t + b), per token, from the pair's input."""

    fan_in = 1

    @staticmethod
    def alpha(gate: Gate, x: torch.Tensor, h_pre: torch.Tensor, h_exp: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(gate.fc(x))


INTERPOLATORS = {"lerp": Lerp, "dlerp": DLerp, "dlerpin": DLerpIn}


def get_interpolator(name: str):
    """Look an interpolator up by name, suggesting the closest one for a typo."""
    if name not in INTERPOLATORS:
        close = difflib.get_close_matches(name, INTERPOLATORS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown interpolation method {name!r}; choose from {sorted(INTERPOLATORS)}.{hint}")
    return INTERPOLATORS[name]


def interpolate(h_pre: torch.Tensor, h_exp: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(1 - alpha) h_pre + alpha h_exp, written so that identical branches return h_pre bit for bit."""
    return h_pre + alpha.to(h_pre.dtype) * (h_exp - h_pre)
