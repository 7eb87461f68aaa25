"""Advantage parts: per-token reweighting (``adv_weight``, ``entropy_advantage``) and the
estimators a method prescribes (W-REINFORCE's, QAE's)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._dtypes import compute_dtype
from ..advantages import QUANTILE_METHODS, qae_advantages, w_reinforce_advantages
from ._checks import check_choice, check_number
from .base import Advantage, Reweight, TokenBatch
from .registry import register

__all__ = [
    "AdvWeight",
    "EntropyAdvantage",
    "Qae",
    "WReinforce",
    "advantage_sign_weight",
    "entropy_shaped_advantages",
]

# The estimator's signature holds the defaults; the part reads them from there (defaults once).
_W_REINFORCE = inspect.signature(w_reinforce_advantages).parameters
_QAE = inspect.signature(qae_advantages).parameters


def advantage_sign_weight(
    advantages: Tensor, *, pos_weight: float = 1.0, neg_weight: float = 1.0
) -> Tensor:
    """Weights ``[B, T]``: ``pos_weight`` where ``A > 0``, ``neg_weight`` where ``A < 0``, else 1.

    W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347) scales positive samples by lambda = 0.1.
    """
    ones = torch.ones_like(
        advantages, dtype=torch.float32 if advantages.dtype != torch.float64 else torch.float64
    )
    weight = torch.where(advantages > 0, pos_weight * ones, ones)
    return torch.where(advantages < 0, neg_weight * ones, weight)


@register
@dataclass(frozen=True, kw_only=True)
class AdvWeight(Reweight):
    """``adv_weight``: scale positive-advantage tokens by ``pos_weight``, negative by ``neg_weight``."""

    name: ClassVar[str] = "adv_weight"
    pos_weight: float = 1.0
    neg_weight: float = 1.0

    def __post_init__(self) -> None:
        check_number(self.name, "pos_weight", self.pos_weight, low=0.0)
        check_number(self.name, "neg_weight", self.neg_weight, low=0.0)

    def weight(self, batch: TokenBatch) -> Tensor:
        return advantage_sign_weight(
            batch.advantages, pos_weight=self.pos_weight, neg_weight=self.neg_weight
        )


@register
@dataclass(frozen=True, kw_only=True)
class WReinforce(Advantage):
    """``w_reinforce``: W-REINFORCE's advantages, ``+pos_weight`` correct / ``-neg_weight`` wrong.

    ``advantages.w_reinforce_advantages`` (no group baseline). The trainer computes the
    advantages with ``method.advantage.advantages(rewards, G)`` when a method has this part.
    """

    name: ClassVar[str] = "w_reinforce"
    pos_weight: float = _W_REINFORCE["pos_weight"].default
    neg_weight: float = _W_REINFORCE["neg_weight"].default

    def __post_init__(self) -> None:
        check_number(self.name, "pos_weight", self.pos_weight, low=0.0)
        check_number(self.name, "neg_weight", self.neg_weight, low=0.0)

    def advantages(self, rewards: Tensor, group_size: int) -> Tensor:
        return w_reinforce_advantages(
            rewards, group_size, pos_weight=self.pos_weight, neg_weight=self.neg_weight
        )


@register
@dataclass(frozen=True, kw_only=True)
class Qae(Advantage):
    """``qae``: Quantile Advantage Estimation (Wu et al. 2025, arXiv 2509.22611), GRPO's
    advantage with the group's ``k``-quantile as the baseline (``advantages.qae_advantages``).

    ``A = (R - Q_k(R_group)) / (std(R_group) + 1e-6)`` (``norm_by_std=False``: no division).
    ``quantile='linear'`` is the authors' ``torch.quantile``; ``'inverted_cdf'`` the paper's
    exact two-regime gate (baseline 0 on groups with success rate ``p <= 1 - k``, else 1).
    Lens: on a hard group (baseline 0) only successes move, ``A > 0``; on an easy group
    (baseline 1) only failures, ``A < 0``; most responses get ``A = 0`` and move no token.
    """

    name: ClassVar[str] = "qae"
    k: float = _QAE["k"].default
    quantile: str = _QAE["quantile"].default
    norm_by_std: bool = _QAE["norm_by_std"].default

    def __post_init__(self) -> None:
        check_number(self.name, "k", self.k, low=0.0, high=1.0, low_open=True, high_open=True)
        check_choice(self.name, "quantile", self.quantile, QUANTILE_METHODS)
        if not isinstance(self.norm_by_std, bool):
            raise ValueError(f"qae: norm_by_std must be True or False, got {self.norm_by_std!r}")

    def advantages(self, rewards: Tensor, group_size: int) -> Tensor:
        return qae_advantages(rewards, group_size, k=self.k, quantile=self.quantile,
                              norm_by_std=self.norm_by_std)  # fmt: skip


def entropy_shaped_advantages(
    advantages: Tensor, entropy: Tensor, *, alpha: float = 0.4, kappa: float = 2.0
) -> Tensor:
    """Cheng et al. 2025 (arXiv 2506.14758): ``A_t + min(alpha * H_t.detach(), |A_t| / kappa)``.

    ``advantages, entropy``: ``[B, T]``. The term is >= 0, never larger than ``|A_t| / kappa``,
    and carries no gradient. With ``kappa > 1`` it never changes the sign of ``A_t`` (and is 0
    where ``A_t = 0``). Example: A = -1, H = 2, alpha 0.4, kappa 2: -1 + min(0.8, 0.5) = -0.5.
    """
    term = torch.minimum(alpha * entropy.detach(), advantages.abs() / kappa)
    return advantages + term.to(advantages.dtype)


@register
@dataclass(frozen=True, kw_only=True)
class EntropyAdvantage(Reweight):
    """``entropy_advantage``: entropy-based advantage shaping (Cheng et al. 2025, arXiv
    2506.14758), ``A'_t = A_t + min(alpha H_t.detach(), |A_t| / kappa)`` per token.

    Why a reweight: the shaped advantage is per token, so it does not fit the per-response
    ``Advantage`` part, and handing the surrogate a second advantage would change ``Plan`` and
    every adapter. It needs neither: because ``kappa > 1`` keeps ``sign(A'_t) = sign(A_t)``,
    ``A'_t = w_t A_t`` with ``w_t = A'_t / A_t = 1 + sign(A_t) min(alpha H_t, |A_t| / kappa) / |A_t|``
    in ``[1 - 1/kappa, 1 + 1/kappa]`` (1 where ``A_t = 0``), and every registered surrogate is
    positively homogeneous in A with its clip branches chosen by the sign of A (PPO, dual clip,
    CE-GPPO, pg: ``loss(c A) = c loss(A)`` for ``c > 0``; tested for each). So scaling the
    surrogate's per-token loss by ``w_t`` is exactly the surrogate evaluated at ``A'``, with the
    same clip masks; regularisers that read A (``entropic``) still see the unshaped A.
    ``H_t`` is ``TokenBatch.entropy`` (the policy the batch is planned with, before the update).
    ``kappa <= 1`` is refused: the term could then flip a negative advantage's sign.
    Defaults: alpha 0.4, kappa 2 (see docs/anchors.md for what was confirmed).
    """

    name: ClassVar[str] = "entropy_advantage"
    alpha: float = 0.4
    kappa: float = 2.0

    def __post_init__(self) -> None:
        check_number(self.name, "alpha", self.alpha, low=0.0)
        check_number(self.name, "kappa", self.kappa, low=1.0, low_open=True)

    def weight(self, batch: TokenBatch) -> Tensor:
        dtype = compute_dtype(batch.advantages.dtype)
        advantages = batch.advantages.to(dtype)
        shaped = entropy_shaped_advantages(
            advantages, batch.entropy.to(dtype), alpha=self.alpha, kappa=self.kappa
        )
        nonzero = advantages != 0
        return torch.where(nonzero, shaped / torch.where(nonzero, advantages, 1.0), 1.0)
