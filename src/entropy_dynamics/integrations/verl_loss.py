"""verl actor loss that runs a whole entropy_dynamics method: surrogate x weight + regularisers.

verl's registered policy losses see only `(old_log_prob, log_prob, advantages, response_mask,
loss_agg_mode, config, rollout_is_weights)`, so a reweight or a regulariser cannot reach them.
verl's actor worker takes its loss function from the driver instead
(`actor_rollout_wg.set_loss_fn`, the seam verl's own distillation loss uses), called per
micro-batch with the model output (`log_probs`, `entropy` with gradient) and the micro-batch's
fields. `method_loss` is that function: it reads the plan the driver wrote into the batch
(`entropy_keep`, `entropy_weight`, `entropy_selected_<part>`, see `verl.apply_entropy_masks`),
calls `Method.token_loss` and reduces with verl's `agg_loss` and its global normalisers (the
kept-token count of the mini-batch, all ranks: dropped tokens left `response_mask` on the driver).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import agg_loss
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.padding import no_padding_2_padding

from entropy_dynamics import methods
from entropy_dynamics.methods import Plan

__all__ = [
    "CONSTANT_PREFIX",
    "KEEP_KEY",
    "SELECTED_PREFIX",
    "WEIGHT_KEY",
    "check_actor_config",
    "constant_key",
    "method_loss",
]

KEEP_KEY = "entropy_keep"  # [B, T] 0/1: the tokens the method keeps
WEIGHT_KEY = "entropy_weight"  # [B, T] float: the product of the method's reweights
SELECTED_PREFIX = "entropy_selected_"  # + regulariser name: [B, T] 0/1 tokens it touches
CONSTANT_PREFIX = "entropy_constant_"  # + plan metric name: [B, T], one batch constant per field


def check_actor_config(method: methods.Method, actor) -> None:
    """Refuse verl actor settings that `method_loss` would otherwise silently ignore."""
    if actor.get("entropy_coeff", 0) != 0:
        raise ValueError(
            f"actor.entropy_coeff={actor.entropy_coeff} is verl's entropy bonus, which the "
            "entropy_dynamics loss replaces: set actor.entropy_coeff=0 and add "
            f"entropy_bonus(coef={actor.entropy_coeff}) to entropy_dynamics.method"
        )
    if actor.get("use_kl_loss", False) and not method.needs_ref_logprobs:
        raise ValueError(
            "actor.use_kl_loss=true: the entropy_dynamics loss has no KL term unless the method "
            "has one; add kl_ref(coef=..., estimator='k3') to entropy_dynamics.method, or set "
            "actor.use_kl_loss=false"
        )
    if method.needs_ref_logprobs and not actor.get("use_kl_loss", False):
        raise ValueError(
            f"{method.spec}: kl_ref needs verl's reference log-probs, which verl computes only "
            "with actor.use_kl_loss=true (its kl_loss_coef is then unused: kl_ref's coef applies)"
        )
    if method.needs_entropy and not actor.get("calculate_entropy", False):
        raise ValueError(
            f"{method.spec}: the entropy bonus needs the entropy with gradient in the update: "
            "set actor_rollout_ref.actor.calculate_entropy=true"
        )


def method_loss(config, model_output, data: TensorDict, dp_group=None, *, method):
    """verl actor loss for one micro-batch: ``agg_loss(Method.token_loss(...), response_mask)``.

    ``config``: verl's ``ActorConfig``; ``model_output``: verl's jagged ``log_probs`` (grad) and
    ``entropy`` (grad; present when ``actor.calculate_entropy``); ``data``: the micro-batch with
    ``response_mask`` (already ``& keep``), ``old_log_probs``, ``advantages`` and the plan fields;
    ``method``: a ``methods.Method``. Returns ``(loss, metrics)`` as verl's ``ppo_loss`` does.
    """
    log_prob = no_padding_2_padding(model_output["log_probs"], data)  # (B, T), grad
    entropy = model_output.get("entropy", None)
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data)
    elif method.needs_entropy:
        raise ValueError(f"{method.spec}: set actor_rollout_ref.actor.calculate_entropy=true")
    config.global_batch_info.update(
        dp_size=data["dp_size"],
        batch_num_tokens=data["batch_num_tokens"],
        global_batch_size=data["global_batch_size"],
        loss_scale_factor=config.loss_scale_factor,
    )
    choosers = (
        method.surrogate,
        *method.regularisers,
    )  # parts that may pick tokens (plan.selected)
    selected_keys = [SELECTED_PREFIX + part.name for part in choosers]
    selected_keys += [constant_key(name) for name in method.loss_constants]
    fields = ["response_mask", "old_log_probs", "advantages", KEEP_KEY, WEIGHT_KEY]
    fields += [key for key in [*selected_keys, "ref_log_prob", "rollout_is_weights"] if key in data]
    missing = [key for key in fields[:5] if key not in data]
    if missing:
        raise ValueError(
            f"entropy_dynamics loss: the micro-batch lacks {missing}; the driver's mask step "
            "(apply_entropy_masks, run by the entropy trainers) writes them"
        )
    padded = data.select(*fields).to_padded_tensor()
    response_mask = padded["response_mask"].bool()
    plan = Plan(
        keep=padded[KEEP_KEY].bool() & response_mask,
        weight=padded[WEIGHT_KEY],
        selected={  # only the parts that chose their tokens (kl_cov, archer_ppo) have a field
            part.name: padded[SELECTED_PREFIX + part.name].bool()
            for part in choosers
            if SELECTED_PREFIX + part.name in padded.keys()  # noqa: SIM118
        },
        metrics={  # batch constants the regularisers read (the same value at every token)
            name: padded[constant_key(name)][response_mask][:1].sum()
            for name in method.loss_constants
            if constant_key(name) in padded.keys()  # noqa: SIM118
        },
        num_tokens=torch.as_tensor(data["batch_num_tokens"], device=log_prob.device),
        num_seqs=torch.as_tensor(response_mask.shape[0], device=log_prob.device),
    )
    per_token, part_metrics = method.token_loss(
        logprobs=log_prob,
        old_logprobs=padded["old_log_probs"],
        advantages=padded["advantages"],
        plan=plan,
        entropy=entropy,
        ref_logprobs=padded.get("ref_log_prob", None),
    )
    if "rollout_is_weights" in padded.keys():  # noqa: SIM118
        if method.regularisers:
            raise ValueError(
                f"{method.spec}: verl's rollout_is_weights weight only the policy-gradient term, "
                "and token_loss returns it summed with the regularisers; drop one of them"
            )
        per_token = per_token * padded["rollout_is_weights"]
    loss = agg_loss(
        loss_mat=per_token,
        loss_mask=response_mask,
        loss_agg_mode=config.loss_agg_mode,
        **config.global_batch_info,
    )
    # verl's convention: normalised by global counts, so micro-batch metrics are summed; the
    # plan's constants are logged by the driver's mask step
    metrics = {"actor/pg_loss": Metric(value=loss.detach(), aggregation=AggregationType.SUM)}
    shares = method.finalize_metrics(part_metrics, plan)  # this micro-batch's share of the mean
    for name in part_metrics:
        metrics[f"entropy_dynamics/{name}"] = Metric(
            value=shares[name].detach(), aggregation=AggregationType.SUM
        )
    return loss, metrics


def constant_key(name: str) -> str:
    """The batch field that carries plan metric ``name`` to the workers' loss."""
    return CONSTANT_PREFIX + name.replace("/", "_")
