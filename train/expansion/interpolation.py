"""Interpolators that mix a concat pair's branches: h = (1 - alpha) h_pre + alpha h_exp.

Each interpolator owns how its parameters are named on the pair, so the state-dict keys match the released
Control-LLM checkpoints: `interpolation_factor` (lerp, shape [1]) and `interp_weight.fc.{weight,bias}`
(dlerp, dlerpin). This file imports only torch and the standard library: it is shipped verbatim next to
saved models for `trust_remote_code` loading.
"""

import difflib
import math
from types import ModuleType

import torch
from torch import nn


class GateLinear(nn.Linear):
    """A one-output Linear whose bias starts at the interpolation factor (so alpha starts at sigmoid of it)."""

    def __init__(self, in_features: int, init_bias: float):
        self.init_bias = init_bias
        super().__init__(in_features, 1)

    def reset_parameters(self, init: ModuleType = torch.nn.init) -> None:
        # The weight keeps torch's default Linear init, as the reference; `init` may be transformers'
        # flag-respecting module so that loaded weights are left alone.
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        init.constant_(self.bias, self.init_bias)


class Gate(nn.Module):
    """Holds the gate as `fc`, the released key name."""

    def __init__(self, in_features: int, init_bias: float):
        super().__init__()
        self.fc = GateLinear(in_features, init_bias)


class Lerp:
    """alpha = sigmoid(theta), one scalar per pair (in fp32: in bf16 it moves only in steps of 1/256 near 0.5,
    so training's alpha would lag its fp32 master theta, which merge-back folds with)."""

    attr = "interpolation_factor"

    @staticmethod
    def build(hidden_size: int, factor: float) -> nn.Parameter:
        return nn.Parameter(torch.full((1,), float(factor)))

    @staticmethod
    def reset(param: nn.Parameter, factor: float, init: ModuleType) -> None:
        init.constant_(param, factor)

    @staticmethod
    def set_trainable(param: nn.Parameter, freeze: bool) -> None:
        """`freeze` fixes theta, so alpha stays sigmoid(interpolation_factor)."""
        param.requires_grad_(not freeze)

    @staticmethod
    def alpha(param: nn.Parameter, x: torch.Tensor, h_pre: torch.Tensor, h_exp: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(param.float())


class DLerp:
    """alpha_t = sigmoid(w . [h_pre_t ; h_exp_t] + b), per token."""

    attr = "interp_weight"
    fan_in = 2

    @classmethod
    def build(cls, hidden_size: int, factor: float) -> Gate:
        return Gate(cls.fan_in * hidden_size, factor)

    @staticmethod
    def reset(gate: Gate, factor: float, init: ModuleType) -> None:
        gate.fc.reset_parameters(init)

    @staticmethod
    def set_trainable(gate: Gate, freeze: bool) -> None:
        """`freeze` fixes only the bias, as the reference does; the weight always trains (alpha stays per token)."""
        gate.requires_grad_(True)
        gate.fc.bias.requires_grad_(not freeze)

    @staticmethod
    def alpha(gate: Gate, x: torch.Tensor, h_pre: torch.Tensor, h_exp: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(gate.fc(torch.cat([h_pre, h_exp], dim=-1)).float())


class DLerpIn(DLerp):
    """alpha_t = sigmoid(w . x_t + b), per token, from the pair's input."""

    fan_in = 1

    @staticmethod
    def alpha(gate: Gate, x: torch.Tensor, h_pre: torch.Tensor, h_exp: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(gate.fc(x).float())


INTERPOLATORS = {"lerp": Lerp, "dlerp": DLerp, "dlerpin": DLerpIn}


def get_interpolator(name: str) -> type:
    """Look an interpolator up by name, suggesting the closest one for a typo."""
    if name not in INTERPOLATORS:
        close = difflib.get_close_matches(name, INTERPOLATORS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown interpolation method {name!r}; choose from {sorted(INTERPOLATORS)}.{hint}")
    return INTERPOLATORS[name]


def interpolate(h_pre: torch.Tensor, h_exp: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """(1 - alpha) h_pre + alpha h_exp, written so that identical branches return h_pre bit for bit. The
    product with alpha (fp32) is taken in fp32; the difference and the sum stay in the branches' dtype."""
    return h_pre + (alpha * (h_exp - h_pre).float()).to(h_pre.dtype)
