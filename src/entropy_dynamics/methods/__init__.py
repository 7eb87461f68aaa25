"""Entropy-control methods as composable registered parts, presets and a spec parser.

``build(spec)`` makes a Method from e.g. ``"ppo(eps_high=0.28) + clip_b(mu=2.5)"``;
``names()`` lists every registered part and preset; ``get(name)`` returns one.
"""

from . import (  # noqa: F401
    aepo,
    archer,
    clipping,
    controllers,
    filters,
    regularisers,
    reweight,
    surrogates,
    target,
)
from . import presets as _presets  # noqa: F401  (registers the presets)
from .base import (
    Advantage,
    Filter,
    LossContext,
    Part,
    Plan,
    PlanContext,
    Regulariser,
    Reweight,
    Surrogate,
    TokenBatch,
)
from .clipping import ClipVDecision, clip_b_mask, clip_v_decision, clip_v_mask
from .filters import centred_covariance, clip_cov_mask, sign_condition_mask, top_entropy_mask
from .method import Method
from .registry import get_part, names, register
from .regularisers import kl_cov_select, kl_estimate
from .reweight import advantage_sign_weight
from .spec import Preset, build, get, get_preset, parse, register_preset
from .surrogates import ce_gppo_loss, pg_loss, ppo_loss

__all__ = [
    "Advantage",
    "ClipVDecision",
    "Filter",
    "LossContext",
    "Method",
    "Part",
    "Plan",
    "PlanContext",
    "Preset",
    "Regulariser",
    "Reweight",
    "Surrogate",
    "TokenBatch",
    "advantage_sign_weight",
    "build",
    "ce_gppo_loss",
    "centred_covariance",
    "clip_b_mask",
    "clip_cov_mask",
    "clip_v_decision",
    "clip_v_mask",
    "get",
    "get_part",
    "get_preset",
    "kl_cov_select",
    "kl_estimate",
    "names",
    "parse",
    "pg_loss",
    "ppo_loss",
    "register",
    "register_preset",
    "sign_condition_mask",
    "top_entropy_mask",
]
