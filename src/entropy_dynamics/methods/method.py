"""A Method: one surrogate + filters + regularisers + reweights, planned once per batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import diagnostics as dg
from .._dtypes import compute_dtype
from ..distributed import global_sum
from .base import (
    VALID,
    Advantage,
    Filter,
    LossContext,
    Plan,
    PlanContext,
    Regulariser,
    Reweight,
    Surrogate,
    TokenBatch,
)

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
        self._state: dict[str, dict[str, Tensor]] = {}
        for part, kind in [
            (surrogate, Surrogate),
            *((f, Filter) for f in self.filters),
            *((r, Regulariser) for r in self.regularisers),
            *((w, Reweight) for w in self.reweights),
            *(((advantage, Advantage),) if advantage is not None else ()),
        ]:
            if not isinstance(part, kind):
                raise ValueError(f"Method: expected a {kind.__name__}, got {part!r}")
        if len({r.clamp_p for r in self.regularisers if hasattr(r, "clamp_p")}) > 1:
            raise ValueError("Method: parts with different clamp_p; give them one clamp_p")
        for part in self.parts:
            initial = part.init_state()
            if initial:
                self._state[part.name] = initial

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
    def loss_constants(self) -> tuple[str, ...]:
        """Names of the plan metrics ``token_loss`` reads (an adapter that rebuilds the plan per
        micro-batch must carry them, e.g. the entropy-bonus coefficient)."""
        return tuple(name for part in self.regularisers for name in part.constants)

    @property
    def clamp_p(self) -> float | None:
        """The ``clamp_p`` at which ``token_loss`` needs the clamped entropy (AEnt), else None."""
        values = {part.clamp_p for part in self.regularisers if hasattr(part, "clamp_p")}
        return values.pop() if values else None

    @property
    def needs_ref_logprobs(self) -> bool:
        return any(getattr(part, "needs_ref_logprobs", False) for part in self.regularisers)

    @property
    def reference_reset_every(self) -> int:
        """Steps between resets of the KL reference to the current policy (``kl_ref``'s
        ``reset_every``); 0 = never. A trainer that keeps a reference must act on
        ``reference_reset`` after each optimiser step, or refuse a method where this is > 0."""
        return max((getattr(part, "reset_every", 0) for part in self.regularisers), default=0)

    def reference_reset(self, step: int) -> tuple[bool, bool]:
        """``(reset the reference, re-initialise the optimiser state)`` after optimiser step
        ``step`` (1-based), as the ``kl_ref`` part declares (``KlRef.resets_after``)."""
        for part in self.regularisers:
            if hasattr(part, "resets_after") and part.resets_after(step):
                return True, bool(part.reset_optimizer)
        return False, False

    @property
    def spec(self) -> str:
        """Canonical spec string; ``methods.build(method.spec).spec == method.spec``."""
        return " + ".join(part.spec for part in self.parts)

    def __repr__(self) -> str:
        return f"Method({self.spec!r})"

    def plan(self, batch: TokenBatch, *, group=None, advance_state: bool = True) -> Plan:
        """Decide keep mask, weights and regulariser tokens for one training batch.

        Every filter sees the same valid tokens (``batch.mask``); ``keep = mask & the keeps of
        the filters with denominator "kept"``; a "valid" filter's drops get surrogate weight 0.
        ``clipped`` (for Clip-Cov) is the surrogate's clip at ``r = exp(logp - old_logp)``.
        ``advance_state=False`` plans a batch that is not trained on (an evaluation batch): the
        stateful filters (AEPO's switch, Clip-Cov's draw) decide from their state and keep it.
        """
        if not isinstance(batch, TokenBatch):
            raise ValueError(f"plan: expected a TokenBatch, got {type(batch).__name__}")
        if self.needs_baseline and batch.baseline is None:
            raise ValueError(f"{self.spec}: needs TokenBatch.baseline (N) for clip_v")
        ratio = torch.exp(batch.logprobs.detach() - batch.old_logprobs.detach())
        metrics: dict[str, Tensor] = {}
        selected = {}
        own, surrogate_metrics = self.surrogate.select(batch, group=group)
        if own is not None:  # a per-token surrogate (Archer): its tokens, for loss and clipped
            selected[self.surrogate.name] = own & batch.mask
        metrics.update(surrogate_metrics)
        clipped = None
        if any(part.needs_clipped for part in self.filters):
            clipped = batch.mask & self.surrogate.clipped(
                ratio, batch.advantages, **self._surrogate_selection(selected)
            )
        keep = batch.mask.clone()
        zeroed = torch.zeros_like(batch.mask)  # dropped, yet counted: surrogate weight 0
        states = self._state if advance_state else dict(self._state)
        for part in self.filters:
            ctx = PlanContext(batch, clipped=clipped if part.needs_clipped else None,
                              group=group, state=states.get(part.name))  # fmt: skip
            if part.name in states:  # stateful: receives its state, returns the new one
                part_keep, part_metrics, states[part.name] = part.keep(ctx)
            else:
                part_keep, part_metrics = part.keep(ctx)
            if getattr(part, "denominator", None) == VALID:
                zeroed |= batch.mask & ~part_keep
            else:
                keep &= part_keep
            metrics.update(part_metrics)
        for part in self.regularisers:
            ctx = PlanContext(batch, group=group, state=self._state.get(part.name))
            part_selected, part_metrics = part.select(ctx)
            if part_selected is not None:
                selected[part.name] = part_selected & batch.mask
            metrics.update(part_metrics)
        dtype = compute_dtype(batch.advantages.dtype)
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
        clamped_entropy: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-token loss ``[B, T]`` (0 where ``plan.keep`` is False) and metrics.

        ``clamped_entropy`` (``[B, T]``, with gradient, ``entropy_dynamics.clamped_entropy`` at
        ``self.clamp_p``) is needed only when ``self.clamp_p`` is not None (AEnt).

        ``loss_t = weight_t * surrogate_t + sum of regulariser terms``; all inputs ``[B, T]``
        (the micro-batch's rows; ``plan`` = ``full_plan.rows(index)``). Metrics are raw sums
        over this micro-batch's kept tokens: add them over micro-batches (and ranks, and PPO
        epochs), then ``finalize_metrics(sums, plan, passes=epochs)`` gives the logged values.
        """
        if logprobs.shape != plan.keep.shape:
            raise ValueError(
                f"token_loss: logprobs {tuple(logprobs.shape)} and plan.keep "
                f"{tuple(plan.keep.shape)} differ; pass plan.rows(index) for a "
                "micro-batch"
            )
        loss, diag = self.surrogate.loss(
            logprobs, old_logprobs, advantages, **self._surrogate_selection(plan.selected)
        )
        if self.reweights or self._zeroes_dropped:
            loss = loss * plan.weight.to(loss.dtype)
        metrics = self._surrogate_metrics(diag, plan)
        for part in self.regularisers:  # each receives what it declared it needs
            ctx = LossContext(
                logprobs=logprobs,
                old_logprobs=old_logprobs,
                advantages=advantages,
                plan=plan,
                selected=plan.selected.get(part.name),
                entropy=entropy if part.needs_entropy else None,
                ref_logprobs=ref_logprobs if part.needs_ref_logprobs else None,
                clamped_entropy=(
                    clamped_entropy if getattr(part, "clamp_p", None) is not None else None
                ),
            )
            term, part_metrics = part.token_loss(ctx)
            loss = loss + term
            metrics.update(part_metrics)
        return torch.where(plan.keep, loss, 0.0), metrics

    def clipped(self, ratio: Tensor, advantages: Tensor, plan: Plan) -> Tensor:
        """Bool ``[B, T]``: the plan's kept tokens whose surrogate clip is active at ``ratio``
        (with the surrogate's own per-token split, e.g. Archer's two ranges)."""
        selection = self._surrogate_selection(plan.selected)
        return plan.keep & self.surrogate.clipped(ratio, advantages, **selection)

    def _surrogate_selection(self, selected: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{"selected": mask}`` for a surrogate that chose tokens in the plan, else ``{}``."""
        name = self.surrogate.name
        return {"selected": selected[name]} if name in selected else {}

    @staticmethod
    def _surrogate_metrics(diag: dict[str, Tensor], plan: Plan) -> dict[str, Tensor]:
        names = {
            "clipped_low": dg.LOSS_CLIP_FRAC_LOW,
            "clipped_high": dg.LOSS_CLIP_FRAC_HIGH,
            "dual_clipped": dg.LOSS_DUAL_CLIP_FRAC,
            "ratio": dg.LOSS_RATIO_MEAN,
        }
        return {
            name: torch.where(plan.keep, diag[key].detach().to(torch.float32), 0.0).sum()
            for key, name in names.items()
            if key in diag
        }

    def finalize_metrics(
        self, sums: dict[str, Tensor | float], plan: Plan, *, passes: int = 1
    ) -> dict[str, Tensor]:
        """The logged values of one training batch: its plan's metrics and the token means.

        ``sums``: ``token_loss`` metrics added over every micro-batch, rank and pass of the
        batch; ``passes``: how many times each token was seen (PPO epochs). Each sum becomes
        ``sum / (plan.num_tokens * passes)``, the mean over kept tokens; ``plan.metrics``
        (batch constants such as the entropy-bonus coefficient, the filters' fractions) are
        taken as they are. The one rule every consumer (our loop, TRL, verl) calls, so a
        logged value never depends on micro-batching.
        """
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"finalize_metrics: passes must be an int >= 1, got {passes!r}")
        denominator = plan.num_tokens.clamp(min=1).to(torch.float64) * passes
        values = dict(plan.metrics)
        for name, total in sums.items():
            total = torch.as_tensor(total, dtype=torch.float64)
            values[name] = (total / denominator.to(total.device)).to(torch.float32)
        return values

    @property
    def state(self) -> dict[str, dict[str, Tensor]]:
        """Current state of the stateful parts, by part name (``{}`` when stateless)."""
        return {name: dict(part_state) for name, part_state in self._state.items()}

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        """The state for a checkpoint: ``{part name: {field: tensor}}``, tensors only (loads
        with ``torch.load(weights_only=True)``). Stateless methods give ``{}``."""
        return {
            name: {key: value.detach().clone() for key, value in part_state.items()}
            for name, part_state in self._state.items()
        }

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        """Restore ``state_dict()``; parts and fields must match this method's stateful parts."""
        if not isinstance(state, dict) or set(state) != set(self._state):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"load_state_dict: state has parts {got}, this method ({self.spec}) has "
                f"stateful parts {sorted(self._state)}"
            )
        restored = {}
        for name, own in self._state.items():
            given = state[name]
            if not isinstance(given, dict) or set(given) != set(own):
                raise ValueError(
                    f"load_state_dict: {name} state must have fields {sorted(own)}, got "
                    f"{sorted(given) if isinstance(given, dict) else type(given).__name__}"
                )
            for key, value in given.items():
                if (
                    not isinstance(value, Tensor)
                    or value.dtype != own[key].dtype
                    or (value.shape != own[key].shape)
                ):
                    raise ValueError(
                        f"load_state_dict: {name}.{key} must be a {own[key].dtype} tensor of "
                        f"shape {tuple(own[key].shape)}"
                    )
            restored[name] = {key: value.detach().clone() for key, value in given.items()}
        self._state = restored

    @property
    def updated_after_step(self) -> tuple[str, ...]:
        """Names of the stateful parts whose state moves in ``step_end`` (from the step's logged
        metrics), as opposed to Clip-Cov's, which moves in ``plan``; a trainer that uses this
        method must call ``step_end`` after each optimiser step."""
        return tuple(
            part.name
            for part in self.parts  # a filter without next_state advances its state in keep
            if part.name in self._state
            and (
                part.kind == "regulariser"
                or (part.kind == "filter" and hasattr(part, "next_state"))
            )
        )

    def step_end(self, metrics: dict) -> None:
        """After the optimiser step: each stateful part gets its state and the step's logged
        ``metrics`` (``finalize_metrics``) and returns its new state."""
        parts = {part.name: part for part in self.parts}
        for name in self.updated_after_step:
            self._state[name] = parts[name].next_state(self._state[name], metrics)
