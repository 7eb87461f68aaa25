"""TRL plugin: `EntropyGRPOConfig` / `EntropyGRPOTrainer`, TRL's GRPOTrainer with our methods inside,
and `EntropyDynamicsCallback`, a monitor for a stock `GRPOTrainer` that changes nothing it trains.

    from entropy_dynamics.integrations.trl import EntropyGRPOConfig, EntropyGRPOTrainer
    args = EntropyGRPOConfig(output_dir="out", entropy_method="clip_b(mu=2.5)")
    EntropyGRPOTrainer(model=..., reward_funcs=..., args=args, train_dataset=...).train()

    from entropy_dynamics.integrations.trl import EntropyDynamicsCallback
    trainer = GRPOTrainer(...)                      # TRL's own trainer, untouched
    trainer.add_callback(EntropyDynamicsCallback(trainer, probe_steps=10))

What it adds to TRL's GRPO step, and nothing else (no formula lives here):
1. After TRL generates and scores a generation batch (before it shuffles and splits it into
   micro-batches), one no-grad pass of the current policy computes the token statistics
   (log p, H, S_*, N; streamed from the final hidden states and the output layer, never the
   `[B, T, V]` logits) and the method decides its plan on the WHOLE batch, all ranks together
   (torch.distributed, initialised by accelerate). The keep mask and the weights travel with the
   micro-batches as extra input columns.
2. The loss applies them. When the method's surrogate is the plain `ppo` term (the default), TRL
   computes its own loss for its `loss_type` and `epsilon`, with the dropped tokens removed from
   its loss mask (so they also leave every denominator). Any other surrogate, a regulariser or a
   reweight uses the method's own per-token loss and our aggregation, mapped from `loss_type`.
3. The plan's batch-global metrics go into TRL's `self._metrics`, so they reach `report_to`.
Only this module imports trl.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from entropy_dynamics import diagnostics, methods, models
from entropy_dynamics.aggregation import aggregate
from entropy_dynamics.distributed import global_sum
from entropy_dynamics.methods import Plan, TokenBatch
from entropy_dynamics.theory import nominal_step
from entropy_dynamics.token_stats import token_stats_from_hidden
from entropy_dynamics.train.logging import warn
from entropy_dynamics.train.probe import entropy_probe
from entropy_dynamics.train.watch import RunWatch

__all__ = ["EntropyDynamicsCallback", "EntropyGRPOConfig", "EntropyGRPOTrainer"]

# Columns added to TRL's inputs; TRL shuffles and splits them with the rest of the batch.
KEEP_KEY = "entropy_keep"  # bool [B, T]
WEIGHT_KEY = "entropy_weight"  # float [B, T]
SELECTED_PREFIX = "entropy_selected/"  # bool [B, T] per regulariser that picks its tokens
PLAN_METRIC_PREFIX = "entropy_plan/"  # 0-dim per plan metric: batch constants the loss reads
NUM_TOKENS_KEY = "entropy_num_tokens"  # 0-dim: global kept-token count (kept whole by TRL)
NUM_SEQS_KEY = "entropy_num_seqs"  # 0-dim: global count of sequences with a kept token

# TRL loss_type -> our aggregation mode, for the method's own surrogate (docs/architecture.md).
_AGGREGATION = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dapo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
}

# Plan metrics that repeat one of `diagnostics.entropy_metrics` (every filter sees the batch's
# valid tokens, so Clip_B's mean / std of S_* and Clip_V's std of N - S are the batch's own):
# logged once, under the entropy/ name.
_DUPLICATE_METRICS = frozenset({diagnostics.CLIP_B_S_MEAN, diagnostics.CLIP_B_S_STD})


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
        if not _uses_trl_surrogate(method):
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
    if args.loss_type not in _AGGREGATION:
        reasons.append(f"loss_type={args.loss_type!r} (valid here: {sorted(_AGGREGATION)})")
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


def _uses_trl_surrogate(method) -> bool:
    """True when the method is TRL's own loss plus filters: the `ppo` term at its default clip
    range, with or without a dual clip (which TRL applies as `delta`)."""
    surrogate = method.surrogate
    if surrogate.name != "ppo" or method.regularisers or method.reweights:
        return False
    return dataclasses.replace(surrogate, dual_clip=None) == type(surrogate)()


class EntropyGRPOTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` whose token masks, weights and surrogate come from an entropy method.

    After a training step, `last_token_batch` (TokenBatch, this rank's rows of the latest
    generation batch, in generation order) and `last_plan` (its Plan) hold what was decided.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, EntropyGRPOConfig):
            raise ValueError(
                "EntropyGRPOTrainer needs args=EntropyGRPOConfig(...), got "
                f"{type(self.args).__name__}; EntropyGRPOConfig takes every GRPOConfig option"
            )
        self.method = methods.build(self.args.entropy_method)
        self.trl_surrogate = _uses_trl_surrogate(self.method)
        self.last_token_batch: TokenBatch | None = None
        self.last_plan: Plan | None = None
        # token_loss sums of the current generation batch (one plan), and its micro-batches seen
        self._plan_sums: dict[str, torch.Tensor] = {}
        self._plan_passes_seen = 0
        self._probe, self._probe_due = None, False
        # batch-global checks on every rank (they all-reduce); only the main process prints
        self.watch = RunWatch(
            self.method,
            no_drop_steps=self.args.entropy_warn_no_drop_steps,
            warn=warn if self.accelerator.is_main_process else (lambda message: None),
        )
        if self.args.entropy_probe_steps:
            self.add_callback(_ProbeCallback(self))
        if self.aux_loss_enabled and not self.trl_surrogate:
            raise ValueError(
                f"entropy_method={self.args.entropy_method!r} replaces TRL's loss, which would "
                "drop this MoE model's router aux loss; set router_aux_loss_coef=0 or use a "
                "plain 'ppo' surrogate"
            )

    # ------------------------------------------------------------------ the batch-global plan
    def _token_statistics(self, output: dict[str, Any]):
        """TokenStats `[B, T]` of the completion tokens under the current policy (no grad)."""
        return _completion_stats(self, output, self.args.entropy_chunk_rows)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        mask = _loss_mask(output)
        stats = self._token_statistics(output)
        advantages = _row_advantages(output)
        old_logprobs = output.get("old_per_token_logps")
        batch = TokenBatch(
            mask=mask,
            advantages=advantages.expand_as(stats.logprobs).float(),
            logprobs=stats.logprobs,
            old_logprobs=stats.logprobs if old_logprobs is None else old_logprobs.float(),
            entropy=stats.entropy,
            discriminator=stats.discriminator,
            baseline=stats.baseline if self.method.needs_baseline else None,
            ref_logprobs=output.get("ref_per_token_logps"),
        )
        plan = self.method.plan(batch)  # batch-global across ranks through torch.distributed
        output[KEEP_KEY] = plan.keep
        output[WEIGHT_KEY] = plan.weight
        output[NUM_TOKENS_KEY] = plan.num_tokens
        output[NUM_SEQS_KEY] = plan.num_seqs
        for name, selected in plan.selected.items():
            output[SELECTED_PREFIX + name] = selected
        for name, value in plan.metrics.items():  # 0-dim: TRL keeps them whole when splitting
            output[PLAN_METRIC_PREFIX + name] = value
        if self.trl_surrogate and self.loss_type in ("dapo", "cispo", "vespo"):
            # these loss types divide by the global loss-token count: dropped tokens leave it
            output["num_items_in_batch"] = plan.num_tokens.to(output["num_items_in_batch"])
        self.last_token_batch, self.last_plan = batch, plan
        if mode == "train":
            logged = self._metrics[mode]  # TRL has just appended this batch's reward statistics
            rewards_zero = (
                bool(logged["reward"]) and logged["reward"][-1] == 0 == logged["reward_std"][-1]
            )
            self.watch.observe(self.state.global_step + 1, batch, plan.metrics,
                               all_rewards_zero=rewards_zero)  # fmt: skip
        metrics = {k: v for k, v in plan.metrics.items() if k not in _DUPLICATE_METRICS}
        metrics.update(
            diagnostics.entropy_metrics(
                batch.entropy, batch.discriminator, mask, baseline=stats.baseline
            )
        )
        if self.trl_surrogate:  # TRL's loss logs this mean as `entropy` (over its loss tokens)
            metrics.pop(diagnostics.ENTROPY_MEAN)
        for name, value in metrics.items():
            self._metrics[mode][name].append(float(value))
        return output

    # ------------------------------------------------------------------ the loss
    def _compute_loss(self, model, inputs):
        if self._probe_due and self.model.training:
            self._probe_due = False
            self._probe_before(inputs)
        keep = inputs[KEEP_KEY]
        if self.trl_surrogate:
            # TRL's loss mask is completion_mask * tool_mask; tool_mask is read nowhere else
            # in the loss, so the keep mask enters there (the attention mask is untouched).
            inputs = dict(inputs)
            tool_mask = inputs.get("tool_mask")
            keep = keep.to(inputs["completion_mask"].dtype)
            inputs["tool_mask"] = keep if tool_mask is None else tool_mask * keep
            return super()._compute_loss(model, inputs)
        return self._method_loss(model, inputs)

    def _method_loss(self, model, inputs):
        """The method's surrogate + regularisers, aggregated with the global kept counts."""
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        completion_mask = inputs["completion_mask"]
        logprobs, entropy, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([inputs["prompt_mask"], completion_mask], dim=1),
            completion_ids.size(1),
            compute_entropy=True,
        )
        old_logprobs = inputs.get("old_per_token_logps")
        old_logprobs = logprobs.detach() if old_logprobs is None else old_logprobs
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        plan = _micro_plan(inputs)
        per_token, metrics = self.method.token_loss(
            logprobs=logprobs,
            old_logprobs=old_logprobs,
            advantages=advantages.expand_as(logprobs),
            plan=plan,
            entropy=entropy,
            ref_logprobs=inputs.get("ref_per_token_logps"),
        )
        mode = "train" if self.model.training else "eval"
        loss = aggregate(
            per_token,
            plan.keep,
            _AGGREGATION[self.loss_type],
            num_tokens=plan.num_tokens,
            num_seqs=plan.num_seqs,
            max_len=self.max_completion_length,
        )
        if mode == "train":
            # The sum over one generation batch's micro-batches (all ranks) is the batch loss;
            # DDP averages over ranks and one optimiser step spans gradient_accumulation_steps
            # of the steps_per_generation micro-batches.
            loss = loss * (
                self.accelerator.num_processes
                * self.args.steps_per_generation
                / self.current_gradient_accumulation_steps
            )
        if mode == "train":
            self._add_plan_sums(metrics, plan)
        else:  # an eval batch is planned and scored in one piece
            self._log_plan_metrics(mode, metrics, plan, passes=1)
        return loss

    def _add_plan_sums(self, metrics: dict[str, torch.Tensor], plan: Plan) -> None:
        """Add one micro-batch's raw sums; after the generation batch's last micro-batch (every
        chunk of it, every iteration) log its values once and update the method's state."""
        for name, value in metrics.items():
            self._plan_sums[name] = self._plan_sums.get(name, 0.0) + value.detach()
        self._plan_passes_seen += 1
        if self._plan_passes_seen == self.args.steps_per_generation * self.num_iterations:
            passes = self.num_iterations
            logged = self._log_plan_metrics("train", self._plan_sums, plan, passes=passes)
            self.method.step_end(logged)  # stateful parts (adaptive bonus) only
            self._plan_sums, self._plan_passes_seen = {}, 0

    def _log_plan_metrics(self, mode: str, sums: dict, plan: Plan, *, passes: int) -> dict:
        """Sums over this rank's micro-batches -> all ranks -> the logged values, appended once
        (TRL averages what was appended over its logging window)."""
        sums = {name: global_sum(torch.as_tensor(value).float()) for name, value in sums.items()}
        logged = self.method.finalize_metrics(sums, plan, passes=passes)
        for name in sums:
            self._metrics[mode][name].append(float(logged[name]))
        return logged

    def training_step(self, model, inputs, num_items_in_batch):
        window_ends = (self._step + 1) % self.current_gradient_accumulation_steps == 0
        every = self.args.entropy_probe_steps
        # the probed micro-batch is the last of the window; its prepared inputs reach the loss
        self._probe_due = bool(window_ends and every and (self.state.global_step + 1) % every == 0)
        return super().training_step(model, inputs, num_items_in_batch)

    # ------------------------------------------------------------------ the entropy probe
    def _completion_logits(self, inputs) -> torch.Tensor:
        """Logits `[b, T, V]` at the completion positions of one micro-batch (no grad)."""
        return _completion_logits(self, inputs)

    def _probe_before(self, inputs) -> None:
        """Keep the micro-batch and its logits; `_ProbeCallback` measures after the step."""
        self._probe = (inputs, self._completion_logits(inputs), self._get_learning_rate())

    def probe_after_step(self) -> None:
        """Measured vs predicted entropy change of the probed micro-batch, into the metrics."""
        inputs, old_logits, lr = self._probe
        self._probe = None
        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        keep = inputs[KEEP_KEY]
        # Theorem 3.3's nominal step alpha = lr * r * A * w; r = 1: the plan is made on-policy
        alpha = nominal_step(lr, advantages.expand_as(keep), keep=keep, weight=inputs[WEIGHT_KEY])
        mask = inputs["completion_mask"].bool()
        metrics = entropy_probe(
            old_logits,
            self._completion_logits(inputs),
            inputs["completion_ids"],
            mask,
            alpha,
            temperature=self.temperature,
        )
        for name, value in metrics.items():
            self._metrics["train"][name].append(float(value))


class _ProbeCallback(TrainerCallback):
    """Runs the trainer's entropy probe right after the optimiser step, before logging."""

    def __init__(self, trainer: EntropyGRPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer._probe is not None:
            self.trainer.probe_after_step()


class EntropyDynamicsCallback(TrainerCallback):
    """Entropy-dynamics metrics for a stock TRL `GRPOTrainer`, without changing what it trains.

        trainer = GRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), ...)
        trainer.add_callback(EntropyDynamicsCallback(trainer, probe_steps=10))
        trainer.train()

    After each generation batch, one no-grad pass of the current policy (the same streamed
    statistics `EntropyGRPOTrainer` plans with: `token_stats_from_hidden`, never the `[B, T, V]`
    logits) logs, batch-global over all processes, `entropy/s_mean`, `entropy/s_std`,
    `entropy/n_mean`, `entropy/s_minus_n_mean`, `entropy/s_minus_n_std` beside TRL's own
    `entropy`. Every `probe_steps` optimiser steps (0: never), the logits of the latest
    generation batch's first `probe_rows` rows (None: `per_device_train_batch_size`) are taken
    right before and right after the optimiser step, and `entropy/measured_delta` is logged beside
    the paper's Theorem 3.3 prediction `entropy/pred_delta` (nominal step `lr * A` on every loss
    token), the logit-space `entropy/pred_delta_logit` and `probe/*`
    (`entropy_dynamics.train.probe.entropy_probe`). The probe assumes those rows are in the
    step's update: true when one optimiser step uses one generation batch (TRL's default
    `steps_per_generation = gradient_accumulation_steps`).

    Nothing reaches the loss, the gradients or the sampler: the passes run under `no_grad`
    with the RNG state restored afterwards, so the weights are bit-identical to a run without
    the callback. The cost is the extra forward passes (docs/trl.md has a measurement).
    `last_stats` holds the latest batch's `TokenStats` (this process's rows, generation order).
    """

    def __init__(
        self,
        trainer: GRPOTrainer,
        *,
        probe_steps: int = 0,
        probe_rows: int | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        if not isinstance(trainer, GRPOTrainer):
            raise ValueError(
                f"EntropyDynamicsCallback needs the GRPOTrainer it monitors, got "
                f"{type(trainer).__name__}: EntropyDynamicsCallback(trainer, probe_steps=N)"
            )
        if isinstance(trainer, EntropyGRPOTrainer):
            raise ValueError(
                "EntropyGRPOTrainer already logs these metrics; use its entropy_probe_steps "
                "option instead of EntropyDynamicsCallback"
            )
        for name, value, low in (
            ("probe_steps", probe_steps, 0),
            ("probe_rows", probe_rows, 1),
            ("chunk_rows", chunk_rows, 1),
        ):
            if value is None and name != "probe_steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.trainer = trainer
        self.probe_steps = probe_steps
        self.probe_rows = probe_rows
        self.chunk_rows = chunk_rows
        self.last_stats = None
        self._output: dict[str, Any] | None = None
        self._before: tuple[dict[str, Any], torch.Tensor, float] | None = None
        generate = trainer._generate_and_score_completions

        def generate_and_observe(inputs):  # TRL's call, then a look at what it returned
            output = generate(inputs)
            self._observe(output)
            return output

        trainer._generate_and_score_completions = generate_and_observe

    def _quiet(self):
        """Restore the RNG state after our passes, so TRL's sampling draws what it would have."""
        device = self.trainer.accelerator.device
        devices = [device] if device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def _log(self, mode: str, metrics: dict[str, torch.Tensor]) -> None:
        for name, value in metrics.items():
            self.trainer._metrics[mode][name].append(float(value))

    def _observe(self, output: dict[str, Any]) -> None:
        trainer = self.trainer
        mode = "train" if trainer.model.training else "eval"
        with self._quiet():
            stats = _completion_stats(trainer, output, self.chunk_rows)
        metrics = diagnostics.entropy_metrics(
            stats.entropy, stats.discriminator, _loss_mask(output), baseline=stats.baseline
        )
        metrics.pop(diagnostics.ENTROPY_MEAN)  # TRL logs it as `entropy`
        self._log(mode, metrics)
        self.last_stats = stats
        if mode == "train":
            self._output = output

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        every = self.probe_steps
        if not every or self._output is None or (state.global_step + 1) % every:
            return
        rows = self.probe_rows or args.per_device_train_batch_size
        keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages")
        inputs = {key: self._output[key][:rows] for key in keys}
        if self._output.get("tool_mask") is not None:
            inputs["tool_mask"] = self._output["tool_mask"][:rows]
        with self._quiet():
            logits = _completion_logits(self.trainer, inputs)
        self._before = (inputs, logits, self.trainer._get_learning_rate())

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._before is None:
            return
        inputs, old_logits, lr = self._before
        self._before = None
        with self._quiet():
            new_logits = _completion_logits(self.trainer, inputs)
        mask = _loss_mask(inputs)
        # Theorem 3.3's nominal step alpha = lr * r * A on each loss token; r = 1 on-policy
        alpha = nominal_step(lr, _row_advantages(inputs).expand_as(mask), keep=mask)
        metrics = entropy_probe(
            old_logits,
            new_logits,
            inputs["completion_ids"],
            inputs["completion_mask"].bool(),
            alpha,
            temperature=self.trainer.temperature,
        )
        self._log("train", metrics)


# ---------------------------------------------------------------------- shared forward passes
def _policy(trainer: GRPOTrainer):
    """The trainer's policy without its accelerate / DDP wrapper (PEFT layers stay active)."""
    return trainer.accelerator.unwrap_model(trainer.model)


@torch.no_grad()
def _completion_stats(trainer: GRPOTrainer, output: dict[str, Any], chunk_rows: int | None):
    """TokenStats `[B, T]` of a generation batch's completion tokens under the current policy.

    Streamed from the final hidden states and the output layer (`token_stats_from_hidden`), in
    forward passes of `chunk_rows` rows (None: the per-device train batch size).
    """
    model = _policy(trainer)
    if hasattr(model, "get_base_model"):  # PEFT: the LoRA layers stay active inside it
        model = model.get_base_model()
    weight, bias = models.model_output_layer(model)
    prompt_ids, completion_ids = output["prompt_ids"], output["completion_ids"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    T = completion_ids.size(1)
    rows = chunk_rows or trainer.args.per_device_train_batch_size
    parts = []
    for start in range(0, input_ids.size(0), rows):
        ids, att = input_ids[start : start + rows], attention_mask[start : start + rows]
        # The same backbone call as TRL's fused LM head, so log p matches TRL's own.
        with trainer.accelerator.autocast():
            hidden = model.base_model(input_ids=ids, attention_mask=att, use_cache=False)
        hidden = hidden.last_hidden_state[:, -T - 1 : -1]  # (b, T, D): position t predicts t+1
        mask = output["completion_mask"][start : start + rows].bool()
        parts.append(
            token_stats_from_hidden(
                hidden,
                weight,
                completion_ids[start : start + rows],
                bias=bias,
                temperature=trainer.temperature,
                mask=mask,
            )
        )
    return type(parts[0])(*(torch.cat(fields, dim=0) for fields in zip(*parts, strict=True)))


@torch.no_grad()
def _completion_logits(trainer: GRPOTrainer, inputs: dict[str, Any]) -> torch.Tensor:
    """Logits `[b, T, V]` (fp32) at the completion positions of `inputs`' rows (no grad)."""
    model = _policy(trainer)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    T = inputs["completion_ids"].size(1)
    with trainer.accelerator.autocast():
        logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
    return logits[:, -T - 1 : -1].float()


def _loss_mask(output: dict[str, Any]) -> torch.Tensor:
    """Bool `[B, T]`: the completion tokens TRL's loss counts (tool results left out)."""
    mask = output["completion_mask"].bool()
    if output.get("tool_mask") is not None:
        mask = mask & output["tool_mask"].bool()
    return mask


def _row_advantages(output: dict[str, Any]) -> torch.Tensor:
    """Advantages as `[B, 1]` (per sequence) or `[B, T]` (per token), as TRL stores them."""
    advantages = output["advantages"]
    return advantages.unsqueeze(1) if advantages.dim() == 1 else advantages


def _micro_plan(inputs) -> Plan:
    """This micro-batch's rows of the plan: its parts travel as input columns."""
    selected = {
        key[len(SELECTED_PREFIX) :]: value
        for key, value in inputs.items()
        if key.startswith(SELECTED_PREFIX)
    }
    plan_metrics = {
        key[len(PLAN_METRIC_PREFIX) :]: value
        for key, value in inputs.items()
        if key.startswith(PLAN_METRIC_PREFIX)
    }
    return Plan(
        keep=inputs[KEEP_KEY],
        weight=inputs[WEIGHT_KEY],
        selected=selected,
        metrics=plan_metrics,
        num_tokens=inputs[NUM_TOKENS_KEY],
        num_seqs=inputs[NUM_SEQS_KEY],
    )
