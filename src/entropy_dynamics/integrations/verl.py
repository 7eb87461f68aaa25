"""verl plugin: name this module in verl's `external_lib` and `VERL_USE_EXTERNAL_MODULES`.

Importing it registers, in verl's own registries (no verl file is edited):
- policy losses `ed_ppo`, `ed_pg`, `ed_ce_gppo`: our per-token surrogates with verl's
  `clip_ratio_low/high` and dual clip `clip_ratio_c`, reduced by verl's `agg_loss`
  (surrogate-only methods through verl's own `ppo_loss`; `ed_ppo` equals verl's `vanilla`);
- the engine `verl_engine.EntropyFSDPEngine` (vendor `entropy_dynamics`): verl's FSDP actor
  engine that also returns N, the Clip_V baseline, from the same logits as the entropy;
- the v1 trainer `entropy_sync` (`verl_trainers`; when verl's v1 trainer imports: it needs
  TransferQueue), and `verl_trainers.EntropyRayPPOTrainer` for verl's legacy trainer: both plan
  the method on the whole batch (`verl_plan.apply_entropy_masks`), log its metrics, and install
  `verl_loss.method_loss` (surrogate x weights + regularisers, on the plan's kept tokens) as
  the actor's loss through verl's `set_loss_fn`.
`entropy_dynamics.mode: monitor` (`verl_monitor`) keeps verl's own loss and only logs the
metrics (and, every `probe_steps`, the measured entropy change of an update beside the
predictions). `verl_main` is the launcher (verl's `main_ppo` config and overrides): verl's own
main for the v1 trainer, verl's legacy TaskRunner building `EntropyRayPPOTrainer` for
`trainer.use_v1=false`.
See docs/verl.md. Only the verl_* modules and this one import verl.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from verl.trainer.ppo import core_algos
from verl.utils import torch_functional as verl_F

from entropy_dynamics import methods

from .verl_engine import BASELINE_KEY, VENDOR, EntropyFSDPEngine
from .verl_loss import KEEP_KEY, WEIGHT_KEY, method_loss
from .verl_monitor import Settings
from .verl_plan import VALID_MASK_KEY, apply_entropy_masks, observe_batch
from .verl_trainers import EntropyRayPPOTrainer, build_method, register_v1_trainer

__all__ = [
    "BASELINE_KEY",
    "KEEP_KEY",
    "LOSS_NAMES",
    "V1_TRAINER_REGISTERED",
    "VALID_MASK_KEY",
    "VENDOR",
    "WEIGHT_KEY",
    "EntropyFSDPEngine",
    "EntropyRayPPOTrainer",
    "Settings",
    "apply_entropy_masks",
    "build_method",
    "method_loss",
    "observe_batch",
]


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


V1_TRAINER_REGISTERED = register_v1_trainer()
