"""TRL plugin, part 2: `EntropyDynamicsCallback`, a monitor for a stock `GRPOTrainer` that changes
nothing it trains, and the reads of TRL's batches that it shares with `EntropyGRPOTrainer`
(`integrations/trl.py`, which re-exports the callback).

    from entropy_dynamics.integrations.trl import EntropyDynamicsCallback
    trainer = GRPOTrainer(...)                      # TRL's own trainer, untouched
    trainer.add_callback(EntropyDynamicsCallback(trainer, probe_steps=10))
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from entropy_dynamics import diagnostics, models
from entropy_dynamics.theory import nominal_step
from entropy_dynamics.token_stats import token_stats_from_hidden
from entropy_dynamics.train.probe import entropy_probe

__all__ = ["EntropyDynamicsCallback"]


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
        if getattr(trainer, "logs_entropy_dynamics", False):  # EntropyGRPOTrainer (trl.py)
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
