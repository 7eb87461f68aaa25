"""The entropy probe: re-measure entropy at the batch's positions after an update, beside the theory.

Two first-order predictions are logged next to the measured change (all from `theory`):
- `entropy/pred_delta`: the paper's Theorem 3.3, `-alpha_t (S_t - N_t)` per token, with the
  nominal step `alpha_t = lr * r_t * A_t * w_t` (w_t = the plan's keep * weight). This is the
  step the theorem assumes: plain gradient ascent on free logits. Under Adam on a network the
  logits do not move by `alpha (e_k - p)`, so compare its SIGN and its correlation with the
  measurement, not its magnitude.
- `entropy/pred_delta_logit`: `-sum_j S_j dz_j` with the logit change dz actually measured at
  each position (z_new - z_old, at the sampling temperature). This is the quantitative check:
  it should match the measured change up to O(|dz|^2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropy_dynamics import diagnostics as dg
from entropy_dynamics import theory


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return values[mask].mean().float() if mask.any() else values.new_zeros((), dtype=torch.float32)


def _correlation(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of two 1-D tensors (0 when either is constant)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = (x.square().sum() * y.square().sum()).sqrt()
    return (x * y).sum().div(denom).float() if denom > 0 else x.new_zeros((), dtype=torch.float32)


@torch.no_grad()
def entropy_probe(
    old_logits: Tensor,
    new_logits: Tensor,
    labels: Tensor,
    mask: Tensor,
    alpha: Tensor,
    *,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """Measured vs predicted entropy change at the valid positions of one batch.

    old_logits, new_logits: [B, T, V] before / after the update; labels: [B, T] sampled tokens;
    mask: bool [B, T]; alpha: [B, T] nominal step (see the module docstring).
    Returns 0-dim tensors: the three batch means, per-token correlations of each prediction
    with the measurement, and the fraction of tokens whose predicted sign matches.
    """
    # float64: per-token entropy changes of small steps are near fp32's resolution of H
    z_old = old_logits.double() / temperature  # (B, T, V)
    z_new = new_logits.double() / temperature
    measured = theory.entropy(z_new) - theory.entropy(z_old)  # (B, T)
    predicted = theory.predict_grpo_step_change(z_old, labels, alpha.double())
    predicted_logit = theory.predict_entropy_change(z_old, z_new - z_old)
    m, p, q = measured[mask], predicted[mask], predicted_logit[mask]
    moving = p != 0
    sign_agree = ((p.sign() == m.sign()) & moving).sum() / moving.sum().clamp(min=1)
    return {
        dg.ENTROPY_MEASURED_DELTA: _masked_mean(measured, mask),  # fp32 from here on
        dg.PRED_DELTA: _masked_mean(predicted, mask),
        dg.ENTROPY_PRED_DELTA_LOGIT: _masked_mean(predicted_logit, mask),
        dg.PROBE_CORR_PRED: _correlation(p, m),
        dg.PROBE_CORR_PRED_LOGIT: _correlation(q, m),
        dg.PROBE_SIGN_AGREE: sign_agree.float(),
    }
