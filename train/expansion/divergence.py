"""Divergence (alignment) losses between a concat pair's branch outputs h_pre and h_exp, [B, T, H].

Each returns the unweighted mean over tokens; `mask` ([B, T], 1 = real token) restricts the mean to real
tokens. Standalone (torch only): shipped verbatim next to saved models.
"""

import difflib
from collections.abc import Callable

import torch
import torch.nn.functional as F


def token_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over all entries, or over those where `mask` is 1."""
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def cosine_divergence(
    h_pre: torch.Tensor, h_exp: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over tokens of SmoothL1(max(0, 1 - cos(h_pre_t, h_exp_t)), 0)."""
    d = (1 - F.cosine_similarity(h_pre.float(), h_exp.float(), dim=-1)).clamp(min=0)
    return token_mean(F.smooth_l1_loss(d, torch.zeros_like(d), reduction="none", beta=1.0), mask)


def mse_divergence(
    h_pre: torch.Tensor, h_exp: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over tokens of the mean over hidden of (h_exp - h_pre)^2, in fp32."""
    return token_mean((h_exp.float() - h_pre.float()).pow(2).mean(dim=-1), mask)


DIVERGENCES = {"cosine": cosine_divergence, "mse": mse_divergence}


def get_divergence(name: str) -> Callable[..., torch.Tensor]:
    """Look a divergence up by name, suggesting the closest one for a typo."""
    if name not in DIVERGENCES:
        close = difflib.get_close_matches(name, DIVERGENCES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown divergence {name!r}; choose from {sorted(DIVERGENCES)}.{hint}")
    return DIVERGENCES[name]
