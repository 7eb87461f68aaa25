"""verl plugin: our surrogates in verl's policy-loss registry, and the batch-global mask step.

Name this module in `actor_rollout_ref.model.external_lib` (verl imports it in every worker) or
in `VERL_USE_EXTERNAL_MODULES`; importing it registers, in verl's own registries:
- policy losses `ed_ppo`, `ed_pg`, `ed_ce_gppo`: our per-token surrogates (entropy_dynamics.methods),
  hyperparameters read from verl's actor config (`clip_ratio_low/high`, `clip_ratio_c` = dual
  clip), reduced with verl's own `agg_loss` and its global batch normalisers;
- a v1 trainer `entropy_sync` (when verl's v1 trainer imports: it needs TransferQueue) that runs
  `apply_entropy_masks` on the WHOLE batch, after the advantages and before the actor update.

Why a mask step and not a Clip_B loss: verl calls a policy loss per micro-batch with only
`(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights)`:
no entropy, no other rows. Clip_B / Clip_V need statistics over the whole batch, so they are
decided on the driver, where the batch is still whole, and enter the loss through the one
per-token mask verl has: `response_mask` (the loss mask: verl's token-mean denominator is the
all-reduced sum of it, so a dropped token also leaves the denominator, as in the paper).
Every verl policy loss (vanilla included) then honours the mask.
Only this module imports verl.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from verl.trainer.ppo import core_algos
from verl.utils import torch_functional as verl_F

from entropy_dynamics import methods
from entropy_dynamics.methods import TokenBatch
from entropy_dynamics.token_stats import discriminator_from_logprobs

__all__ = ["LOSS_NAMES", "apply_entropy_masks", "discriminator_from_logprobs"]

VALID_MASK_KEY = "entropy_valid_mask"  # the response mask before the method's filters
KEEP_KEY = "entropy_keep"  # bool [B, T]: the tokens the method keeps
ENTROPY_KEYS = ("entropy", "entropys")  # verl v1 / legacy trainer names for H
BASELINE_KEY = "entropy_baseline"  # N, when the caller computed it (Clip_V needs it)


# --------------------------------------------------------------------------- policy losses


def _surrogate(name: str, config) -> methods.Surrogate:
    """Our surrogate part, its hyperparameters renamed from verl's actor config."""
    eps = config.clip_ratio
    eps_low = config.clip_ratio_low if config.clip_ratio_low is not None else eps
    eps_high = config.clip_ratio_high if config.clip_ratio_high is not None else eps
    if name == "pg":
        return methods.get_part("pg")()
    if name == "ppo":  # verl's vanilla loss always applies the dual clip at clip_ratio_c
        return methods.get_part("ppo")(
            eps_low=eps_low, eps_high=eps_high, dual_clip=config.get("clip_ratio_c", 3.0)
        )
    return methods.get_part(name)(eps_low=eps_low, eps_high=eps_high)


def _policy_loss(name: str):
    def policy_loss(
        old_log_prob: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        loss_agg_mode: str = "token-mean",
        config=None,
        rollout_is_weights: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Any]]:
        if config is None:
            raise ValueError(f"ed_{name}: verl passes the actor config; got config=None")
        per_token, diag = _surrogate(name, config).loss(log_prob, old_log_prob, advantages)
        if rollout_is_weights is not None:
            per_token = per_token * rollout_is_weights
        loss = core_algos.agg_loss(
            loss_mat=per_token,
            loss_mask=response_mask,
            loss_agg_mode=loss_agg_mode,
            **config.global_batch_info,
        )
        metrics = {
            "actor/ppo_kl": verl_F.masked_mean(old_log_prob - log_prob, response_mask).item()
        }
        if "clipped_low" in diag:  # verl's names: either ratio clip, then the dual clip
            clipped = diag["clipped_low"] | diag["clipped_high"]
            metrics["actor/pg_clipfrac"] = verl_F.masked_mean(clipped.float(), response_mask).item()
        if "dual_clipped" in diag:
            metrics["actor/pg_clipfrac_lower"] = verl_F.masked_mean(
                diag["dual_clipped"].float(), response_mask
            ).item()
        return loss, metrics

    policy_loss.__name__ = f"ed_{name}_policy_loss"
    policy_loss.__doc__ = (
        f"verl policy loss `ed_{name}`: entropy_dynamics' `{name}` surrogate per token "
        "([B, T]), times rollout_is_weights, reduced by verl's agg_loss."
    )
    return policy_loss


LOSS_NAMES = ("ed_ppo", "ed_pg", "ed_ce_gppo")
for _name in LOSS_NAMES:
    core_algos.register_policy_loss(_name)(_policy_loss(_name.removeprefix("ed_")))


# --------------------------------------------------------------------------- the mask step


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


@torch.no_grad()
def apply_entropy_masks(data, method: str | methods.Method, *, group=None) -> dict[str, Tensor]:
    """Decide the method's keep mask on the WHOLE batch and fold it into ``response_mask``.

    ``data``: a verl ``DataProto`` (its ``.batch``) or any mapping of ``[B, T]`` tensors with
    ``response_mask``, ``advantages``, ``old_log_probs``, the entropy (``entropy`` or
    ``entropys``), optionally ``ref_log_prob`` and ``entropy_baseline`` (N, needed by Clip_V;
    verl computes no N, so Clip_V needs the caller to add it). Run it after the advantages and
    before verl splits the batch into mini- and micro-batches.
    Writes ``response_mask <- response_mask & keep``, keeps the original in
    ``entropy_valid_mask`` and the keep mask in ``entropy_keep``; returns the plan's
    batch-global metrics as floats. Surrogate weights of reweighting methods are not applied
    (verl's loss has no per-token weight input); such methods are refused.
    """
    method = methods.build(method) if isinstance(method, str) else method
    if method.reweights or method.regularisers:
        raise ValueError(
            f"{method.spec}: verl's policy-loss signature carries no per-token weights or "
            "regulariser selections; only filters (clip_b, clip_v, clip_cov, top_entropy) and "
            "surrogates can run inside verl"
        )
    batch = getattr(data, "batch", data)
    mask = batch["response_mask"].bool()
    logprobs = batch["old_log_probs"].float()
    entropy = _field(batch, ENTROPY_KEYS, "entropy").float()
    baseline = _field(batch, (BASELINE_KEY,), "N", required=method.needs_baseline)
    advantages = batch["advantages"].float()
    tokens = TokenBatch(
        mask=mask,
        advantages=advantages,
        logprobs=logprobs,
        old_logprobs=logprobs,
        entropy=entropy,
        discriminator=discriminator_from_logprobs(logprobs, entropy),
        baseline=None if baseline is None else baseline.float(),
        ref_logprobs=_field(batch, ("ref_log_prob",), "reference log-probs", required=False),
    )
    plan = method.plan(tokens, group=group)
    batch[VALID_MASK_KEY] = batch["response_mask"].clone()
    batch[KEEP_KEY] = plan.keep
    batch["response_mask"] = batch["response_mask"] * plan.keep.to(batch["response_mask"].dtype)
    return {f"entropy_dynamics/{name}": float(value) for name, value in plan.metrics.items()}


# --------------------------------------------------------------------------- the v1 trainer


def _register_v1_trainer() -> bool:
    """Register `entropy_sync` in verl's v1 trainer registry; False when v1 cannot import."""
    try:
        import transfer_queue as tq
        from tensordict import TensorDict
        from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls, register_trainer
        from verl.workers.utils.padding import response_to_nested
    except ImportError:  # verl's v1 trainer needs TransferQueue; the losses work without it
        return False

    class EntropyPPOTrainerSync(PPOTrainerSync):
        """verl's synchronous v1 trainer + `apply_entropy_masks` after the advantages.

        The method comes from the config: `entropy_dynamics.method` (a spec string).
        """

        def _compute_advantage(self, batch, metrics):
            batch = super()._compute_advantage(batch, metrics)
            spec = (self.config.get("entropy_dynamics") or {}).get("method")
            if not spec:
                raise ValueError(
                    "trainer.v1.trainer_mode=entropy_sync needs the method in the config: "
                    "+entropy_dynamics.method='clip_b(mu=2.5)' (any entropy_dynamics spec)"
                )
            fields = ["response_mask", "advantages", "old_log_probs", "entropy"]
            data = tq.kv_batch_get(
                keys=batch.keys, partition_id=batch.partition_id, select_fields=fields
            )
            response_mask = data["response_mask"]
            padded = data.to_padded_tensor()  # whole batch: (B, T) each
            metrics.update(apply_entropy_masks(padded, spec))
            masked = response_to_nested(padded["response_mask"], response_mask)
            tq.kv_batch_put(
                keys=batch.keys,
                partition_id=batch.partition_id,
                fields=TensorDict({"response_mask": masked}, batch_size=len(batch)),
            )
            return batch

    try:
        get_trainer_cls("entropy_sync")
    except ValueError:
        register_trainer("entropy_sync")(EntropyPPOTrainerSync)
    return True


V1_TRAINER_REGISTERED = _register_v1_trainer()
