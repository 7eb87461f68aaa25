"""Entropy-discriminator clipping (PAPER.md sec. 3): Clip_B and Clip_V keep masks and filter parts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import diagnostics as dg
from ..distributed import global_sum, masked_mean_std, masked_topk
from ._checks import check_choice, check_number, check_same_shape
from .base import Filter, TokenBatch
from .registry import register

__all__ = ["ClipB", "ClipV", "clip_b_mask", "clip_v_mask"]

VARIANTS = ("released", "paper")
FLAT_STD = 1e-12  # a batch std below this keeps every token (no meaningful outlier)


def _clip_b_args(mu, variant, mu_low, mu_high):
    """Validated (mu, mu_low, mu_high); the paper variant's bounds default to mu."""
    check_choice("clip_b", "variant", variant, VARIANTS)
    mu = check_number("clip_b", "mu", mu, low=0.0, low_open=True)
    if variant == "released":
        if mu_low is not None or mu_high is not None:
            raise ValueError(
                "clip_b: mu_low / mu_high belong to variant='paper'; the released "
                "variant has one threshold, mu"
            )
        return mu, None, None
    mu_low = check_number(
        "clip_b", "mu_low", mu if mu_low is None else mu_low, low=0.0, low_open=True
    )
    mu_high = check_number(
        "clip_b", "mu_high", mu if mu_high is None else mu_high, low=0.0, low_open=True
    )
    return mu, mu_low, mu_high


def _clip_b(discriminator, advantages, mask, *, mu, variant, mu_low, mu_high, group):
    """Clip_B keep mask plus the batch mean and population std of S (see ``clip_b_mask``)."""
    check_same_shape("clip_b", discriminator=discriminator, advantages=advantages, mask=mask)
    mu, mu_low, mu_high = _clip_b_args(mu, variant, mu_low, mu_high)
    mean, std, _ = masked_mean_std(discriminator, mask, group=group)
    deviation = discriminator.detach().to(mean.dtype) - mean  # d_t = S_t - m
    flat = std < FLAT_STD
    if variant == "released":
        inside = (advantages >= 0) | (deviation >= -mu * std)
    else:
        inside = (deviation >= -mu_low * std) & (deviation <= mu_high * std)
    return mask & (inside | flat), mean, std


def clip_b_mask(
    discriminator: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    mu: float = 2.5,
    variant: str = "released",
    mu_low: float | None = None,
    mu_high: float | None = None,
    group=None,
) -> Tensor:
    """Clip_B (batch-normalised) KEEP mask, bool ``[B, T]`` (PAPER.md sec. 3).

    ``discriminator`` S_t = p_t (H_t + log p_t), ``advantages``, ``mask``: ``[B, T]``.
    ``m``, ``s`` = batch mean and population std (denominator n) of S over every valid token of
    the batch (all micro-batches and ranks: ``group``); ``d_t = S_t - m``.

    - ``variant="released"`` (the authors' code): keep ``A >= 0``; keep ``A < 0`` iff
      ``d_t >= -mu s``.
    - ``variant="paper"``: keep iff ``-mu_low s <= d_t <= mu_high s`` (whatever the sign of A);
      ``mu_low`` / ``mu_high`` default to ``mu``.

    If ``s < 1e-12`` every valid token is kept. Padding (mask False) is never kept.
    Differs from the paper: the released variant is the default, as in the authors' runs; the
    statistics cover the whole batch on every rank (the paper's "batch"), never one micro-batch.
    Example: S = [0, 0, 0, 0, 1] with A = -1 and mu = 1 gives m = 0.2, s = 0.4, d_4 = 0.8:
    all kept (only d < -0.4 drops); S = [1, 1, 1, 1, 0] drops the last token (d = -0.8).
    """
    keep, _, _ = _clip_b(
        discriminator,
        advantages,
        mask,
        mu=mu,
        variant=variant,
        mu_low=mu_low,
        mu_high=mu_high,
        group=group,
    )
    return keep


def _clip_v_args(mu, max_frac, variant):
    check_choice("clip_v", "variant", variant, VARIANTS)
    mu = check_number("clip_v", "mu", mu, low=0.0, low_open=True)
    max_frac = check_number("clip_v", "max_frac", max_frac, low=0.0, high=1.0, low_open=True)
    return mu, max_frac


def _clip_v(discriminator, baseline, advantages, mask, *, mu, max_frac, variant, group):
    """Clip_V keep mask, std of D, and whether the top-K cap bound (see ``clip_v_mask``)."""
    check_same_shape(
        "clip_v", discriminator=discriminator, baseline=baseline, advantages=advantages, mask=mask
    )
    mu, max_frac = _clip_v_args(mu, max_frac, variant)
    dtype = torch.float64 if discriminator.dtype == torch.float64 else torch.float32
    distance = baseline.detach().to(dtype) - discriminator.detach().to(dtype)  # D_t = N_t - S_t
    _, std, n_valid = masked_mean_std(distance, mask, group=group)
    flat = std < FLAT_STD
    if variant == "paper":
        return mask & ((distance.abs() <= mu * std) | flat), std, False
    candidates = mask & (advantages <= 0) & (distance > mu * std) & ~flat
    n_candidates = int(global_sum(candidates.sum()))  # one host sync, same value on every rank
    n_valid = int(n_valid)
    capped = n_candidates > max_frac * n_valid
    if capped:
        k = max(math.floor(max_frac * n_valid), 1)
        candidates = masked_topk(distance, candidates, k, group=group)
    return mask & ~candidates, std, capped


def clip_v_mask(
    discriminator: Tensor,
    baseline: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    mu: float = 8.5,
    max_frac: float = 1e-4,
    variant: str = "released",
    group=None,
) -> Tensor:
    """Clip_V (vocabulary-centred) KEEP mask, bool ``[B, T]`` (PAPER.md sec. 3).

    ``discriminator`` S_t, ``baseline`` N_t, ``advantages``, ``mask``: ``[B, T]``.
    ``D_t = N_t - S_t`` (minus Theorem 3.3's deviation); ``s_D`` = population std of D over every
    valid token of the batch (``group``: all ranks). The batch mean of D is NOT subtracted.

    - ``variant="released"`` (the authors' code): ``A > 0`` kept; any other token (``A = 0``
      included) kept iff ``D_t <= mu s_D``. If more than ``max_frac`` of the valid tokens would
      be dropped (``n_drop > max_frac n_valid``), drop only the
      ``K = max(floor(max_frac n_valid), 1)`` would-be-dropped tokens with the largest ``D_t``
      (ties: lower global position first).
    - ``variant="paper"``: keep iff ``|D_t| <= mu s_D`` (a band around the baseline);
      ``max_frac`` is not used by this variant (the paper states no cap).

    If ``s_D < 1e-12`` every valid token is kept. Padding is never kept.
    Differs from the paper: the released variant is the default, as in the authors' runs.
    """
    keep, _, _ = _clip_v(
        discriminator,
        baseline,
        advantages,
        mask,
        mu=mu,
        max_frac=max_frac,
        variant=variant,
        group=group,
    )
    return keep


@register
@dataclass(frozen=True, kw_only=True)
class ClipB(Filter):
    """``clip_b``: drop outliers of S_* from the batch mean (``clip_b_mask``)."""

    name: ClassVar[str] = "clip_b"
    mu: float = 2.5
    variant: str = "released"
    mu_low: float | None = None
    mu_high: float | None = None

    def __post_init__(self) -> None:  # validate now, not at the first batch
        _clip_b_args(self.mu, self.variant, self.mu_low, self.mu_high)

    def keep(self, batch: TokenBatch, *, clipped: Tensor, group=None):
        keep, mean, std = _clip_b(
            batch.discriminator,
            batch.advantages,
            batch.mask,
            mu=self.mu,
            variant=self.variant,
            mu_low=self.mu_low,
            mu_high=self.mu_high,
            group=group,
        )
        metrics = dg.drop_fractions(
            keep, batch.mask, batch.advantages, prefix="clip_b", group=group
        )
        metrics.update({dg.CLIP_B_S_MEAN: mean, dg.CLIP_B_S_STD: std})
        return keep, metrics


@register
@dataclass(frozen=True, kw_only=True)
class ClipV(Filter):
    """``clip_v``: drop tokens far above their own baseline N (``clip_v_mask``)."""

    name: ClassVar[str] = "clip_v"
    needs_baseline: ClassVar[bool] = True
    mu: float = 8.5
    max_frac: float = 1e-4
    variant: str = "released"

    def __post_init__(self) -> None:
        _clip_v_args(self.mu, self.max_frac, self.variant)

    def keep(self, batch: TokenBatch, *, clipped: Tensor, group=None):
        if batch.baseline is None:
            raise ValueError("clip_v needs TokenBatch.baseline (N); compute it with token_stats")
        keep, std, capped = _clip_v(
            batch.discriminator,
            batch.baseline,
            batch.advantages,
            batch.mask,
            mu=self.mu,
            max_frac=self.max_frac,
            variant=self.variant,
            group=group,
        )
        metrics = dg.drop_fractions(
            keep, batch.mask, batch.advantages, prefix="clip_v", group=group
        )
        metrics.update(
            {dg.CLIP_V_D_STD: std, dg.CLIP_V_CAPPED: torch.tensor(float(capped), device=std.device)}
        )
        return keep, metrics
