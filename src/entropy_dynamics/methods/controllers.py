"""Entropy controllers with state across steps: EntroPIC's PI term and AEnt's clamped bonus."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import diagnostics as dg
from ..distributed import global_sum, masked_mean_std
from ._checks import check_choice, check_number
from .base import LossContext, Plan, PlanContext, Regulariser
from .registry import register
from .surrogates import LOG_RATIO_CLAMP

__all__ = ["Aent", "ClampedEntropyBonus", "EntroPic", "entropic_alpha"]

ENTROPIC_DENOMINATORS = ("high", "kept")


def _kept_sum(values: Tensor, plan: Plan) -> Tensor:
    return torch.where(plan.keep, values.detach(), 0.0).sum()


def entropic_alpha(
    error: float, integral: float, *, kp: float = 1.0, ki: float = 0.01, max_alpha: float = 1.0
) -> float:
    """EntroPIC's PI coefficient: ``clip(kp * e + ki * I, -max_alpha, max_alpha)``.

    ``e = H - H_target`` is this step's error, ``I`` the sum of the errors of earlier steps.
    Example: e = 0.2, I = 1.0 gives 0.2 + 0.01 = 0.21.
    """
    return min(max(kp * error + ki * integral, -max_alpha), max_alpha)


@register
@dataclass(frozen=True, kw_only=True)
class EntroPic(Regulariser):
    """``entropic``: EntroPIC (Yang et al. 2025, arXiv 2511.15248; code yk7333/EntroPIC).

    On the high-probability tokens (``p_k > threshold``) the loss gains
    ``alpha * (-r |A|)``, with ``r = exp(clamp(log p - old log p, +-20))`` and ``alpha`` set once
    per step by a PI controller on the entropy error ``e = mean H - target``
    (``entropic_alpha``; ``mean H`` over the batch's valid tokens before the update). With
    ``denominator='high'`` (the authors' ``agg_loss`` over the high-probability mask) the term is
    a mean over those tokens: each is scaled by ``n_kept / n_high``, exact under token-mean
    aggregation; ``'kept'`` leaves it a share of the ordinary token mean.
    Lens: the tokens touched are confident ones (``p > 0.95``, so ``S_* > N``); ``alpha > 0``
    (entropy above target) raises their log-probability whatever the sign of A, which lowers
    entropy (Thm 3.3), ``alpha < 0`` lowers it, which raises entropy.
    State: ``{"integral": float64}``, the sum of past errors. ``target`` 0.1 is the authors'
    run script's; ``kp`` 1, ``ki`` 0.01, ``threshold`` 0.95, ``max_alpha`` 1 their defaults.
    """

    name: ClassVar[str] = "entropic"
    constants: ClassVar[tuple[str, ...]] = (dg.ENTROPIC_ALPHA, dg.ENTROPIC_NUM_HIGH)
    target: float = 0.1
    kp: float = 1.0
    ki: float = 0.01
    threshold: float = 0.95
    max_alpha: float = 1.0
    denominator: str = "high"

    def __post_init__(self) -> None:
        check_number(self.name, "target", self.target, low=0.0)
        check_number(self.name, "kp", self.kp, low=0.0)
        check_number(self.name, "ki", self.ki, low=0.0)
        check_number(self.name, "threshold", self.threshold, low=0.0, high=1.0, low_open=True,
                     high_open=True)  # fmt: skip
        check_number(self.name, "max_alpha", self.max_alpha, low=0.0, low_open=True)
        check_choice(self.name, "denominator", self.denominator, ENTROPIC_DENOMINATORS)

    def init_state(self) -> dict[str, Tensor]:
        return {"integral": torch.tensor(0.0, dtype=torch.float64)}

    def select(self, ctx: PlanContext):
        batch, group, state = ctx.batch, ctx.group, ctx.state
        if state is None:
            raise ValueError(
                f"{self.name} is stateful: pass its state in PlanContext(state=...) (Method.plan does)"
            )
        mean_h, _, _ = masked_mean_std(batch.entropy, batch.mask, group=group)
        error = float(mean_h) - self.target  # host sync, once per batch (the controller's input)
        alpha = entropic_alpha(error, float(state["integral"]), kp=self.kp, ki=self.ki,
                               max_alpha=self.max_alpha)  # fmt: skip
        high = batch.mask & (batch.logprobs.detach() > math.log(self.threshold))
        counts = global_sum(torch.stack([high.sum(), batch.mask.sum()]))
        return high, {
            dg.ENTROPIC_ALPHA: torch.tensor(alpha, dtype=torch.float32),
            dg.ENTROPIC_ERROR: torch.tensor(error, dtype=torch.float32),
            dg.ENTROPIC_NUM_HIGH: counts[0].to(torch.float32),
            dg.ENTROPIC_FRAC_HIGH: (counts[0] / counts[1].clamp(min=1)).to(torch.float32),
        }

    def token_loss(self, ctx: LossContext):
        logprobs, old_logprobs, advantages, plan, selected = (
            ctx.logprobs,
            ctx.old_logprobs,
            ctx.advantages,
            ctx.plan,
            ctx.selected,
        )
        if advantages is None or selected is None:
            raise ValueError(f"{self.name}: token_loss needs advantages and the plan's tokens")
        if dg.ENTROPIC_ALPHA not in plan.metrics:
            raise ValueError(f"{self.name}: the plan has no alpha; make it with Method.plan")
        alpha = plan.metrics[dg.ENTROPIC_ALPHA].to(logprobs.device, logprobs.dtype)
        ratio = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        term = torch.where(selected, -alpha * ratio * advantages.abs(), 0.0)
        if self.denominator == "high":  # a mean over the high-probability tokens
            n_high = plan.metrics[dg.ENTROPIC_NUM_HIGH].to(logprobs.device, torch.float64)
            scale = plan.num_tokens.to(logprobs.device, torch.float64) / n_high.clamp(min=1)
            term = term * scale.to(term.dtype)
        return term, {dg.ENTROPIC_TERM: _kept_sum(term, plan)}

    def next_state(self, state: dict[str, Tensor], metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """The integral gains the step's error (``metrics[ENTROPIC_ERROR]``, from the plan)."""
        if dg.ENTROPIC_ERROR not in metrics:
            raise ValueError(f"{self.name}: the step's metrics lack {dg.ENTROPIC_ERROR!r}")
        integral = float(state["integral"]) + float(metrics[dg.ENTROPIC_ERROR])
        return {"integral": torch.tensor(integral, dtype=torch.float64)}


@register
@dataclass(frozen=True, kw_only=True)
class ClampedEntropyBonus(Regulariser):
    """``clamped_entropy_bonus``: ``loss_t -= coef * H_c,t``, the clamped entropy
    (``entropy_dynamics.clamped_entropy``: the lowest ``clamp_p`` share of logits cut).

    AEnt's term with a fixed coefficient (Shen 2025, arXiv 2509.03493). Lens: ``-coef H_c``
    moves the kept logits by ``-coef S^c`` (S of the clamped policy), raising the entropy among
    the kept tokens and leaving the cut tail alone; it touches every kept token, whatever A.
    Defaults: the authors' README config (coef 2e-4, clamp 0.3).
    """

    name: ClassVar[str] = "clamped_entropy_bonus"
    constants: ClassVar[tuple[str, ...]] = (dg.AENT_COEF,)
    coef: float = 0.0002
    clamp_p: float = 0.3

    def __post_init__(self) -> None:
        check_number(self.name, "coef", self.coef, low=0.0)
        check_number(self.name, "clamp_p", self.clamp_p, low=0.0, high=1.0, high_open=True)

    def select(self, ctx: PlanContext):
        return None, {dg.AENT_COEF: torch.tensor(float(self.coef))}

    def token_loss(self, ctx: LossContext):
        plan, clamped_entropy = ctx.plan, ctx.clamped_entropy
        if clamped_entropy is None:
            raise ValueError(
                f"{self.name} needs clamped_entropy (with gradient, clamp_p={self.clamp_p}) in "
                "token_loss(...); the trainer computes it when Method.clamp_p is set"
            )
        coef = plan.metrics[dg.AENT_COEF].to(clamped_entropy.device, clamped_entropy.dtype)
        metrics = {dg.AENT_CLAMPED_ENTROPY: _kept_sum(clamped_entropy, plan)}
        return -coef * clamped_entropy, metrics


@register
@dataclass(frozen=True, kw_only=True)
class Aent(ClampedEntropyBonus):
    """``aent``: AEnt (Shen 2025, arXiv 2509.03493; code antgroup AEnt on AReaL): the clamped
    entropy bonus with its coefficient adjusted after each step.

    After step ``s`` (0-based), if ``s > warmup_steps``, with ``H_c`` the step's mean clamped
    entropy of kept tokens: ``coef -= coef_lr * (min(0, H_c - low) + max(0, H_c - high))``, then
    clamped to ``[min_coef, max_coef]``; inside ``[low, high]`` it does not move. ``coef`` is the
    start. State: ``{"coef": float64, "step": int64}``. Defaults: the README's config.
    """

    name: ClassVar[str] = "aent"
    low: float = 0.05
    high: float = 0.23
    coef_lr: float = 0.001
    min_coef: float = 1e-5
    max_coef: float = 0.003
    warmup_steps: int = 29

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.name, "low", self.low, low=0.0)
        check_number(self.name, "high", self.high, low=self.low)
        check_number(self.name, "coef_lr", self.coef_lr, low=0.0, low_open=True)
        check_number(self.name, "min_coef", self.min_coef, low=0.0)
        check_number(self.name, "max_coef", self.max_coef, low=self.min_coef)
        if (
            isinstance(self.warmup_steps, bool)
            or not isinstance(self.warmup_steps, int)
            or (self.warmup_steps < 0)
        ):
            raise ValueError(f"aent: warmup_steps must be an int >= 0, got {self.warmup_steps!r}")

    def init_state(self) -> dict[str, Tensor]:
        return {
            "coef": torch.tensor(float(self.coef), dtype=torch.float64),
            "step": torch.tensor(0, dtype=torch.int64),
        }

    def select(self, ctx: PlanContext):
        state = ctx.state
        if state is None:
            raise ValueError(
                f"{self.name} is stateful: pass its state in PlanContext(state=...) (Method.plan does)"
            )
        return None, {dg.AENT_COEF: state["coef"].to(torch.float32)}

    def next_state(self, state: dict[str, Tensor], metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        if dg.AENT_CLAMPED_ENTROPY not in metrics:
            raise ValueError(f"{self.name}: the step's metrics lack {dg.AENT_CLAMPED_ENTROPY!r}")
        step, coef = int(state["step"]), float(state["coef"])
        if step > self.warmup_steps:
            h = float(metrics[dg.AENT_CLAMPED_ENTROPY])
            coef -= self.coef_lr * (min(0.0, h - self.low) + max(0.0, h - self.high))
            coef = min(max(coef, self.min_coef), self.max_coef)
        return {
            "coef": torch.tensor(coef, dtype=torch.float64),
            "step": torch.tensor(step + 1, dtype=torch.int64),
        }
