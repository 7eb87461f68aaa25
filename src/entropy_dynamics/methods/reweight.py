"""Per-token reweighting by advantage sign (W-REINFORCE style positive/negative sample weights)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ._checks import check_number
from .base import Reweight, TokenBatch
from .registry import register

__all__ = ["AdvWeight", "advantage_sign_weight"]


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
