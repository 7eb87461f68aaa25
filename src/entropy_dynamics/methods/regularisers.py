"""Loss regularisers: entropy bonus (static, adaptive), KL-Cov penalty, KL to a reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import diagnostics as dg
from ..distributed import global_sum, masked_topk
from ._checks import check_choice, check_number, check_same_shape
from .base import LossContext, Plan, PlanContext, Regulariser
from .filters import centred_covariance
from .registry import register

__all__ = ["AdaptiveEntropyBonus", "EntropyBonus", "KlCov", "KlRef", "kl_cov_select", "kl_estimate"]

KL_ESTIMATORS = ("k1", "k2", "k3", "k3_clamped")
KL_LOG_RATIO_CLAMP, KL_ESTIMATE_CLAMP = 20.0, 10.0  # verl's k3 ("low_var_kl") clamps


def _kept_sum(values: Tensor, plan: Plan) -> Tensor:
    """Sum of ``values`` ``[B, T]`` over the plan's kept tokens (a raw, additive metric)."""
    return torch.where(plan.keep, values.detach(), 0.0).sum()


def kl_cov_select(
    advantages: Tensor, logprobs: Tensor, mask: Tensor, *, ratio: float = 0.002, group=None
) -> Tensor:
    """KL-Cov's tokens: the top ``k = max(1, int(ratio n_valid))`` valid tokens by ``cov_t``.

    ``advantages, logprobs, mask``: ``[B, T]``; ``cov_t`` from ``centred_covariance``
    (batch-global means); ties broken by global position. Returns bool ``[B, T]``.
    Differs from the reference code (verl's ``kl_cov`` loss): there ``k`` and the means are per
    micro-batch; here batch-global.
    """
    cov, n_valid = centred_covariance(advantages, logprobs, mask, group=group)
    k = max(1, int(ratio * int(n_valid)))
    return masked_topk(cov, mask, k, group=group)


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, *, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled tokens, ``[B, T]``.

    With ``log_ratio = log pi - log pi_ref`` (Schulman's names):
    ``k1 = log_ratio`` (unbiased, high variance), ``k2 = log_ratio^2 / 2``,
    ``k3 = exp(-log_ratio) + log_ratio - 1`` (unbiased, non-negative; GRPO's choice, as TRL);
    ``k3_clamped``: verl's k3, with ``log_ratio`` clamped to +-20 and the estimate to [-10, 10].
    """
    check_same_shape("kl_ref", logprobs=logprobs, ref_logprobs=ref_logprobs)
    check_choice("kl_ref", "estimator", estimator, KL_ESTIMATORS)
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3_clamped":
        log_ratio = log_ratio.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
        kl = torch.exp(-log_ratio) + log_ratio - 1.0
        return kl.clamp(-KL_ESTIMATE_CLAMP, KL_ESTIMATE_CLAMP)
    return torch.exp(-log_ratio) + log_ratio - 1.0


@register
@dataclass(frozen=True, kw_only=True)
class EntropyBonus(Regulariser):
    """``entropy_bonus``: ``loss_t -= coef * H_t`` on every kept token (raises entropy).

    The coefficient is a batch constant: ``select`` puts it in the plan
    (``plan.metrics["entropy_bonus/coef"]``) and ``token_loss`` reads it from there.
    """

    name: ClassVar[str] = "entropy_bonus"
    needs_entropy: ClassVar[bool] = True
    constants: ClassVar[tuple[str, ...]] = (dg.ENTROPY_BONUS_COEF,)
    coef: float = 0.001

    def __post_init__(self) -> None:
        check_number(self.name, "coef", self.coef, low=0.0)

    def select(self, ctx: PlanContext):
        return None, {dg.ENTROPY_BONUS_COEF: torch.tensor(float(self.coef))}

    def token_loss(self, ctx: LossContext):
        plan, entropy = ctx.plan, ctx.entropy
        if entropy is None:
            raise ValueError(f"{self.name} needs entropy (with gradient) in token_loss(...)")
        if dg.ENTROPY_BONUS_COEF not in plan.metrics:
            raise ValueError(f"{self.name}: the plan has no coefficient; make it with Method.plan")
        coef = plan.metrics[dg.ENTROPY_BONUS_COEF].to(entropy.device, entropy.dtype)
        return -coef * entropy, {dg.ENTROPY_BONUS_ENTROPY: _kept_sum(entropy, plan)}


@register
@dataclass(frozen=True, kw_only=True)
class AdaptiveEntropyBonus(EntropyBonus):
    """``adaptive_entropy_bonus`` (Skywork-OR1 style, arXiv 2505.22312).

    Like ``entropy_bonus``, but after each step the coefficient moves by ``step`` towards
    holding the batch entropy at ``target``: up when the mean entropy of kept tokens is below
    ``target``, down otherwise, clamped to ``[min_coef, max_coef]``; ``coef`` is its start.
    State: ``{"coef": float64 0-dim tensor}``, the current coefficient. Defaults are ours
    (target 0.2 nats, step 0.005, start 0, at most 0.05).
    """

    name: ClassVar[str] = "adaptive_entropy_bonus"
    coef: float = 0.0
    target: float = 0.2
    step: float = 0.005
    min_coef: float = 0.0
    max_coef: float = 0.05

    def __post_init__(self) -> None:
        check_number(self.name, "min_coef", self.min_coef, low=0.0)
        check_number(self.name, "max_coef", self.max_coef, low=self.min_coef)
        check_number(self.name, "coef", self.coef, low=self.min_coef, high=self.max_coef)
        check_number(self.name, "target", self.target, low=0.0)
        check_number(self.name, "step", self.step, low=0.0, low_open=True)

    def init_state(self) -> dict[str, Tensor]:
        return {"coef": torch.tensor(float(self.coef), dtype=torch.float64)}

    def select(self, ctx: PlanContext):
        state = ctx.state
        if state is None:
            raise ValueError(
                f"{self.name} is stateful: pass its state in PlanContext(state=...) (Method.plan does)"
            )
        return None, {dg.ENTROPY_BONUS_COEF: state["coef"].to(torch.float32)}

    def next_state(self, state: dict[str, Tensor], metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """``metrics[ENTROPY_BONUS_ENTROPY]``: the step's mean entropy of kept tokens."""
        if dg.ENTROPY_BONUS_ENTROPY not in metrics:
            raise ValueError(
                f"{self.name}: the step's metrics lack {dg.ENTROPY_BONUS_ENTROPY!r} "
                "(pass Method.finalize_metrics(...) to step_end)"
            )
        entropy = float(metrics[dg.ENTROPY_BONUS_ENTROPY])
        coef = float(state["coef"])
        moved = coef + (self.step if entropy < self.target else -self.step)
        clamped = min(max(moved, self.min_coef), self.max_coef)
        return {"coef": torch.tensor(clamped, dtype=torch.float64)}


@register
@dataclass(frozen=True, kw_only=True)
class KlCov(Regulariser):
    """``kl_cov``: ``coef * |log p - old log p|`` on the top ``ratio`` tokens by covariance.

    Cui et al. 2025. The penalty is zero on a strictly on-policy first update (log p = old).
    """

    name: ClassVar[str] = "kl_cov"
    ratio: float = 0.002
    coef: float = 1.0

    def __post_init__(self) -> None:
        check_number(self.name, "ratio", self.ratio, low=0.0, high=1.0, low_open=True)
        check_number(self.name, "coef", self.coef, low=0.0)

    def select(self, ctx: PlanContext):
        batch, group = ctx.batch, ctx.group
        selected = kl_cov_select(
            batch.advantages, batch.logprobs, batch.mask, ratio=self.ratio, group=group
        )
        counts = global_sum(torch.stack([selected.sum(), batch.mask.sum()]))
        return selected, {dg.KL_COV_FRAC_SELECTED: counts[0] / counts[1].clamp(min=1)}

    def token_loss(self, ctx: LossContext):
        logprobs, old_logprobs, plan, selected = (
            ctx.logprobs,
            ctx.old_logprobs,
            ctx.plan,
            ctx.selected,
        )
        penalty = torch.where(selected, self.coef * (logprobs - old_logprobs).abs(), 0.0)
        return penalty, {dg.KL_COV_PENALTY: _kept_sum(penalty, plan)}


@register
@dataclass(frozen=True, kw_only=True)
class KlRef(Regulariser):
    """``kl_ref``: ``coef * KL estimate`` to a reference policy (``kl_estimate``: k1, k2, k3,
    k3_clamped).

    Reference reset (ProRL, Liu et al. 2025, arXiv 2505.24864): with ``reset_every = N > 0``
    the reference becomes a copy of the current policy after the optimiser step of every N-th
    step (steps counted from 1: after steps N, 2N, ...), and with ``reset_optimizer`` the
    optimiser's state (Adam's moments and step count) starts afresh there too; the learning-rate
    schedule goes on. The part only declares the rule (``resets_after``); the trainer that holds
    the reference acts on it (``Method.reference_reset``; ours skips the reset of a step whose
    update it skipped for a non-finite loss). ``0`` keeps the initial policy. Only our trainer
    acts on it so far; the TRL and verl adapters keep their own reference.
    """

    name: ClassVar[str] = "kl_ref"
    needs_ref_logprobs: ClassVar[bool] = True
    coef: float = 0.001
    estimator: str = "k3"
    reset_every: int = 0
    reset_optimizer: bool = False

    def __post_init__(self) -> None:
        check_number(self.name, "coef", self.coef, low=0.0)
        check_choice(self.name, "estimator", self.estimator, KL_ESTIMATORS)
        every = self.reset_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(
                f"{self.name}: reset_every must be an int >= 0 (0 = never reset), got {every!r}"
            )
        if not isinstance(self.reset_optimizer, bool):
            raise ValueError(
                f"{self.name}: reset_optimizer must be True or False, got {self.reset_optimizer!r}"
            )
        if self.reset_optimizer and every == 0:
            raise ValueError(
                f"{self.name}: reset_optimizer=True needs reset_every > 0 (the optimiser state "
                "is re-initialised at each reference reset)"
            )

    def resets_after(self, step: int) -> bool:
        """True when the reference is reset after optimiser step ``step`` (1-based): every
        ``reset_every`` steps. Example: reset_every=3 resets after steps 3, 6, 9, ..."""
        return self.reset_every > 0 and step > 0 and step % self.reset_every == 0

    def token_loss(self, ctx: LossContext):
        logprobs, plan, ref_logprobs = ctx.logprobs, ctx.plan, ctx.ref_logprobs
        if ref_logprobs is None:
            raise ValueError("kl_ref needs ref_logprobs [B, T] in token_loss(...)")
        kl = kl_estimate(logprobs, ref_logprobs, estimator=self.estimator)
        return self.coef * kl, {dg.KL_REF: _kept_sum(kl, plan)}
