"""Metric names, declared once: every key the project logs is one of these constants (or, for a
filter's drop fractions, built from a declared prefix by ``diagnostics.drop_fractions``).

This module imports nothing, so anything may import it (tests check that each name is used and
that a training step logs only declared names).
"""

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
TOP_ENTROPY_FRAC_DROPPED = "top_entropy/frac_dropped"
TOP_ENTROPY_FRAC_DROPPED_POS = "top_entropy/frac_dropped_pos"
TOP_ENTROPY_FRAC_DROPPED_NEG = "top_entropy/frac_dropped_neg"
SIGN_CONDITION_FRAC_DROPPED = "sign_condition/frac_dropped"
SIGN_CONDITION_FRAC_DROPPED_POS = "sign_condition/frac_dropped_pos"
SIGN_CONDITION_FRAC_DROPPED_NEG = "sign_condition/frac_dropped_neg"

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
AEPO_ENTROPY = "aepo/entropy"  # the batch entropy AEPO compared with its bounds (Eq. 11)
AEPO_ON = "aepo/on"  # 1 when the negative samples were dropped this step
AEPO_FRAC_DROPPED = "aepo/frac_dropped"
AEPO_FRAC_DROPPED_POS = "aepo/frac_dropped_pos"
AEPO_FRAC_DROPPED_NEG = "aepo/frac_dropped_neg"
KL_REF_RESET = "kl_ref/reset"  # 1 on a step after which the KL reference was reset
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


# === the compact GRPO loop's own metrics (train/) =============================================
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
