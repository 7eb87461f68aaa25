"""The threshold at which a filter would drop a given share of a batch's tokens (for diagnostics).

A filter whose threshold lies beyond every token of the batch drops nothing, and says nothing.
``share_threshold`` finds the score above which a share of the valid tokens lies;
``drop_share_threshold`` applies it to Clip_B and Clip_V: the ``mu`` that would have dropped the
share the filter is configured for, so a warning can say how far off the setting is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..distributed import gather_masked, masked_mean_std
from .base import Filter, TokenBatch

__all__ = ["configured_share", "drop_share_threshold", "share_threshold"]


def share_threshold(scores: Tensor, mask: Tensor, share: float, *, group=None):
    """``(threshold, k, n)``: the k-th largest valid score, ``k = max(floor(share n), 1)``.

    ``scores``, ``mask``: ``[B, T]``; ``n`` = valid tokens (all ranks: ``group``). Tokens scoring
    ``>= threshold`` are the top ``k`` (more on ties), so a filter that drops scores above a
    threshold drops ``k`` tokens just below it. ``k`` is at least one token, as Clip_V's cap.
    No valid token: ``(nan, 0, 0)``. Example: scores [3, 1, 2, 5] all valid, share 0.5:
    ``k = 2``, threshold 3.
    """
    values = gather_masked(scores.detach().double(), mask, group=group)
    n = int(values.numel())
    if n == 0:
        return math.nan, 0, 0
    k = max(math.floor(share * n), 1)
    return float(torch.topk(values, k).values[-1]), k, n


def _normal_tail(mu: float) -> float:
    """P(Z > mu) for a standard normal Z."""
    return 0.5 * math.erfc(mu / math.sqrt(2.0))


def configured_share(part: Filter) -> float | None:
    """The share of tokens ``part`` is set to drop; None for filters other than Clip_B / Clip_V.

    - clip_v released: ``max_frac`` (its cap on the share of ``A < 0`` tokens dropped).
    - clip_v paper: ``2 P(Z > mu)``; clip_b released: ``P(Z > mu)``; clip_b paper:
      ``P(Z > mu_low) + P(Z > mu_high)``: the share ``mu`` standard deviations cut from a normal
      distribution, which is what ``mu`` means when S_* (or N - S_*) is close to normal.
    """
    if part.name == "clip_v":
        return part.max_frac if part.variant == "released" else 2 * _normal_tail(part.mu)
    if part.name == "clip_b":
        if part.variant == "released":
            return _normal_tail(part.mu)
        return _normal_tail(part.mu_low) + _normal_tail(part.mu_high)
    return None


def _standardised_scores(part: Filter, batch: TokenBatch, *, group=None):
    """(scores ``[B, T]``, candidate mask ``[B, T]``): the filter drops scores above its ``mu``.

    clip_b: ``(m - S_t) / s`` over ``A < 0`` (released) or ``|S_t - m| / s`` over all (paper);
    clip_v: ``D_t / s_D`` over ``A <= 0`` (released) or ``|D_t| / s_D`` over all (paper), with
    ``D = N - S_*``; the same statistics as ``clip_b_mask`` / ``clip_v_mask``.
    """
    mask = batch.mask
    if part.name == "clip_b":
        values = batch.discriminator.detach().double()
        mean, std, _ = masked_mean_std(values, mask, group=group)
        deviation = (values - mean) / std.clamp_min(1e-300)
        if part.variant == "released":
            return -deviation, mask & (batch.advantages < 0)
        return deviation.abs(), mask
    distance = batch.baseline.detach().double() - batch.discriminator.detach().double()
    _, std, _ = masked_mean_std(distance, mask, group=group)
    scaled = distance / std.clamp_min(1e-300)
    if part.variant == "released":
        return scaled, mask & (batch.advantages <= 0)
    return scaled.abs(), mask


def drop_share_threshold(part: Filter, batch: TokenBatch, *, group=None) -> dict | None:
    """What ``mu`` would make ``part`` drop its configured share of this batch; None if unknown.

    Returns ``{"filter", "mu", "share", "tokens", "candidates", "drop", "mu_needed"}``: the part's
    name and ``mu``, ``configured_share(part)``, the batch's valid tokens, the tokens the filter
    may drop (``A < 0`` for released Clip_B, ``A <= 0`` for released Clip_V, all for the paper
    variants), ``drop = max(floor(share candidates), 1)`` and ``mu_needed``: a ``mu`` just below
    it drops ``drop`` tokens of this batch (nan when there is no candidate). Clip_B and Clip_V
    only (Clip_V needs ``batch.baseline``). The share is taken of the candidates; for released
    Clip_V, whose cap is ``max_frac`` of all valid tokens, that is a lower bound of the cap.
    """
    share = configured_share(part)
    if share is None or (part.name == "clip_v" and batch.baseline is None):
        return None
    scores, candidates = _standardised_scores(part, batch, group=group)
    mu_needed, drop, n_candidates = share_threshold(scores, candidates, share, group=group)
    _, _, tokens = masked_mean_std(batch.discriminator.detach().double(), batch.mask, group=group)
    return {
        "filter": part.name,
        "mu": part.mu if part.mu is not None else min(part.mu_low, part.mu_high),
        "share": share,
        "tokens": int(tokens),
        "candidates": n_candidates,
        "drop": drop,
        "mu_needed": mu_needed,
    }
