"""Entropy-discriminator clipping (PAPER.md sec. 3): Clip_B and Clip_V keep masks and filter parts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from .. import diagnostics as dg
from .._dtypes import compute_dtype
from ..distributed import global_sum, masked_mean_std, masked_topk
from ._checks import check_choice, check_denominator, check_number, check_same_shape
from .base import KEPT, Filter, PlanContext
from .registry import register

__all__ = ["ClipB", "ClipV", "ClipVDecision", "clip_b_mask", "clip_v_decision", "clip_v_mask"]

VARIANTS = ("released", "paper")
FLAT_STD = 1e-12  # a batch std below this keeps every token (no meaningful outlier)
CLIP_B_MU = 2.5  # the authors' released default (sweep 2.0-3.0)
CLIP_V_MU = 8.5  # the authors' config default (sweep 7.5-8.5); their constructor's 2.0 is a defect
CLIP_V_MAX_FRAC = 1e-4  # the released cap on the share of tokens dropped


def _clip_b_args(mu, variant, mu_low, mu_high):
    """Validated (mu, mu_low, mu_high) with every given argument used.

    released: ``mu`` (default ``CLIP_B_MU``), no bounds. paper: ``mu_low`` / ``mu_high``, each
    defaulting to ``mu`` (default ``CLIP_B_MU``); ``mu`` is refused when both bounds are given,
    since it would then change nothing.
    """
    check_choice("clip_b", "variant", variant, VARIANTS)
    if variant == "released":
        if mu_low is not None or mu_high is not None:
            raise ValueError(
                "clip_b: mu_low / mu_high belong to variant='paper'; the released "
                "variant has one threshold, mu"
            )
        mu = CLIP_B_MU if mu is None else mu
        return check_number("clip_b", "mu", mu, low=0.0, low_open=True), None, None
    if mu is not None and mu_low is not None and mu_high is not None:
        raise ValueError(
            "clip_b: with variant='paper', mu only sets the bounds not given; both mu_low and "
            "mu_high are given, so drop mu"
        )
    mu = CLIP_B_MU if mu is None else check_number("clip_b", "mu", mu, low=0.0, low_open=True)
    mu_low = check_number(
        "clip_b", "mu_low", mu if mu_low is None else mu_low, low=0.0, low_open=True
    )
    mu_high = check_number(
        "clip_b", "mu_high", mu if mu_high is None else mu_high, low=0.0, low_open=True
    )
    return None, mu_low, mu_high


def _check_finite_stats(owner: str, what: str, *stats: Tensor) -> None:
    """Refuse non-finite batch statistics: a NaN or inf at a valid token would otherwise make
    every comparison False and silently drop (or keep) whole classes of tokens. One host sync."""
    if not bool(torch.isfinite(torch.stack([x.double() for x in stats])).all()):
        raise ValueError(
            f"{owner}: {what} holds NaN or inf at a valid token (mask True); expected finite "
            "values there (check the logits and log-probs that token_stats was given)"
        )


def _clip_b(discriminator, advantages, mask, *, mu, variant, mu_low, mu_high, group):
    """Clip_B keep mask plus the batch mean and population std of S (see ``clip_b_mask``)."""
    check_same_shape("clip_b", discriminator=discriminator, advantages=advantages, mask=mask)
    mu, mu_low, mu_high = _clip_b_args(mu, variant, mu_low, mu_high)
    mean, std, _ = masked_mean_std(discriminator, mask, group=group)
    _check_finite_stats("clip_b", "the discriminator S", mean, std)
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
    mu: float | None = None,
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
      ``d_t >= -mu s``; ``mu`` defaults to 2.5.
    - ``variant="paper"``: keep iff ``-mu_low s <= d_t <= mu_high s`` (whatever the sign of A);
      ``mu_low`` / ``mu_high`` default to ``mu`` (itself 2.5); ``mu`` with both bounds is refused.

    If ``s < 1e-12`` every valid token is kept. Padding (mask False) is never kept. NaN or inf in
    S at a valid token raises ValueError (it would make every comparison False).
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
    """Validated (mu, max_frac); the paper variant has no cap, so a max_frac given to it is refused."""
    check_choice("clip_v", "variant", variant, VARIANTS)
    mu = check_number("clip_v", "mu", CLIP_V_MU if mu is None else mu, low=0.0, low_open=True)
    if variant == "paper":
        if max_frac is not None:
            raise ValueError(
                f"clip_v: max_frac={max_frac!r} belongs to variant='released'; the paper "
                "variant has no cap (drop max_frac, or use variant='released')"
            )
        return mu, None
    max_frac = CLIP_V_MAX_FRAC if max_frac is None else max_frac
    max_frac = check_number("clip_v", "max_frac", max_frac, low=0.0, high=1.0, low_open=True)
    return mu, max_frac


class ClipVDecision(NamedTuple):
    """What Clip_V decided for one batch (``clip_v_decision``)."""

    keep: Tensor  # bool [B, T], the tokens kept
    deviation_std: Tensor  # 0-dim: population std of S - N over the valid tokens (all ranks)
    capped: bool  # True when the released cap (K tokens) bound


def clip_v_decision(
    discriminator: Tensor,
    baseline: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    mu: float | None = None,
    max_frac: float | None = None,
    variant: str = "released",
    group=None,
) -> ClipVDecision:
    """Clip_V (vocabulary-centred) on one batch, PAPER.md sec. 3: keep mask, std, cap.

    ``discriminator`` S_t, ``baseline`` N_t, ``advantages``, ``mask``: ``[B, T]``. In the
    project's one sign convention, ``S_t - N_t`` is Theorem 3.3's deviation (positive: the
    token's update lowers entropy when A > 0); ``s`` = its population std over every valid token
    of the batch (``group``: all ranks). The batch mean is NOT subtracted.

    - ``variant="released"`` (the authors' code; ``mu`` 8.5, ``max_frac`` 1e-4 by default):
      ``A > 0`` kept; a token with ``A <= 0`` would drop iff ``S_t - N_t < -mu s`` (far BELOW
      its baseline; the authors write it ``N - S > mu s``). The cap applies to the ``A < 0``
      ones only: when more than ``K = max(floor(max_frac n_valid), 1)`` of them would drop, only
      the K lowest ``S_t - N_t`` drop (ties: lower global position first) and the other
      ``A < 0`` ones are kept. Would-be-dropped ``A = 0`` tokens stay dropped whatever the cap
      (no gradient, but they leave the token-mean denominator).
    - ``variant="paper"``: keep iff ``|S_t - N_t| <= mu s`` (a band around the baseline); it
      has no cap, and a ``max_frac`` given with it is refused.

    If ``s < 1e-12`` every valid token is kept. Padding is never kept. NaN or inf in S or N at
    a valid token raises ValueError.
    Differs from the paper: the released variant is the default, as in the authors' runs.
    Example (the 4 x 4 case of docs/anchors.md): S - N = 0 except -4 at (1,0) (A < 0) and -5
    at (2,0) (A = 0), mu = 1, max_frac = 0.07: K = 1, one A < 0 candidate, so both drop.
    """
    check_same_shape(
        "clip_v", discriminator=discriminator, baseline=baseline, advantages=advantages, mask=mask
    )
    mu, max_frac = _clip_v_args(mu, max_frac, variant)
    dtype = compute_dtype(discriminator.dtype)
    deviation = discriminator.detach().to(dtype) - baseline.detach().to(dtype)  # S_t - N_t
    mean, std, n_valid = masked_mean_std(deviation, mask, group=group)
    _check_finite_stats("clip_v", "S - N", mean, std)
    flat = std < FLAT_STD
    if variant == "paper":
        return ClipVDecision(mask & ((deviation.abs() <= mu * std) | flat), std, False)
    would_drop = mask & (advantages <= 0) & (deviation < -mu * std) & ~flat
    negative = would_drop & (advantages < 0)  # only these are capped; A = 0 ones stay dropped
    k = max(math.floor(max_frac * int(n_valid)), 1)
    n_negative = int(global_sum(negative.sum()))  # one host sync, same value on every rank
    capped = n_negative > k
    if capped:  # the K lowest deviations (-(S - N) = N - S exactly in floating point)
        negative = masked_topk(-deviation, negative, k, group=group)
    return ClipVDecision(mask & ~((would_drop & ~(advantages < 0)) | negative), std, capped)


def clip_v_mask(
    discriminator: Tensor,
    baseline: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    mu: float | None = None,
    max_frac: float | None = None,
    variant: str = "released",
    group=None,
) -> Tensor:
    """Clip_V KEEP mask, bool ``[B, T]``: ``clip_v_decision(...).keep`` (the rule is there)."""
    return clip_v_decision(
        discriminator,
        baseline,
        advantages,
        mask,
        mu=mu,
        max_frac=max_frac,
        variant=variant,
        group=group,
    ).keep


@register
@dataclass(frozen=True, kw_only=True)
class ClipB(Filter):
    """``clip_b``: drop outliers of S_* from the batch mean (``clip_b_mask``).

    ``mu`` is resolved at construction (released: 2.5 unless given; paper: folded into
    ``mu_low`` / ``mu_high``), so the canonical spec shows exactly the thresholds in use.
    """

    name: ClassVar[str] = "clip_b"
    mu: float | None = None
    variant: str = "released"
    mu_low: float | None = None
    mu_high: float | None = None
    denominator: str = KEPT

    def __post_init__(self) -> None:  # validate now, not at the first batch
        mu, mu_low, mu_high = _clip_b_args(self.mu, self.variant, self.mu_low, self.mu_high)
        for key, value in (("mu", mu), ("mu_low", mu_low), ("mu_high", mu_high)):
            object.__setattr__(self, key, value)
        check_denominator(self.name, self.denominator)

    def keep(self, ctx: PlanContext):
        batch, group = ctx.batch, ctx.group
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
            keep,
            batch.mask,
            batch.advantages,
            names=(dg.CLIP_B_FRAC_DROPPED, dg.CLIP_B_FRAC_DROPPED_POS, dg.CLIP_B_FRAC_DROPPED_NEG),
            group=group,
        )
        metrics.update({dg.CLIP_B_S_MEAN: mean, dg.CLIP_B_S_STD: std})
        return keep, metrics


@register
@dataclass(frozen=True, kw_only=True)
class ClipV(Filter):
    """``clip_v``: drop ``A <= 0`` tokens far below their own baseline N (``clip_v_decision``).

    ``mu`` and ``max_frac`` are resolved at construction (8.5 and, for the released variant,
    1e-4 unless given); the paper variant has no ``max_frac``.
    """

    name: ClassVar[str] = "clip_v"
    needs_baseline: ClassVar[bool] = True
    mu: float | None = None
    max_frac: float | None = None
    variant: str = "released"
    denominator: str = KEPT

    def __post_init__(self) -> None:
        mu, max_frac = _clip_v_args(self.mu, self.max_frac, self.variant)
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "max_frac", max_frac)
        check_denominator(self.name, self.denominator)

    def keep(self, ctx: PlanContext):
        batch, group = ctx.batch, ctx.group
        if batch.baseline is None:
            raise ValueError("clip_v needs TokenBatch.baseline (N); compute it with token_stats")
        keep, _, capped = clip_v_decision(
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
            keep,
            batch.mask,
            batch.advantages,
            names=(dg.CLIP_V_FRAC_DROPPED, dg.CLIP_V_FRAC_DROPPED_POS, dg.CLIP_V_FRAC_DROPPED_NEG),
            group=group,
        )
        # the std of S - N is entropy/s_minus_n_std, logged with the batch's entropy metrics
        metrics[dg.CLIP_V_CAPPED] = torch.tensor(float(capped), device=keep.device)
        return keep, metrics
