"""A controller of our own: Clip_B's or Clip_V's threshold chosen each step to hold a target entropy.

The paper gives each token's first-order entropy change under a policy-gradient step,
``dH_t ~= -alpha_t (S_t - N_t)`` (Thm 3.3, ``alpha_t = lr r_t A_t``), and Clip_B / Clip_V decide
which tokens take part. ``target_entropy`` turns that into a controller: each step it measures
the batch entropy, asks for a change that closes part of the gap to the target, predicts the
step's change for every candidate threshold, and applies the threshold whose prediction is
closest, never dropping more than ``max_drop`` of the valid tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import diagnostics as dg
from .. import theory
from ..distributed import global_sum, masked_mean_std
from ._checks import check_choice, check_denominator, check_number
from .base import KEPT, Filter, PlanContext, TokenBatch
from .clipping import clip_b_mask, clip_v_decision
from .registry import register

__all__ = ["TargetEntropy", "scheduled_target", "target_entropy_choice"]

BASES = ("clip_b", "clip_v")
DEFAULT_MUS = (3.0, 2.5, 2.0, 1.5, 1.25, 1.0, 0.75, 0.5)  # largest first


def scheduled_target(step: int, target: float, target_end: float | None, steps: int) -> float:
    """The target at ``step`` (0-based): ``target``, or linear from ``target`` to ``target_end``
    over ``steps`` steps and ``target_end`` after. Example: (5, 1.0, 0.5, 10) gives 0.75."""
    if target_end is None or steps <= 0:
        return target
    return target + (target_end - target) * min(step / steps, 1.0)


def target_entropy_choice(
    predicted: list[float], dropped: list[float], desired: float, max_drop: float
) -> int:
    """Index of the candidate to apply: among those dropping at most ``max_drop`` (a share of
    the valid tokens; candidate 0 drops none and is always allowed), the one whose predicted
    entropy change is closest to ``desired``; ties go to the earlier candidate (fewer drops).
    Example: predicted [-0.1, 0.0, 0.3], dropped [0, 0.01, 0.2], desired 0.2, max_drop 0.05
    gives 1 (candidate 2 would be closer but drops 20 %)."""
    best, best_gap = 0, abs(predicted[0] - desired)
    for i in range(1, len(predicted)):
        gap = abs(predicted[i] - desired)
        if dropped[i] <= max_drop and gap < best_gap:
            best, best_gap = i, gap
    return best


@register
@dataclass(frozen=True, kw_only=True)
class TargetEntropy(Filter):
    """``target_entropy``: Clip_B's (``base='clip_b'``) or Clip_V's (``'clip_v'``) released
    rule with its threshold ``mu`` chosen each step so that the batch entropy tracks a target.

    Each step, with ``H`` the mean entropy of the batch's valid tokens (before the update) and
    ``H*`` the target (``target``, or linear to ``target_end`` over ``schedule_steps``):
    ``e = H - H*``; the desired change is ``d = -(gain e + ki I)``, ``I`` the sum of earlier
    errors (not summed while the choice is saturated: anti-windup). Each candidate ``mu`` in
    ``mus`` (and "no threshold", every token kept) gets the paper's first-order prediction of the
    batch's change, ``dH(mu) = (1/n) sum_t keep_t(mu) (-alpha_t (S_t - N_t))`` with
    ``alpha_t = theory.nominal_step(lr, A, ratio=r)`` (n = valid tokens; a dropped token does
    not move); the applied ``mu`` is the candidate whose ``dH`` is closest to ``d`` among those
    dropping at most ``max_drop`` of the valid tokens (``target_entropy_choice``; ties: fewer
    drops). The masks are ``clip_b_mask`` / ``clip_v_decision`` (Clip_V uncapped: ``max_drop``
    is the bound).

    ``lr`` is the step the prediction uses: the learning rate for SGD on the logits. Under
    Adam on a network the measured change per step is far larger than that prediction; set
    ``lr`` to the optimiser's lr times the measured / predicted ratio of the trainer's probe
    (``logging.probe_every``: ``entropy/measured_delta`` / ``entropy/pred_delta``), as the
    ``entropy_target`` experiment does. Only ``gain / lr`` and ``ki / lr`` matter.
    Lens: both released rules drop only ``A <= 0`` tokens far below the batch's S (Clip_B) or
    their own N (Clip_V), whose updates would LOWER entropy (``-alpha (S - N) < 0`` for
    ``A < 0``, ``S < N``): the controller can raise entropy above the unfiltered step, not
    lower it; above the target it keeps every token.
    State: ``{"step": int64, "integral": float64}``, advanced after the optimiser step.
    """

    name: ClassVar[str] = "target_entropy"
    needs_baseline: ClassVar[bool] = True  # the prediction reads S - N whatever the base
    base: str = "clip_b"
    target: float = 0.5
    target_end: float | None = None
    schedule_steps: int = 0
    lr: float = 1e-3
    gain: float = 0.5
    ki: float = 0.0
    max_drop: float = 0.05
    mus: tuple = DEFAULT_MUS
    denominator: str = KEPT

    def __post_init__(self) -> None:
        check_choice(self.name, "base", self.base, BASES)
        check_number(self.name, "target", self.target, low=0.0)
        if self.target_end is not None:
            check_number(self.name, "target_end", self.target_end, low=0.0)
        steps = self.schedule_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{self.name}: schedule_steps must be an int >= 0, got {steps!r}")
        check_number(self.name, "lr", self.lr, low=0.0, low_open=True)
        check_number(self.name, "gain", self.gain, low=0.0)
        check_number(self.name, "ki", self.ki, low=0.0)
        check_number(self.name, "max_drop", self.max_drop, low=0.0, high=1.0)
        mus = self.mus
        if isinstance(mus, list):
            mus = tuple(mus)
        if not isinstance(mus, tuple) or not mus:
            raise ValueError(f"{self.name}: mus must be a non-empty tuple of numbers > 0")
        mus = tuple(check_number(self.name, "mus", mu, low=0.0, low_open=True) for mu in mus)
        # largest first: candidate order = fewest drops first (the tie-break)
        object.__setattr__(self, "mus", tuple(sorted(set(mus), reverse=True)))
        check_denominator(self.name, self.denominator)

    def init_state(self) -> dict[str, Tensor]:
        return {
            "step": torch.tensor(0, dtype=torch.int64),
            "integral": torch.tensor(0.0, dtype=torch.float64),
        }

    def _mask(self, batch: TokenBatch, mu: float, group) -> Tensor:
        if self.base == "clip_b":
            return clip_b_mask(batch.discriminator, batch.advantages, batch.mask, mu=mu,
                               group=group)  # fmt: skip
        return clip_v_decision(batch.discriminator, batch.baseline, batch.advantages, batch.mask,
                               mu=mu, max_frac=1.0, group=group).keep  # fmt: skip

    def keep(self, ctx: PlanContext):
        batch, group, state = ctx.batch, ctx.group, ctx.state
        if state is None:
            raise ValueError(
                f"{self.name} is stateful: pass its state in PlanContext(state=...) (Method.plan does)"
            )
        if batch.baseline is None:
            raise ValueError(f"{self.name} needs TokenBatch.baseline (N); use token_stats")
        mask = batch.mask
        mean_h, _, _ = masked_mean_std(batch.entropy, mask, group=group)
        target = scheduled_target(int(state["step"]), self.target, self.target_end,
                                  self.schedule_steps)  # fmt: skip
        error = float(mean_h) - target  # host sync, once per batch (the controller's input)
        desired = -(self.gain * error + self.ki * float(state["integral"]))
        ratio = torch.exp(batch.logprobs.detach().double() - batch.old_logprobs.detach().double())
        alpha = theory.nominal_step(self.lr, batch.advantages.detach().double(), ratio=ratio)
        deviation = batch.discriminator.detach().double() - batch.baseline.detach().double()
        change = torch.where(mask, -alpha * deviation, 0.0)  # per-token first-order dH
        keeps = [mask, *(self._mask(batch, mu, group) for mu in self.mus)]
        sums = torch.stack(
            [
                torch.stack([torch.where(k, change, 0.0).sum(), (mask & ~k).sum().double()])
                for k in keeps
            ]
        )
        n_valid = global_sum(mask.sum()).double().clamp(min=1)
        totals = (global_sum(sums) / n_valid).tolist()  # one host sync: [candidate, 2]
        predicted = [row[0] for row in totals]
        dropped = [row[1] for row in totals]
        chosen = target_entropy_choice(predicted, dropped, desired, self.max_drop)
        allowed = [i for i in range(len(keeps)) if i == 0 or dropped[i] <= self.max_drop]
        most = max(allowed, key=lambda i: (predicted[i], -i))  # the highest dH within the bound
        saturated = (chosen == 0 and desired < predicted[0]) or (
            chosen == most and desired > predicted[chosen]
        )
        keep = keeps[chosen]
        metrics = dg.drop_fractions(
            keep,
            mask,
            batch.advantages,
            names=(
                dg.TARGET_ENTROPY_FRAC_DROPPED,
                dg.TARGET_ENTROPY_FRAC_DROPPED_POS,
                dg.TARGET_ENTROPY_FRAC_DROPPED_NEG,
            ),
            group=group,
        )
        values = {
            dg.TARGET_ENTROPY_TARGET: target,
            dg.TARGET_ENTROPY_ERROR: error,
            dg.TARGET_ENTROPY_DESIRED: desired,
            dg.TARGET_ENTROPY_PREDICTED: predicted[chosen],
            dg.TARGET_ENTROPY_PREDICTED_OFF: predicted[0],
            dg.TARGET_ENTROPY_MU: 0.0 if chosen == 0 else self.mus[chosen - 1],
            dg.TARGET_ENTROPY_SATURATED: float(saturated),
        }
        metrics.update({k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()})
        return keep, metrics, state

    def next_state(self, state: dict[str, Tensor], metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """One step on; the integral gains the step's error unless the choice was saturated."""
        for key in (dg.TARGET_ENTROPY_ERROR, dg.TARGET_ENTROPY_SATURATED):
            if key not in metrics:
                raise ValueError(f"{self.name}: the step's metrics lack {key!r}")
        integral = float(state["integral"])
        if not float(metrics[dg.TARGET_ENTROPY_SATURATED]) and math.isfinite(integral):
            integral += float(metrics[dg.TARGET_ENTROPY_ERROR])
        return {
            "step": torch.tensor(int(state["step"]) + 1, dtype=torch.int64),
            "integral": torch.tensor(integral, dtype=torch.float64),
        }
