"""The metric keys the report reads: the names of `entropy_dynamics.metric_names` (and verl's)."""

from __future__ import annotations

from entropy_dynamics.metric_names import (
    ENTROPY_MEAN,
    ENTROPY_MEASURED_DELTA,
    ENTROPY_PRED_DELTA_LOGIT,
    LOSS_CLIP_FRAC_HIGH,
    LOSS_CLIP_FRAC_LOW,
    PRED_DELTA,
    REWARD_MEAN,
)

ENTROPY = ENTROPY_MEAN
# The Theorem 3.3 prediction, batch mean, logged at probe steps.
PRED_DELTA_PAPER = PRED_DELTA
PRED_DELTA_LOGIT = ENTROPY_PRED_DELTA_LOGIT
MEASURED_DELTA = ENTROPY_MEASURED_DELTA
REWARD = REWARD_MEAN

# Fractions of valid tokens removed from the loss: every filter's `<name>/frac_dropped`
# (clip_b, clip_v, clip_cov, top_entropy) and the PPO ratio clipping fractions.
_DROP_SUFFIX = "/frac_dropped"
# verl's actor logs its PPO clip fraction (both sides) and its dual-clip fraction under these.
CLIP_FRACTIONS = (
    LOSS_CLIP_FRAC_LOW,
    LOSS_CLIP_FRAC_HIGH,
    "actor/pg_clipfrac",
    "actor/pg_clipfrac_lower",
)


def is_drop_fraction(key: str) -> bool:
    """True for `clip_b/frac_dropped`-style filter metrics and the PPO clip fractions."""
    return key.endswith(_DROP_SUFFIX) or key in CLIP_FRACTIONS
