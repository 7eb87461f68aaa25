"""Metric names, declared once, and the functions that compute batch metrics as tensors.

Every metric is a 0-dim tensor; nothing here reads a value on the host (the loop decides when
to synchronise and log). Batch-global metrics go through ``distributed`` (all ranks, all
micro-batches); metrics named ``loss/*`` are micro-batch-additive (normalised by the plan's
global kept-token count, so summing them over micro-batches and ranks gives the batch value).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .distributed import global_sum, masked_mean_std

# --- entropy dynamics of the batch (Theorem 3.3, Corollary 3.5) -------------------------------
ENTROPY_MEAN = "entropy/mean"  # mean H over valid tokens
DISCRIMINATOR_MEAN = "entropy/s_mean"  # mean S_*
DISCRIMINATOR_STD = "entropy/s_std"  # population std of S_*
BASELINE_MEAN = "entropy/n_mean"  # mean N
DEVIATION_MEAN = "entropy/s_minus_n_mean"  # mean (S_* - N): about 0 on-policy (Cor. 3.5)
DEVIATION_STD = "entropy/s_minus_n_std"  # population std of (S_* - N) (= Clip_V's s_D)
PRED_DELTA = "entropy/pred_delta"  # mean over tokens of -alpha (S_* - N): predicted dH

# --- token filters: fraction of valid tokens dropped, overall and by advantage sign -----------
CLIP_B_FRAC_DROPPED = "clip_b/frac_dropped"
CLIP_B_FRAC_DROPPED_POS = "clip_b/frac_dropped_pos"
CLIP_B_FRAC_DROPPED_NEG = "clip_b/frac_dropped_neg"
CLIP_B_S_MEAN = "clip_b/s_mean"
CLIP_B_S_STD = "clip_b/s_std"
CLIP_V_FRAC_DROPPED = "clip_v/frac_dropped"
CLIP_V_FRAC_DROPPED_POS = "clip_v/frac_dropped_pos"
CLIP_V_FRAC_DROPPED_NEG = "clip_v/frac_dropped_neg"
CLIP_V_CAPPED = "clip_v/capped"  # 1 when the max_frac top-K cap bound
CLIP_COV_FRAC_DROPPED = "clip_cov/frac_dropped"
CLIP_COV_FRAC_DROPPED_POS = "clip_cov/frac_dropped_pos"
CLIP_COV_FRAC_DROPPED_NEG = "clip_cov/frac_dropped_neg"
CLIP_COV_NUM_CANDIDATES = "clip_cov/num_candidates"
TOP_ENTROPY_FRAC_DROPPED = "top_entropy/frac_dropped"
TOP_ENTROPY_FRAC_DROPPED_POS = "top_entropy/frac_dropped_pos"
TOP_ENTROPY_FRAC_DROPPED_NEG = "top_entropy/frac_dropped_neg"
TOP_ENTROPY_THRESHOLD = "top_entropy/threshold"

# --- regularisers -----------------------------------------------------------------------------
KL_COV_FRAC_SELECTED = "kl_cov/frac_selected"
KL_COV_PENALTY = "kl_cov/penalty"  # micro-batch-additive mean penalty
KL_REF = "kl_ref/kl"  # micro-batch-additive mean KL estimate
ENTROPY_BONUS_COEF = "entropy_bonus/coef"
ENTROPY_BONUS_ENTROPY = "entropy_bonus/entropy"  # micro-batch-additive mean H of kept tokens
ENTROPIC_ALPHA = "entropic/alpha"  # EntroPIC's PI coefficient of the step
ENTROPIC_ERROR = "entropic/error"  # mean H of valid tokens minus the target (the PI error)
ENTROPIC_NUM_HIGH = "entropic/num_high"  # global count of valid tokens with p > threshold
ENTROPIC_FRAC_HIGH = "entropic/frac_high"  # their share of the valid tokens
ENTROPIC_TERM = "entropic/term"  # micro-batch-additive mean of the adjustment term
AENT_COEF = "aent/coef"  # AEnt's clamped-entropy coefficient of the step
AENT_CLAMPED_ENTROPY = "aent/clamped_entropy"  # micro-batch-additive mean H_c of kept tokens
TARGET_ENTROPY_TARGET = "target_entropy/target"  # the step's target entropy H*
TARGET_ENTROPY_ERROR = "target_entropy/error"  # mean H of valid tokens minus the target
TARGET_ENTROPY_DESIRED = "target_entropy/desired"  # the change asked for, -(gain e + ki I)
TARGET_ENTROPY_PREDICTED = "target_entropy/predicted"  # first-order dH of the applied mask
TARGET_ENTROPY_PREDICTED_OFF = "target_entropy/predicted_off"  # ... with every token kept
TARGET_ENTROPY_MU = "target_entropy/mu"  # the applied threshold (0 = none: every token kept)
TARGET_ENTROPY_SATURATED = "target_entropy/saturated"  # 1 when the bound or "keep all" bound
TARGET_ENTROPY_FRAC_DROPPED = "target_entropy/frac_dropped"
TARGET_ENTROPY_FRAC_DROPPED_POS = "target_entropy/frac_dropped_pos"
TARGET_ENTROPY_FRAC_DROPPED_NEG = "target_entropy/frac_dropped_neg"
ARCHER_NUM_HIGH = "archer/num_high"  # global count of valid tokens above their response's quantile
ARCHER_NUM_LOW = "archer/num_low"  # global count of the other valid tokens
ARCHER_FRAC_HIGH = "archer/frac_high"  # share of valid tokens that are high-entropy
ARCHER_KL = "archer_kl/kl"  # micro-batch-additive mean of the dual-token KL term

# --- surrogate and plan -------------------------------------------------------------------------
LOSS_CLIP_FRAC_LOW = "loss/clip_frac_low"  # A < 0, r < 1 - eps_low (micro-batch-additive)
LOSS_CLIP_FRAC_HIGH = "loss/clip_frac_high"  # A > 0, r > 1 + eps_high
LOSS_DUAL_CLIP_FRAC = "loss/dual_clip_frac"
LOSS_RATIO_MEAN = "loss/ratio_mean"
PLAN_FRAC_KEPT = "plan/frac_kept"  # kept / valid tokens, batch-global
PLAN_NUM_TOKENS = "plan/num_tokens"


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` as fp32, 0 where the denominator is 0 (never NaN)."""
    numerator = numerator.to(torch.float32)
    denominator = denominator.to(torch.float32)
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1.0), 0.0)


def drop_fractions(
    keep: Tensor, mask: Tensor, advantages: Tensor, *, prefix: str, group=None
) -> dict[str, Tensor]:
    """Fraction of valid tokens a filter drops: overall, among ``A > 0``, among ``A < 0``.

    ``keep, mask``: bool ``[B, T]`` (keep is a subset of mask); ``advantages``: ``[B, T]``.
    Returns ``{prefix/frac_dropped, prefix/frac_dropped_pos, prefix/frac_dropped_neg}`` as 0-dim
    fp32 tensors, batch-global; a class with no token gives 0.
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
    return {
        f"{prefix}/frac_dropped": _ratio(counts[0], counts[1]),
        f"{prefix}/frac_dropped_pos": _ratio(counts[2], counts[3]),
        f"{prefix}/frac_dropped_neg": _ratio(counts[4], counts[5]),
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


def predicted_entropy_change(
    batch, *, lr: float, ratio: Tensor | None = None, group=None
) -> dict[str, Tensor]:
    """``{PRED_DELTA: mean over valid tokens of -lr r_t A_t (S_t - N_t)}`` (Theorem 3.3).

    ``batch``: a ``methods.TokenBatch`` with ``baseline``; ``ratio``: optional ``[B, T]``.
    The per-position first-order prediction of one step's entropy change (each position's logits
    moved by its own token's update only), averaged batch-globally; compare it with the change of
    ``ENTROPY_MEAN`` at the same positions after the step.
    """
    from .lens import token_contributions  # lens builds on methods, which import this module

    contribution = token_contributions(batch, lr=lr, ratio=ratio)
    mean, _, _ = masked_mean_std(contribution, batch.mask, group=group)
    return {PRED_DELTA: mean}


# === trainer section (owned by train/; the compact GRPO loop's own metrics) ===================
# Names only: the loop computes these values itself (rewards, timing, optimiser state) or
# through `train.probe` / `theory` (the probe's measured and predicted entropy changes).
REWARD_MEAN = "reward/mean"  # mean task reward of the batch's responses
REWARD_STD = "reward/std"  # population std of the rewards
REWARD_ERRORS = "reward/errors"  # reward calls that raised (scored 0), this step
REWARD_TIMEOUTS = "reward/timeouts"  # reward calls past their time limit (scored 0), this step
RESPONSE_LENGTH = "response/length"  # mean valid response tokens per row (EOS included)
ENTROPY_FIRST_TOKEN = "entropy/first_token"  # mean H at each response's first token
ROLLOUT_LOGPROB_GAP = "rollout/logprob_gap"  # max |sampler log p - recomputed log p| (rounding)
LOSS_TOTAL = "loss/total"  # the aggregated loss that was minimised
LOSS_NONFINITE = "loss/nonfinite"  # 1 on a step skipped for a non-finite loss or gradient
OPTIM_GRAD_NORM = "optim/grad_norm"  # global gradient norm before clipping
OPTIM_LR = "optim/lr"  # learning rate used at this step
ENTROPY_MEASURED_DELTA = (
    "entropy/measured_delta"  # probe: mean H(after) - H(before), same positions
)
ENTROPY_PRED_DELTA_LOGIT = "entropy/pred_delta_logit"  # probe: mean -sum_j S_j dz_j (measured dz)
# The probe logs PRED_DELTA ("entropy/pred_delta") as the batch MEAN of -alpha_t (S_t - N_t) with
# the nominal step alpha_t = lr r_t A_t (keep * weight of the plan).
PROBE_CORR_PRED = "probe/corr_pred"  # per-token Pearson r of -alpha (S - N) with the measured dH
PROBE_CORR_PRED_LOGIT = "probe/corr_pred_logit"  # per-token Pearson r of -sum_j S_j dz_j with dH
PROBE_SIGN_AGREE = "probe/sign_agree"  # fraction of updated tokens whose predicted sign is right
TIME_STEP_S = "time/step_s"  # wall-clock seconds of the step
TIME_STEP_CPU_S = "time/step_cpu_s"  # process CPU seconds of the step
TIME_TOKENS_PER_S = "time/tokens_per_s"  # valid response tokens / wall-clock second
