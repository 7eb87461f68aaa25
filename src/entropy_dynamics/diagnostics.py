"""The functions that compute batch metrics as tensors; their names live in ``metric_names``.

Every metric is a 0-dim tensor; nothing here reads a value on the host (the loop decides when
to synchronise and log). Batch-global metrics go through ``distributed`` (all ranks, all
micro-batches). ``from entropy_dynamics import diagnostics as dg; dg.ENTROPY_MEAN`` keeps
working: the names are re-exported from ``metric_names``, where each is defined once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .distributed import global_sum, masked_mean_std
from .metric_names import *  # noqa: F403  (the names, re-exported: dg.ENTROPY_MEAN)
from .metric_names import (
    BASELINE_MEAN,
    DEVIATION_MEAN,
    DEVIATION_STD,
    DISCRIMINATOR_MEAN,
    DISCRIMINATOR_STD,
    ENTROPY_MEAN,
)


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` as fp32, 0 where the denominator is 0 (never NaN)."""
    numerator = numerator.to(torch.float32)
    denominator = denominator.to(torch.float32)
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1.0), 0.0)


def drop_fractions(
    keep: Tensor, mask: Tensor, advantages: Tensor, *, names: tuple[str, str, str], group=None
) -> dict[str, Tensor]:
    """Fraction of valid tokens a filter drops: overall, among ``A > 0``, among ``A < 0``.

    ``keep, mask``: bool ``[B, T]`` (keep is a subset of mask); ``advantages``: ``[B, T]``;
    ``names``: the filter's three declared names (``metric_names``: ``*_FRAC_DROPPED``,
    ``*_POS``, ``*_NEG``). Returns them as 0-dim fp32 tensors, batch-global; a class with no
    token gives 0.
    """
    dropped = mask & ~keep
    positive = mask & (advantages > 0)
    negative = mask & (advantages < 0)
    counts = global_sum(
        torch.stack(
            [
                dropped.sum(),
                mask.sum(),
                (dropped & positive).sum(),
                positive.sum(),
                (dropped & negative).sum(),
                negative.sum(),
            ]
        )
    )
    overall, positive_name, negative_name = names
    return {
        overall: _ratio(counts[0], counts[1]),
        positive_name: _ratio(counts[2], counts[3]),
        negative_name: _ratio(counts[4], counts[5]),
    }


def entropy_metrics(
    entropy: Tensor,
    discriminator: Tensor,
    mask: Tensor,
    *,
    baseline: Tensor | None = None,
    group=None,
) -> dict[str, Tensor]:
    """Batch-global means of H, S_*, N and S_* - N (and stds of S_* and S_* - N).

    All inputs ``[B, T]``; ``baseline`` (N) is optional (the N-based entries are then absent).
    ``DEVIATION_MEAN / DISCRIMINATOR_MEAN`` is Corollary 3.5's ratio (about 1e-3 on-policy).
    """
    h_mean, _, _ = masked_mean_std(entropy, mask, group=group)
    s_mean, s_std, _ = masked_mean_std(discriminator, mask, group=group)
    out = {ENTROPY_MEAN: h_mean, DISCRIMINATOR_MEAN: s_mean, DISCRIMINATOR_STD: s_std}
    if baseline is not None:
        n_mean, _, _ = masked_mean_std(baseline, mask, group=group)
        dev_mean, dev_std, _ = masked_mean_std(discriminator - baseline, mask, group=group)
        out.update({BASELINE_MEAN: n_mean, DEVIATION_MEAN: dev_mean, DEVIATION_STD: dev_std})
    return out
