"""Archer (Wang et al. 2025, arXiv 2507.15778): dual-token constraints split by response entropy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import diagnostics as dg
from ..distributed import global_sum
from ._checks import check_choice, check_number, check_same_shape
from .base import LossContext, Regulariser, Surrogate, TokenBatch
from .registry import register
from .regularisers import KL_ESTIMATORS, kl_estimate
from .surrogates import LOG_RATIO_CLAMP, _check_dual_clip, _dual_clip

__all__ = ["Archer", "ArcherKl", "response_entropy_split"]


def response_entropy_split(entropy: Tensor, mask: Tensor, *, quantile: float = 0.8) -> Tensor:
    """Archer's high-entropy tokens, bool ``[B, T]``: ``H_t >`` its own response's
    ``quantile``-quantile of H (linear interpolation, ``torch.nanquantile``'s default).

    ``entropy, mask``: ``[B, T]``; each row's quantile is over its valid tokens only, so the
    split is row-local (the same whatever the micro-batching or the ranks). A row without valid
    tokens has none. Example: H = [0, 1, 2, 3, 4] with quantile 0.8 gives Q = 3.2: only the last
    token is high-entropy.
    """
    check_same_shape("archer", entropy=entropy, mask=mask)
    values = entropy.detach().to(torch.float64)
    if not bool(torch.isfinite(torch.where(mask, values, 0.0)).all()):
        raise ValueError("archer: entropy holds NaN or inf at a valid token (mask True)")
    ordered = torch.where(mask, values, torch.inf).sort(dim=-1).values
    n = mask.sum(dim=-1, keepdim=True)
    position = quantile * (n - 1).clamp(min=0).to(torch.float64)
    low, high = position.floor().long(), position.ceil().long()
    x_low, x_high = ordered.gather(-1, low), ordered.gather(-1, high)
    threshold = x_low + (position - low) * torch.where(n > 1, x_high - x_low, 0.0)
    return mask & (n > 0) & (values > threshold)


def _split_metrics(high: Tensor, mask: Tensor, group) -> dict[str, Tensor]:
    counts = global_sum(torch.stack([high.sum(), (mask & ~high).sum()]), group=group)
    total = counts.sum().clamp(min=1)
    return {
        dg.ARCHER_NUM_HIGH: counts[0].to(torch.float32),
        dg.ARCHER_NUM_LOW: counts[1].to(torch.float32),
        dg.ARCHER_FRAC_HIGH: (counts[0] / total).to(torch.float32),
    }


@register
@dataclass(frozen=True, kw_only=True)
class Archer(Surrogate):
    """``archer_ppo``: PPO whose clip range depends on the token's entropy within its response.

    ``select`` marks the high-entropy tokens (``response_entropy_split``: ``H_t`` above its
    response's ``quantile``-quantile, from ``TokenBatch.entropy``); they are clipped to
    ``[1 - high_eps_low, 1 + high_eps_high]``, the others to ``[1 - eps_low, 1 + eps_high]``:
    ``loss = max(-r A, -clip_t(r) A)``, ``r = exp(clamp(log r, +-20))``, then the dual clip
    ``min(loss, -c A)`` on ``A < 0``. The KL half of Archer is the ``archer_kl`` regulariser,
    which reads this part's split from the plan.
    ``clipped`` without the plan's split (``selected=None``, e.g. a caller that has no plan)
    uses the narrow range for every token. Defaults: the authors' run script
    (wizard-III/ArcherCodeR, ``run_archer_qwen2.5_1.5b_code.sh``): quantile 0.8, 0.2 / 0.2 for
    low-entropy tokens, 0.5 / 0.5 for high-entropy ones, ``clip_ratio_c`` 10.
    """

    name: ClassVar[str] = "archer_ppo"
    quantile: float = 0.8
    eps_low: float = 0.2
    eps_high: float = 0.2
    high_eps_low: float = 0.5
    high_eps_high: float = 0.5
    dual_clip: float | None = 10.0

    def __post_init__(self) -> None:
        check_number(self.name, "quantile", self.quantile, low=0.0, high=1.0)
        for key in ("eps_low", "high_eps_low"):
            check_number(self.name, key, getattr(self, key), low=0.0, high=1.0, high_open=True)
        for key in ("eps_high", "high_eps_high"):
            check_number(self.name, key, getattr(self, key), low=0.0)
        _check_dual_clip(self.name, self.dual_clip)

    def select(self, batch: TokenBatch, *, group=None):
        high = response_entropy_split(batch.entropy, batch.mask, quantile=self.quantile)
        return high, _split_metrics(high, batch.mask, group)

    def _bounds(self, like: Tensor, selected: Tensor | None):
        if selected is None:
            return self.eps_low, self.eps_high
        if selected.shape != like.shape:
            raise ValueError(f"archer: selected {tuple(selected.shape)} != {tuple(like.shape)}")

        def per_token(high: float, low: float) -> Tensor:
            as_tensor = {"dtype": like.dtype, "device": like.device}
            return torch.where(
                selected, torch.tensor(high, **as_tensor), torch.tensor(low, **as_tensor)
            )

        return per_token(self.high_eps_low, self.eps_low), per_token(
            self.high_eps_high, self.eps_high
        )

    def loss(self, logprobs, old_logprobs, advantages, *, selected: Tensor | None = None):
        check_same_shape(self.name, logprobs=logprobs, old_logprobs=old_logprobs,
                         advantages=advantages)  # fmt: skip
        if selected is None:
            raise ValueError(
                "archer_ppo: loss needs the plan's high-entropy tokens (selected=); use Method.plan "
                "and Method.token_loss"
            )
        ratio = torch.exp((logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        eps_low, eps_high = self._bounds(ratio, selected)
        bounded = torch.minimum(torch.maximum(ratio, 1.0 - eps_low), 1.0 + eps_high)
        loss = torch.maximum(-advantages * ratio, -advantages * bounded)
        loss, dual = _dual_clip(loss, advantages, self.dual_clip)
        r = ratio.detach()
        return loss, {
            "ratio": r,
            "clipped_low": (advantages < 0) & (r < 1.0 - eps_low),
            "clipped_high": (advantages > 0) & (r > 1.0 + eps_high),
            "dual_clipped": dual,
        }

    def clipped(self, ratio: Tensor, advantages: Tensor, *, selected: Tensor | None = None):
        eps_low, eps_high = self._bounds(ratio, selected)
        return ((advantages < 0) & (ratio < 1.0 - eps_low)) | (
            (advantages > 0) & (ratio > 1.0 + eps_high)
        )


@register
@dataclass(frozen=True, kw_only=True)
class ArcherKl(Regulariser):
    """``archer_kl``: Archer's dual-token KL to the reference, with the ``archer_ppo`` surrogate's
    split: ``coef * mean_low(KL) + high_coef * mean_high(KL)``, each a mean over its own tokens
    (the authors' ``agg_loss`` over each mask), ``KL`` = ``kl_estimate(estimator)``.

    Under token-mean aggregation each token's term is scaled by ``n_kept / n_low`` (or
    ``/ n_high``), so the aggregate is exactly the two means. Needs the ``archer_ppo`` surrogate
    (its split is ``plan.selected['archer_ppo']``) and ``ref_logprobs``. Defaults: the run script's
    ``kl_loss_coef`` 0.001, ``high_entropy_kl_loss_scale_coef`` 0, ``low_var_kl`` (k3_clamped).
    """

    name: ClassVar[str] = "archer_kl"
    needs_ref_logprobs: ClassVar[bool] = True
    constants: ClassVar[tuple[str, ...]] = (dg.ARCHER_NUM_HIGH, dg.ARCHER_NUM_LOW)
    coef: float = 0.001
    high_coef: float = 0.0
    estimator: str = "k3_clamped"

    def __post_init__(self) -> None:
        check_number(self.name, "coef", self.coef, low=0.0)
        check_number(self.name, "high_coef", self.high_coef, low=0.0)
        check_choice(self.name, "estimator", self.estimator, KL_ESTIMATORS)

    def token_loss(self, ctx: LossContext):
        logprobs, plan, ref_logprobs = ctx.logprobs, ctx.plan, ctx.ref_logprobs
        if ref_logprobs is None:
            raise ValueError("archer_kl needs ref_logprobs (a reference policy's log-probs)")
        high = plan.selected.get(Archer.name)
        if high is None or dg.ARCHER_NUM_HIGH not in plan.metrics:
            raise ValueError("archer_kl needs the 'archer_ppo' surrogate's split in the plan")
        kl = kl_estimate(logprobs, ref_logprobs, estimator=self.estimator)
        kept = plan.num_tokens.to(kl.device, torch.float64)
        n_high = plan.metrics[dg.ARCHER_NUM_HIGH].to(kl.device, torch.float64).clamp(min=1)
        n_low = plan.metrics[dg.ARCHER_NUM_LOW].to(kl.device, torch.float64).clamp(min=1)
        scale = torch.where(high, self.high_coef * kept / n_high, self.coef * kept / n_low)
        term = kl * scale.to(kl.dtype)
        return term, {dg.ARCHER_KL: torch.where(plan.keep, term.detach(), 0.0).sum()}
