"""Per-token policy-gradient surrogates: plain PG, PPO clip (clip-higher, dual clip), CE-GPPO."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ._checks import check_number, check_same_shape
from .base import Surrogate
from .registry import register

__all__ = ["CeGppo", "PolicyGradient", "Ppo", "ce_gppo_loss", "pg_loss", "ppo_loss"]


LOG_RATIO_CLAMP = 20.0  # verl's and Trinity's PPO clamp |log r| to 20 before exp (stability)


def _ratio(logprobs: Tensor, old_logprobs: Tensor, clamp: float | None = None) -> Tensor:
    log_ratio = logprobs - old_logprobs
    if clamp is not None:
        log_ratio = log_ratio.clamp(-clamp, clamp)
    return torch.exp(log_ratio)


def _dual_clip(loss: Tensor, advantages: Tensor, dual_clip: float | None):
    """Dual clip (Ye et al. 2020, arXiv 1912.09729): cap the ``A < 0`` side at ``-c A``."""
    if dual_clip is None:
        return loss, torch.zeros_like(loss, dtype=torch.bool)
    cap = -advantages * dual_clip
    dual = (advantages < 0) & (cap < loss)
    return torch.where(dual, cap, loss), dual


def _check_dual_clip(owner: str, dual_clip):
    if dual_clip is None:
        return None
    return check_number(owner, "dual_clip", dual_clip, low=1.0, low_open=True)


def pg_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor) -> tuple[Tensor, dict]:
    """Unclipped importance-weighted policy gradient, per token.

    ``logprobs, old_logprobs, advantages``: ``[B, T]``. ``r = exp(logp - old_logp)``,
    ``loss = -r A``. Its gradient is ``-r A grad log p``; on-policy (r = 1) that is REINFORCE's
    ``-A grad log p`` (the value differs from ``-A log p`` by a constant).
    Returns (loss ``[B, T]``, ``{"ratio": r}``).
    """
    check_same_shape("pg", logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    ratio = _ratio(logprobs, old_logprobs)
    return -ratio * advantages, {"ratio": ratio.detach()}


def ppo_clip_masks(ratio: Tensor, advantages: Tensor, *, eps_low: float, eps_high: float):
    """Bool ``[B, T]`` masks where PPO's clipped branch is active (its gradient is cut).

    Low: ``A < 0`` and ``r < 1 - eps_low``; high: ``A > 0`` and ``r > 1 + eps_high``.
    """
    low = (advantages < 0) & (ratio < 1.0 - eps_low)
    high = (advantages > 0) & (ratio > 1.0 + eps_high)
    return low, high


def ppo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    log_ratio_clamp: float | None = LOG_RATIO_CLAMP,
) -> tuple[Tensor, dict]:
    """PPO/GRPO clipped surrogate per token (PAPER.md sec. 5).

    ``r = exp(clamp(logp - old_logp, -20, 20))``;
    ``loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)``; with ``dual_clip = c`` the
    ``A < 0`` side is capped: ``loss = min(loss, -c A)`` (the authors' runs: c = 3).
    ``eps_high > eps_low`` is DAPO's clip-higher. The log-ratio clamp is verl's and Trinity's
    (it only acts beyond ``r = e^20``); ``log_ratio_clamp=None`` gives TRL's unclamped ratio.
    Inputs ``[B, T]``; returns the loss ``[B, T]`` and diagnostics ``ratio``, ``clipped_low``,
    ``clipped_high``, ``dual_clipped`` (bool ``[B, T]``).
    """
    check_same_shape("ppo", logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    ratio = _ratio(logprobs, old_logprobs, log_ratio_clamp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss, dual = _dual_clip(torch.maximum(unclipped, clipped), advantages, dual_clip)
    low, high = ppo_clip_masks(ratio.detach(), advantages, eps_low=eps_low, eps_high=eps_high)
    return loss, {
        "ratio": ratio.detach(),
        "clipped_low": low,
        "clipped_high": high,
        "dual_clipped": dual,
    }


def ce_gppo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta1: float = 0.75,
    beta2: float = 1.0,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict]:
    """CE-GPPO (arXiv 2509.20712): PPO clip whose clipped tokens keep a bounded gradient.

    Inside the clip range (and on the unclipped sides) ``loss = -r A``. Outside it
    (PAPER.md sec. 5), with ``sg`` = stop-gradient:
    ``A < 0, r < 1 - eps_low``: ``-beta1 (1 - eps_low) (r / sg(r)) A``;
    ``A > 0, r > 1 + eps_high``: ``-beta2 (1 + eps_high) (r / sg(r)) A``.
    ``r / sg(r)`` is 1 in value with the gradient of ``log p``. With ``dual_clip = c`` the
    ``A < 0`` side is then capped at ``-c A``, as in the anchor's loss (its recipe: c = 10).
    Inputs ``[B, T]``; returns the loss ``[B, T]`` and diagnostics ``ratio``, ``clipped_low``,
    ``clipped_high``, ``dual_clipped``.
    """
    check_same_shape("ce_gppo", logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    ratio = _ratio(logprobs, old_logprobs)
    unit = torch.exp(logprobs - logprobs.detach())  # r / sg(r): value 1, gradient of log p
    low, high = ppo_clip_masks(ratio.detach(), advantages, eps_low=eps_low, eps_high=eps_high)
    loss = -advantages * ratio
    loss = torch.where(low, -beta1 * (1.0 - eps_low) * unit * advantages, loss)
    loss = torch.where(high, -beta2 * (1.0 + eps_high) * unit * advantages, loss)
    loss, dual = _dual_clip(loss, advantages, dual_clip)
    return loss, {
        "ratio": ratio.detach(),
        "clipped_low": low,
        "clipped_high": high,
        "dual_clipped": dual,
    }


@register
@dataclass(frozen=True, kw_only=True)
class PolicyGradient(Surrogate):
    """``pg``: unclipped policy gradient ``-r A`` (REINFORCE on-policy); no hyperparameters."""

    name: ClassVar[str] = "pg"

    def loss(self, logprobs, old_logprobs, advantages):
        return pg_loss(logprobs, old_logprobs, advantages)


@register
@dataclass(frozen=True, kw_only=True)
class Ppo(Surrogate):
    """``ppo``: PPO clip with ``eps_low``, ``eps_high`` (clip-higher) and optional dual clip ``c``."""

    name: ClassVar[str] = "ppo"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "eps_low", check_number("ppo", "eps_low", self.eps_low, low=0.0, high=1.0)
        )
        object.__setattr__(
            self, "eps_high", check_number("ppo", "eps_high", self.eps_high, low=0.0)
        )
        object.__setattr__(self, "dual_clip", _check_dual_clip("ppo", self.dual_clip))

    def loss(self, logprobs, old_logprobs, advantages):
        return ppo_loss(
            logprobs,
            old_logprobs,
            advantages,
            eps_low=self.eps_low,
            eps_high=self.eps_high,
            dual_clip=self.dual_clip,
        )

    def clipped(self, ratio, advantages):
        low, high = ppo_clip_masks(ratio, advantages, eps_low=self.eps_low, eps_high=self.eps_high)
        return low | high


@register
@dataclass(frozen=True, kw_only=True)
class CeGppo(Surrogate):
    """``ce_gppo``: gradient-preserving clip (CE-GPPO, arXiv 2509.20712); see ``ce_gppo_loss``."""

    name: ClassVar[str] = "ce_gppo"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta1: float = 0.75
    beta2: float = 1.0
    dual_clip: float | None = None

    def __post_init__(self) -> None:
        for key, low, high in (
            ("eps_low", 0.0, 1.0),
            ("eps_high", 0.0, None),
            ("beta1", 0.0, None),
            ("beta2", 0.0, None),
        ):
            value = check_number("ce_gppo", key, getattr(self, key), low=low, high=high)
            object.__setattr__(self, key, value)
        object.__setattr__(self, "dual_clip", _check_dual_clip("ce_gppo", self.dual_clip))

    def loss(self, logprobs, old_logprobs, advantages):
        return ce_gppo_loss(
            logprobs,
            old_logprobs,
            advantages,
            eps_low=self.eps_low,
            eps_high=self.eps_high,
            beta1=self.beta1,
            beta2=self.beta2,
            dual_clip=self.dual_clip,
        )

    def clipped(self, ratio, advantages):
        low, high = ppo_clip_masks(ratio, advantages, eps_low=self.eps_low, eps_high=self.eps_high)
        return low | high
