"""entropy-dynamics: predict, measure and control policy entropy in RL fine-tuning of LMs.

The public names of ARCHITECTURE.md; importing the package pulls in torch and numpy only.
"""

from . import methods
from ._token_stats_vocab_parallel import (
    token_stats_from_hidden_vocab_parallel,
    token_stats_vocab_parallel,
)
from .advantages import grpo_advantages
from .aggregation import aggregate
from .clamped_entropy import clamped_entropy, clamped_entropy_from_hidden
from .methods import clip_b_mask, clip_v_mask
from .theory import (
    discriminator,
    entropy,
    exact_entropy_change,
    exact_grpo_step_change,
    exact_single_logit_change,
    grpo_step_delta,
    predict_entropy_change,
    predict_grpo_step_change,
    predict_single_logit_change,
    vocab_baseline,
)
from .token_stats import TokenStats, token_stats, token_stats_from_hidden

__version__ = "0.1.0"

__all__ = [
    "TokenStats",
    "aggregate",
    "clamped_entropy",
    "clamped_entropy_from_hidden",
    "clip_b_mask",
    "clip_v_mask",
    "discriminator",
    "entropy",
    "exact_entropy_change",
    "exact_grpo_step_change",
    "exact_single_logit_change",
    "grpo_advantages",
    "grpo_step_delta",
    "methods",
    "predict_entropy_change",
    "predict_grpo_step_change",
    "predict_single_logit_change",
    "token_stats",
    "token_stats_from_hidden",
    "token_stats_from_hidden_vocab_parallel",
    "token_stats_vocab_parallel",
    "vocab_baseline",
]
