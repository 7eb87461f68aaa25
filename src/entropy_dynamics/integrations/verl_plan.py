"""The driver's step: a method's batch-global plan on verl's whole batch, and its metrics.

verl calls a policy loss per micro-batch with no other rows, while Clip_B / Clip_V / Clip-Cov /
top-entropy / KL-Cov decide from statistics of the whole batch. So the plan is made on the
driver, after the advantages and before verl splits the batch, and travels with the batch as
per-token fields that `verl_loss.method_loss` reads:
- `response_mask <- response_mask & keep` (verl's loss mask: its token-mean denominator is the
  all-reduced sum of it, so a dropped token also leaves the denominator, as in the paper); the
  original is kept in `entropy_valid_mask`;
- `entropy_keep`, `entropy_weight` (the reweights' product), `entropy_selected_<part>`.
In monitor mode (`verl_monitor`) `observe_batch` computes the same metrics and the plan's drop
fractions without writing anything: verl's own loss trains on every token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropy_dynamics import diagnostics as dg
from entropy_dynamics import methods
from entropy_dynamics.lens import predicted_entropy_change
from entropy_dynamics.methods import TokenBatch
from entropy_dynamics.token_stats import discriminator_from_logprobs

from .verl_engine import BASELINE_KEY
from .verl_loss import CONSTANT_PREFIX, KEEP_KEY, SELECTED_PREFIX, WEIGHT_KEY, constant_key

__all__ = [
    "METRIC_PREFIX",
    "VALID_MASK_KEY",
    "apply_entropy_masks",
    "observe_batch",
    "plan_fields",
]

VALID_MASK_KEY = "entropy_valid_mask"  # the response mask before the method's filters
ENTROPY_KEYS = ("entropy", "entropys")  # verl v1 / legacy trainer names for H
METRIC_PREFIX = "entropy_dynamics/"  # verl tracker names: entropy_dynamics/<our metric name>


def plan_fields(batch) -> list[str]:
    """The per-token fields `apply_entropy_masks` wrote into ``batch``."""
    extra = [
        key
        for key in batch.keys()  # noqa: SIM118
        if key.startswith((SELECTED_PREFIX, CONSTANT_PREFIX))
    ]
    return [VALID_MASK_KEY, KEEP_KEY, WEIGHT_KEY, *extra]


def _field(batch, names: tuple[str, ...], what: str, required: bool = True) -> Tensor | None:
    for name in names:
        if name in batch.keys():  # noqa: SIM118  (TensorDict refuses `in` on itself)
            return batch[name]
    if required:
        raise ValueError(
            f"apply_entropy_masks: the batch has no {what} (looked for {list(names)}); "
            f"it has {sorted(batch.keys())}"
        )
    return None


def _token_batch(batch, *, needs_baseline: bool, needs_ref: bool) -> TokenBatch:
    """The whole batch's ``[B, T]`` fields as a ``TokenBatch`` (on-policy: old = current)."""
    logprobs = batch["old_log_probs"].float()
    entropy = _field(batch, ENTROPY_KEYS, "entropy").float()
    baseline = _field(batch, (BASELINE_KEY,), "N", required=needs_baseline)
    ref = _field(batch, ("ref_log_prob",), "reference log-probs", needs_ref)
    return TokenBatch(
        mask=batch["response_mask"].bool(),
        advantages=batch["advantages"].float(),
        logprobs=logprobs,
        old_logprobs=logprobs,  # the plan is made on-policy: verl's old log-probs are current
        entropy=entropy,
        discriminator=discriminator_from_logprobs(logprobs, entropy),
        baseline=None if baseline is None else baseline.float(),
        ref_logprobs=None if ref is None else ref.float(),
    )


def _named(metrics: dict[str, Tensor]) -> dict[str, float]:
    return {METRIC_PREFIX + name: float(value) for name, value in metrics.items()}


@torch.no_grad()
def apply_entropy_masks(
    data, method: str | methods.Method, *, lr: float | None = None, group=None
) -> dict[str, float]:
    """Plan ``method`` on the WHOLE batch, write the plan fields, return the step's metrics.

    ``data``: a verl ``DataProto`` (its ``.batch``) or any mapping of ``[B, T]`` tensors with
    ``response_mask``, ``advantages``, ``old_log_probs``, the entropy (``entropy`` or
    ``entropys``), optionally ``entropy_baseline`` (N; required by Clip_V, produced by
    ``verl_engine.EntropyFSDPEngine``) and ``ref_log_prob``. Run it after the advantages and before
    verl splits the batch into mini- and micro-batches. ``lr``: the actor's learning rate, for the
    first-order prediction ``entropy/pred_delta`` (needs N).
    Returns floats named ``entropy_dynamics/<name>``: the plan's metrics (drop fractions, ...),
    H, S_*, N and S_* - N batch means and stds, and the predicted entropy change.
    """
    method = methods.build(method) if isinstance(method, str) else method
    batch = getattr(data, "batch", data)
    tokens = _token_batch(
        batch, needs_baseline=method.needs_baseline, needs_ref=method.needs_ref_logprobs
    )
    plan = method.plan(tokens, group=group)
    dtype = batch["response_mask"].dtype
    batch[VALID_MASK_KEY] = batch["response_mask"].clone()
    batch[KEEP_KEY] = plan.keep.to(dtype)
    batch[WEIGHT_KEY] = plan.weight.float()
    for name, selected in plan.selected.items():  # regularisers that choose their tokens
        batch[SELECTED_PREFIX + name] = selected.to(dtype)
    for name in method.loss_constants:  # batch constants the loss reads, at every token
        batch[constant_key(name)] = torch.full_like(plan.weight, float(plan.metrics[name]))
    batch["response_mask"] = batch["response_mask"] * plan.keep.to(dtype)
    metrics = dict(plan.metrics)
    metrics.update(
        dg.entropy_metrics(
            tokens.entropy, tokens.discriminator, tokens.mask, baseline=tokens.baseline, group=group
        )
    )
    if lr is not None and tokens.baseline is not None:
        # each token's step is lr * r * A scaled by the plan (r = 1 at plan time: on-policy)
        step_scale = plan.keep.to(plan.weight.dtype) * plan.weight
        metrics.update(predicted_entropy_change(tokens, lr=lr, ratio=step_scale, group=group))
    return _named(metrics)


@torch.no_grad()
def observe_batch(data, method: methods.Method | None = None, *, group=None) -> dict[str, float]:
    """Monitor mode: the whole batch's entropy-dynamics metrics; nothing is written to it.

    ``data`` as for `apply_entropy_masks`, N required. Returns ``entropy_dynamics/<name>``:
    H, S_*, N, S_* - N batch means and stds, and, when ``method`` is given, its plan's metrics
    (``clip_b/frac_dropped``, ...): what it WOULD drop from this batch; verl's loss sees every
    token. No ``entropy/pred_delta`` here: the probe logs it beside the measured change.
    """
    batch = getattr(data, "batch", data)
    tokens = _token_batch(batch, needs_baseline=True, needs_ref=False)
    metrics = {} if method is None else dict(method.plan(tokens, group=group).metrics)
    metrics.update(
        dg.entropy_metrics(
            tokens.entropy, tokens.discriminator, tokens.mask, baseline=tokens.baseline, group=group
        )
    )
    return _named(metrics)
