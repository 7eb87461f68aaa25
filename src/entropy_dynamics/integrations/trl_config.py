"""`EntropyGRPOConfig`: TRL's `GRPOConfig` plus the entropy-dynamics method, checked when it is
made: a bad spec, and every TRL option the method's loss cannot honour, fail here with the fix
in the message (the trainer itself is in `trl.py`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from trl import GRPOConfig

from entropy_dynamics import methods

__all__ = ["LOSS_TYPE_AGGREGATION", "EntropyGRPOConfig", "uses_trl_surrogate"]

# TRL loss_type -> our aggregation mode, for the method's own surrogate (docs/architecture.md).
LOSS_TYPE_AGGREGATION = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dapo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
}


@dataclass
class EntropyGRPOConfig(GRPOConfig):
    """TRL's `GRPOConfig` plus the entropy-dynamics method.

    entropy_method: a method spec from `entropy_dynamics.methods` (a preset such as `"grpo"`,
        `"clip_b"`, `"clip_v"`, or parts joined by `+`, e.g. `"ppo(eps_high=0.28) + clip_v(mu=8.5)"`).
        A `ppo` surrogate at its default clip range defers to TRL's own `loss_type` and
        `epsilon`; its dual clip `c`, if any, becomes TRL's `delta = c` (the same loss).
    entropy_chunk_rows: rows per forward pass of the statistics pass (None: the per-device
        train batch size); bounds the memory of that extra no-grad pass.
    entropy_warn_no_drop_steps: warn (once) when a filter of the method has dropped no token for
        this many generation batches in a row, with the batch's token count and the `mu` that
        would drop the filter's configured share (0: never). Steps whose rewards or advantages
        are all 0 are warned about once too (`entropy_dynamics.train.watch.RunWatch`).
    entropy_probe_steps: every this many optimiser steps, the entropy at the last micro-batch's
        completion tokens is re-measured after the update and logged beside Theorem 3.3's
        prediction (`entropy_dynamics.train.probe.entropy_probe`); 0 turns the probe off.
    """

    entropy_method: str = field(
        default="grpo",
        metadata={"help": "entropy-dynamics method spec, e.g. 'clip_b' or 'ppo + clip_v(mu=8.5)'."},
    )
    entropy_chunk_rows: int | None = field(
        default=None,
        metadata={"help": "rows per no-grad forward pass of the token-statistics pass."},
    )
    entropy_warn_no_drop_steps: int = field(
        default=20,
        metadata={
            "help": "warn once when a filter dropped nothing for this many generation "
            "batches in a row; 0 = never."
        },
    )
    entropy_probe_steps: int = field(
        default=0,
        metadata={
            "help": "every this many optimiser steps, re-measure the entropy of the last "
            "micro-batch after the update beside the first-order predictions "
            "(entropy/measured_delta, entropy/pred_delta, probe/*); 0 = off. "
            "Holds that micro-batch's [b, T, V] logits twice."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        method = methods.build(self.entropy_method)  # fail at configuration time on a bad spec
        if self.entropy_probe_steps < 0:
            raise ValueError(
                f"entropy_probe_steps must be >= 0 (0 = off), got {self.entropy_probe_steps}"
            )
        if (
            isinstance(self.entropy_warn_no_drop_steps, bool)
            or not isinstance(self.entropy_warn_no_drop_steps, int)
            or self.entropy_warn_no_drop_steps < 0
        ):
            raise ValueError(
                "entropy_warn_no_drop_steps must be an int >= 0 (0 = never), got "
                f"{self.entropy_warn_no_drop_steps!r}"
            )
        if self.entropy_chunk_rows is not None and self.entropy_chunk_rows < 1:
            raise ValueError(
                f"entropy_chunk_rows must be a positive int or None, got {self.entropy_chunk_rows}"
            )
        if self.use_vllm and self.vllm_importance_sampling_correction:
            raise ValueError(
                "use_vllm with vllm_importance_sampling_correction=True is not supported: the "
                "entropy statistics are measured under the training policy, not vLLM's; set "
                "vllm_importance_sampling_correction=False"
            )
        if method.advantage is not None:
            raise ValueError(
                f"entropy_method={self.entropy_method!r} prescribes its own advantage estimator "
                f"({method.advantage.spec}), which TRL's GRPOTrainer would ignore (it trains on "
                "its own group-normalised advantages, see scale_rewards); choose a method "
                "without an estimator part"
            )
        if method.reference_reset_every:
            raise ValueError(
                f"entropy_method={self.entropy_method!r} resets the KL reference every "
                f"{method.reference_reset_every} steps, which only our trainer does; with TRL "
                "use kl_ref without reset_every and GRPOConfig(sync_ref_model=True, "
                "ref_model_sync_steps=N, ref_model_mixup_alpha=1.0)"
            )
        if not uses_trl_surrogate(method):
            _check_method_loss_options(self)
        else:
            self._take_dual_clip(method.surrogate.dual_clip)

    def _take_dual_clip(self, dual_clip: float | None) -> None:
        """PPO's dual clip c is TRL's `delta` (the ratio capped at c): the same loss for A < 0,
        and none for A > 0 while c > 1 + epsilon_high (the upper clip acts first there)."""
        if dual_clip is None:
            return
        if self.delta is not None and self.delta != dual_clip:
            raise ValueError(
                f"entropy_method={self.entropy_method!r} has dual_clip={dual_clip}, which TRL "
                f"applies as delta, but delta={self.delta} was set; unset delta or make them equal"
            )
        eps_high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        if dual_clip <= 1 + eps_high:
            raise ValueError(
                f"entropy_method={self.entropy_method!r}: dual_clip={dual_clip} must exceed "
                f"1 + epsilon_high = {1 + eps_high} for TRL's delta to be PPO's dual clip"
            )
        self.delta = dual_clip


def _check_method_loss_options(args: EntropyGRPOConfig) -> None:
    """Refuse the TRL options that the method's own loss (which replaces TRL's) cannot honour."""
    reasons = []
    if args.loss_type not in LOSS_TYPE_AGGREGATION:
        reasons.append(
            f"loss_type={args.loss_type!r} (valid here: {sorted(LOSS_TYPE_AGGREGATION)})"
        )
    if args.beta != 0.0:
        reasons.append(f"beta={args.beta} (use the method's kl_ref part instead)")
    if args.top_entropy_quantile < 1.0:
        reasons.append("top_entropy_quantile < 1 (use the method's top_entropy part)")
    if args.off_policy_mask_threshold is not None:
        reasons.append("off_policy_mask_threshold")
    if args.importance_sampling_level != "token":
        reasons.append(f"importance_sampling_level={args.importance_sampling_level!r}")
    if args.entropy_coef != 0.0 or args.use_adaptive_entropy:
        reasons.append("entropy_coef / use_adaptive_entropy (use the method's entropy_bonus part)")
    if args.delta is not None:
        reasons.append(f"delta={args.delta}")
    if reasons:
        raise ValueError(
            f"entropy_method={args.entropy_method!r} has its own surrogate, regularisers or "
            f"weights, which replace TRL's loss; these TRL options cannot be honoured with it: "
            f"{'; '.join(reasons)}. Unset them, or use a plain 'ppo' surrogate so that TRL's "
            "loss is kept"
        )


def uses_trl_surrogate(method) -> bool:
    """True when the method is TRL's own loss plus filters: the `ppo` term at its default clip
    range, with or without a dual clip (which TRL applies as `delta`)."""
    surrogate = method.surrogate
    if surrogate.name != "ppo" or method.regularisers or method.reweights:
        return False
    return dataclasses.replace(surrogate, dual_clip=None) == type(surrogate)()
