"""A Method: one surrogate + filters + regularisers + reweights, planned once per batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import diagnostics as dg
from ..distributed import global_sum
from .base import VALID, Advantage, Filter, Plan, Regulariser, Reweight, Surrogate, TokenBatch

__all__ = ["Method"]


class Method:
    """An entropy-control method composed of registered parts (build one with ``methods.build``).

    Use: ``plan = method.plan(batch)`` once per training batch (batch-global: every micro-batch,
    every rank), then per micro-batch ``loss, metrics = method.token_loss(..., plan=plan.rows(i))``
    and ``aggregate(loss, plan_rows.keep, mode, num_tokens=plan.num_tokens, ...)``; after the
    optimiser step ``method.step_end(summed_metrics)``.
    """

    def __init__(
        self,
        surrogate: Surrogate,
        filters: Sequence[Filter] = (),
        regularisers: Sequence[Regulariser] = (),
        reweights: Sequence[Reweight] = (),
        *,
        advantage: Advantage | None = None,
    ):
        self.surrogate = surrogate
        self.filters = tuple(filters)
        self.regularisers = tuple(regularisers)
        self.reweights = tuple(reweights)
        self.advantage = advantage  # the estimator the method prescribes; None = the caller's
        for part, kind in [
            (surrogate, Surrogate),
            *((f, Filter) for f in self.filters),
            *((r, Regulariser) for r in self.regularisers),
            *((w, Reweight) for w in self.reweights),
            *(((advantage, Advantage),) if advantage is not None else ()),
        ]:
            if not isinstance(part, kind):
                raise ValueError(f"Method: expected a {kind.__name__}, got {part!r}")

    @property
    def parts(self) -> tuple:
        extra = () if self.advantage is None else (self.advantage,)
        return (self.surrogate, *self.filters, *self.regularisers, *self.reweights, *extra)

    @property
    def _zeroes_dropped(self) -> bool:
        """True when a filter keeps its dropped tokens counted (``denominator="valid"``)."""
        return any(getattr(part, "denominator", None) == VALID for part in self.filters)

    @property
    def needs_baseline(self) -> bool:
        """True when a part needs N (``TokenBatch.baseline``), e.g. ``clip_v``."""
        return any(part.needs_baseline for part in self.parts)

    @property
    def needs_entropy(self) -> bool:
        """True when ``token_loss`` needs the entropy with gradient (entropy bonus)."""
        return any(getattr(part, "needs_entropy", False) for part in self.regularisers)

    @property
    def needs_ref_logprobs(self) -> bool:
        return any(getattr(part, "needs_ref_logprobs", False) for part in self.regularisers)

    @property
    def spec(self) -> str:
        """Canonical spec string; ``methods.build(method.spec).spec == method.spec``."""
        return " + ".join(part.spec for part in self.parts)

    def __repr__(self) -> str:
        return f"Method({self.spec!r})"

    def plan(self, batch: TokenBatch, *, group=None) -> Plan:
        """Decide keep mask, weights and regulariser tokens for one training batch.

        Every filter sees the same valid tokens (``batch.mask``); ``keep = mask & the keeps of
        the filters with denominator "kept"``; a "valid" filter's drops get surrogate weight 0.
        ``clipped`` (for Clip-Cov) is the surrogate's clip at ``r = exp(logp - old_logp)``.
        """
        if not isinstance(batch, TokenBatch):
            raise ValueError(f"plan: expected a TokenBatch, got {type(batch).__name__}")
        if self.needs_baseline and batch.baseline is None:
            raise ValueError(f"{self.spec}: needs TokenBatch.baseline (N) for clip_v")
        ratio = torch.exp(batch.logprobs.detach() - batch.old_logprobs.detach())
        clipped = batch.mask & self.surrogate.clipped(ratio, batch.advantages)
        keep = batch.mask.clone()
        zeroed = torch.zeros_like(batch.mask)  # dropped, yet counted: surrogate weight 0
        metrics: dict[str, Tensor] = {}
        for part in self.filters:
            part_keep, part_metrics = part.keep(batch, clipped=clipped, group=group)
            if getattr(part, "denominator", None) == VALID:
                zeroed |= batch.mask & ~part_keep
            else:
                keep &= part_keep
            metrics.update(part_metrics)
        selected = {}
        for part in self.regularisers:
            part_selected, part_metrics = part.select(batch, group=group)
            if part_selected is not None:
                selected[part.name] = part_selected & batch.mask
            metrics.update(part_metrics)
        dtype = torch.float64 if batch.advantages.dtype == torch.float64 else torch.float32
        weight = torch.ones(batch.mask.shape, dtype=dtype, device=batch.mask.device)
        for part in self.reweights:
            weight = weight * part.weight(batch)
        if self._zeroes_dropped:
            weight = torch.where(zeroed, 0.0, weight)
        counts = global_sum(torch.stack([keep.sum(), keep.any(dim=-1).sum(), batch.mask.sum()]))
        num_tokens, num_seqs, num_valid = counts.unbind()
        metrics[dg.PLAN_NUM_TOKENS] = num_tokens.to(torch.float32)
        metrics[dg.PLAN_FRAC_KEPT] = torch.where(
            num_valid > 0, num_tokens / num_valid.clamp(min=1), 1.0
        ).to(torch.float32)
        return Plan(
            keep=keep,
            weight=weight,
            selected=selected,
            metrics=metrics,
            num_tokens=num_tokens,
            num_seqs=num_seqs,
        )

    def token_loss(
        self,
        *,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        plan: Plan,
        entropy: Tensor | None = None,
        ref_logprobs: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-token loss ``[B, T]`` (0 where ``plan.keep`` is False) and metrics.

        ``loss_t = weight_t * surrogate_t + sum of regulariser terms``; all inputs ``[B, T]``
        (the micro-batch's rows; ``plan`` = ``full_plan.rows(index)``). Metrics are
        micro-batch-additive: each is a sum over this micro-batch's kept tokens divided by the
        global kept count, so their sum over micro-batches (and ranks) is the batch value.
        """
        if logprobs.shape != plan.keep.shape:
            raise ValueError(
                f"token_loss: logprobs {tuple(logprobs.shape)} and plan.keep "
                f"{tuple(plan.keep.shape)} differ; pass plan.rows(index) for a "
                "micro-batch"
            )
        loss, diag = self.surrogate.loss(logprobs, old_logprobs, advantages)
        if self.reweights or self._zeroes_dropped:
            loss = loss * plan.weight.to(loss.dtype)
        metrics = self._surrogate_metrics(diag, plan)
        for part in self.regularisers:
            term, part_metrics = part.token_loss(
                logprobs=logprobs,
                old_logprobs=old_logprobs,
                entropy=entropy,
                ref_logprobs=ref_logprobs,
                selected=plan.selected.get(part.name),
                plan=plan,
            )
            loss = loss + term
            metrics.update(part_metrics)
        return torch.where(plan.keep, loss, 0.0), metrics

    @staticmethod
    def _surrogate_metrics(diag: dict[str, Tensor], plan: Plan) -> dict[str, Tensor]:
        denominator = plan.num_tokens.clamp(min=1).to(torch.float32)
        names = {
            "clipped_low": dg.LOSS_CLIP_FRAC_LOW,
            "clipped_high": dg.LOSS_CLIP_FRAC_HIGH,
            "dual_clipped": dg.LOSS_DUAL_CLIP_FRAC,
            "ratio": dg.LOSS_RATIO_MEAN,
        }
        return {
            name: torch.where(plan.keep, diag[key].to(torch.float32), 0.0).sum()
            / denominator.to(diag[key].device)
            for key, name in names.items()
            if key in diag
        }

    def state_dict(self) -> dict[str, dict]:
        """Mutable state of stateful parts, by part name (for checkpoints): the adaptive entropy
        coefficient, Clip-Cov's generator state. Stateless methods give ``{}``."""
        return {part.name: part.state_dict() for part in self.parts if hasattr(part, "state_dict")}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        """Restore ``state_dict()``; part names must match this method's stateful parts."""
        own = {part.name: part for part in self.parts if hasattr(part, "state_dict")}
        if set(state) != set(own):
            raise ValueError(
                f"load_state_dict: state has parts {sorted(state)}, this method "
                f"({self.spec}) has stateful parts {sorted(own)}"
            )
        for name, part_state in state.items():
            own[name].load_state_dict(part_state)

    def step_end(self, metrics: dict) -> None:
        """After the optimiser step: let stateful parts (adaptive entropy bonus) update."""
        for part in self.regularisers:
            part.step_end(metrics)
