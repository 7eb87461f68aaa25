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
Only this module, `trl_config.py` (the config and its checks) and `trl_monitor.py` (the
callback) import trl.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from entropy_dynamics import diagnostics, methods
from entropy_dynamics.aggregation import aggregate
from entropy_dynamics.distributed import global_sum
from entropy_dynamics.methods import Plan, TokenBatch
from entropy_dynamics.theory import nominal_step
from entropy_dynamics.train.logging import warn
from entropy_dynamics.train.probe import entropy_probe
from entropy_dynamics.train.watch import RunWatch

from .trl_config import LOSS_TYPE_AGGREGATION, EntropyGRPOConfig, uses_trl_surrogate
from .trl_monitor import (
    EntropyDynamicsCallback,
    _completion_logits,
    _completion_stats,
    _loss_mask,
    _row_advantages,
)

__all__ = ["EntropyDynamicsCallback", "EntropyGRPOConfig", "EntropyGRPOTrainer"]

# Columns added to TRL's inputs; TRL shuffles and splits them with the rest of the batch.
KEEP_KEY = "entropy_keep"  # bool [B, T]
WEIGHT_KEY = "entropy_weight"  # float [B, T]
SELECTED_PREFIX = "entropy_selected/"  # bool [B, T] per regulariser that picks its tokens
PLAN_METRIC_PREFIX = "entropy_plan/"  # 0-dim per plan metric: batch constants the loss reads
NUM_TOKENS_KEY = "entropy_num_tokens"  # 0-dim: global kept-token count (kept whole by TRL)
NUM_SEQS_KEY = "entropy_num_seqs"  # 0-dim: global count of sequences with a kept token

# Plan metrics that repeat one of `diagnostics.entropy_metrics` (every filter sees the batch's
# valid tokens, so Clip_B's mean / std of S_* and Clip_V's std of N - S are the batch's own):
# logged once, under the entropy/ name.
_DUPLICATE_METRICS = frozenset({diagnostics.CLIP_B_S_MEAN, diagnostics.CLIP_B_S_STD})


class EntropyGRPOTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` whose token masks, weights and surrogate come from an entropy method.

    After a training step, `last_token_batch` (TokenBatch, this rank's rows of the latest
    generation batch, in generation order) and `last_plan` (its Plan) hold what was decided.
    """

    logs_entropy_dynamics = True  # EntropyDynamicsCallback refuses it: it logs these itself

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, EntropyGRPOConfig):
            raise ValueError(
                "EntropyGRPOTrainer needs args=EntropyGRPOConfig(...), got "
                f"{type(self.args).__name__}; EntropyGRPOConfig takes every GRPOConfig option"
            )
        self.method = methods.build(self.args.entropy_method)
        self.trl_surrogate = uses_trl_surrogate(self.method)
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
        # batch-global across ranks through torch.distributed; an eval batch leaves the
        # stateful filters' state (AEPO's switch, Clip-Cov's draw) as training left it
        plan = self.method.plan(batch, advance_state=mode == "train")
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
            LOSS_TYPE_AGGREGATION[self.loss_type],
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
