"""AEPO (QwenLong-L1.5): negative samples dropped while the batch entropy is high, with hysteresis.

Shen et al. 2025, "QwenLong-L1.5: Post-Training Recipe for Long-Context Reasoning and Memory
Management", arXiv 2512.12967, sec. 4.4: if the batch entropy exceeds ``H_high`` every sample
with a negative advantage is masked (the update uses positive samples only, which lowers
entropy); once the entropy falls below ``H_low`` the negative gradients come back. Between the
two bounds the switch keeps its last position, so it is state carried across steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import diagnostics as dg
from ..distributed import global_sum, masked_mean_std
from ._checks import check_choice, check_denominator, check_number
from .base import KEPT, Filter, PlanContext
from .registry import register

__all__ = ["Aepo", "aepo_batch_entropy", "aepo_switch"]

ENTROPY_MEANS = ("seq-mean-token-mean", "token-mean")


def aepo_switch(on: bool, entropy: float, *, low: float, high: float) -> bool:
    """The switch after seeing this step's batch ``entropy``: on above ``high``, off below
    ``low``, unchanged in ``[low, high]``. Example: (False, 0.35, low=0.1, high=0.3) is True;
    (True, 0.2, ...) stays True; (True, 0.05, ...) is False."""
    if entropy > high:
        return True
    if entropy < low:
        return False
    return on


def aepo_batch_entropy(
    entropy: Tensor, mask: Tensor, *, mean: str = "seq-mean-token-mean", group=None
) -> Tensor:
    """The batch entropy AEPO compares with its bounds, 0-dim float64, batch-global.

    ``entropy, mask``: ``[B, T]``. ``"seq-mean-token-mean"`` is the paper's Eq. 11,
    ``(1/|B|) sum_i (1/|y_i|) sum_t H_{i,t}`` over the rows with a valid token;
    ``"token-mean"`` is the mean over valid tokens (the authors' snippet reads verl's
    ``actor/entropy_loss``, ``agg_loss(entropys, loss_agg_mode)``: token-mean by default).
    An empty batch gives 0. Example: rows [1, 3] and [2] give (2 + 2) / 2 = 2 and 6 / 3 = 2.
    """
    check_choice("aepo", "entropy_mean", mean, ENTROPY_MEANS)
    if mean == "token-mean":
        value, _, _ = masked_mean_std(entropy.detach().double(), mask, group=group)
        return value
    values = torch.where(mask, entropy.detach().double(), 0.0)  # (B, T)
    counts = mask.sum(dim=-1)  # (B,)
    rows = counts > 0
    row_means = torch.where(rows, values.sum(dim=-1) / counts.clamp(min=1), 0.0)  # (B,)
    totals = global_sum(torch.stack([row_means.sum(), rows.sum().double()]))
    return torch.where(totals[1] > 0, totals[0] / totals[1].clamp(min=1), 0.0)


@register
@dataclass(frozen=True, kw_only=True)
class Aepo(Filter):
    """``aepo``: AEPO's negative-gradient clipping (QwenLong-L1.5, arXiv 2512.12967, sec. 4.4).

    Each step, with ``H`` the batch entropy before the update (``aepo_batch_entropy``; Eq. 11 by
    default) and ``on`` the switch of the previous step: ``on = H > high or (on and H >= low)``
    (``aepo_switch``). While on, only tokens with ``A > 0`` are kept: every response with
    ``A <= 0`` leaves the loss (and, with ``denominator='kept'``, the token-mean denominator, as
    the authors' snippet removes those samples from the batch). While off, every token is kept.
    State: ``{"on": bool}``, decided in the plan (the step's own entropy), starting off.
    Lens: dropping ``A < 0`` tokens removes the updates that push sampled tokens down; those
    lower entropy when ``S_* < N`` and raise it when ``S_* > N`` (Thm 3.3), and the paper's
    observation is that on balance they raise it (negative samples drive entropy up), so the
    positive-only phase lowers entropy until ``H < low``.
    Defaults ``low`` 0.1, ``high`` 0.3 are ours: the paper names ``H_low`` / ``H_high`` without
    values (its entropy plot for Qwen3-30B-A3B spans 0.10-0.30); set them to the entropy range
    of your model.
    """

    name: ClassVar[str] = "aepo"
    low: float = 0.1
    high: float = 0.3
    entropy_mean: str = "seq-mean-token-mean"
    denominator: str = KEPT

    def __post_init__(self) -> None:
        check_number(self.name, "low", self.low, low=0.0)
        check_number(self.name, "high", self.high, low=self.low)
        check_choice(self.name, "entropy_mean", self.entropy_mean, ENTROPY_MEANS)
        check_denominator(self.name, self.denominator)

    def init_state(self) -> dict[str, Tensor]:
        return {"on": torch.tensor(False)}

    def keep(self, ctx: PlanContext):
        batch, group, state = ctx.batch, ctx.group, ctx.state
        if state is None:
            raise ValueError(
                f"{self.name} is stateful: pass its state in PlanContext(state=...) (Method.plan does)"
            )
        entropy = aepo_batch_entropy(batch.entropy, batch.mask, mean=self.entropy_mean,
                                     group=group)  # fmt: skip
        value = float(entropy)  # host sync, once per batch (the switch's input)
        on = aepo_switch(bool(state["on"]), value, low=self.low, high=self.high)
        keep = batch.mask & (batch.advantages > 0) if on else batch.mask.clone()
        metrics = dg.drop_fractions(
            keep,
            batch.mask,
            batch.advantages,
            names=(dg.AEPO_FRAC_DROPPED, dg.AEPO_FRAC_DROPPED_POS, dg.AEPO_FRAC_DROPPED_NEG),
            group=group,
        )
        metrics[dg.AEPO_ENTROPY] = torch.tensor(value, dtype=torch.float32)
        metrics[dg.AEPO_ON] = torch.tensor(float(on), dtype=torch.float32)
        return keep, metrics, {"on": torch.tensor(on)}
