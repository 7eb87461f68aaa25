"""Advantage-sign parts: per-token reweighting (``adv_weight``) and W-REINFORCE's advantages."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..advantages import w_reinforce_advantages
from ._checks import check_number
from .base import Advantage, Reweight, TokenBatch
from .registry import register

__all__ = ["AdvWeight", "WReinforce", "advantage_sign_weight"]

# The estimator's signature holds the defaults; the part reads them from there (defaults once).
_W_REINFORCE = inspect.signature(w_reinforce_advantages).parameters


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
