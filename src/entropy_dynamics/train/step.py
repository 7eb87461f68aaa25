"""One RL step of the loop: sample, score, plan, update (`train_step`), and the per-micro-batch
loss (`micro_batch_loss`). The loop around it (resume, checkpoints, evaluation, signals) is
`train.loop`; what this step departs from in GRPO is listed in that module's docstring.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch

from entropy_dynamics import diagnostics as dg
from entropy_dynamics.advantages import get as get_advantage
from entropy_dynamics.aggregation import aggregate
from entropy_dynamics.clamped_entropy import clamped_entropy, clamped_entropy_from_hidden
from entropy_dynamics.methods import TokenBatch
from entropy_dynamics.models import model_output_layer
from entropy_dynamics.theory import nominal_step
from entropy_dynamics.token_stats import TokenStats, token_stats, token_stats_from_hidden
from entropy_dynamics.train.probe import entropy_probe
from entropy_dynamics.train.rollout import response_hidden, response_logits, sample
from entropy_dynamics.train.setup import (
    Run,
    save_samples,
    save_step_data,
    stats_from_hidden,
    weight_norm,
)


class NonFiniteLossError(RuntimeError):
    """Raised after `optim.max_nonfinite` consecutive steps with a non-finite loss."""


class WeightsDivergedError(NonFiniteLossError):
    """Raised when an update leaves non-finite weights or multiplies their norm by 100 or more."""


DIVERGED_NORM_RATIO = 100.0
"""Weights whose global norm reaches this multiple of the run's starting norm stop the run."""


def train_step(run: Run, problems: list) -> dict | None:
    """One GRPO step on `problems`; returns its metrics, or None when the loss was non-finite."""
    cfg, step = run.cfg, run.step + 1
    started, started_cpu = time.perf_counter(), time.process_time()
    G = cfg.rollout.group_size
    prompts = [run.task.format_prompt(p) for p in problems]
    rollout = sample(
        run.model, run.tokenizer, prompts, group_size=G, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
        generator=run.generator, chat_template=run.chat_template,
    )  # fmt: skip
    rewards, reward_metrics = run.reward.score_groups(problems, rollout.texts, G)  # (B,)
    if cfg.logging.samples_every and step % cfg.logging.samples_every == 0:
        save_samples(run.run_dir, step, prompts, rollout.texts, rewards.tolist(), group_size=G,
                     n_prompts=cfg.logging.samples_per_step)  # fmt: skip
    mask = rollout.response_mask  # (B, T)
    if run.method.advantage is not None:  # the method prescribes its estimator (w_reinforce)
        advantages = run.method.advantage.advantages(rewards, G)[:, None].expand_as(mask)
    else:
        advantages = get_advantage(cfg.method.advantage)(rewards, G)[:, None].expand_as(mask)

    B = mask.shape[0]
    micro = cfg.method.micro_batch_size or B
    fused = micro >= B and cfg.method.ppo_epochs == 1  # one forward serves statistics and loss
    scored = score(run, rollout, slice(None), grad=fused)
    stats = scored.stats
    clamped = _clamped_entropy(run, scored, mask)  # None unless the method needs it (AEnt)
    old_logprobs = stats.logprobs.detach()
    ref_logprobs = None
    if run.reference is not None:
        ref_logprobs = score(
            run, rollout, slice(None), grad=False, policy=run.reference
        ).stats.logprobs
    batch = TokenBatch(
        mask=mask, advantages=advantages, logprobs=old_logprobs, old_logprobs=old_logprobs,
        entropy=stats.entropy.detach(), discriminator=stats.discriminator,
        baseline=stats.baseline, ref_logprobs=ref_logprobs,
    )  # fmt: skip
    plan = run.method.plan(batch)
    if run.watch is not None:  # warns once when a filter idles or a step has no signal
        run.watch.observe(step, batch, plan.metrics, rewards=rewards)
    probing = bool(cfg.logging.probe_every) and step % cfg.logging.probe_every == 0
    old_logits = _output_logits(run, scored) if probing else None  # before the update

    update = _update(run, rollout, batch, plan, (stats, clamped) if fused else None)
    if update is None:
        return None
    if run.reference is not None and run.method.reference_reset_every > 0:
        update[dg.KL_REF_RESET] = float(_reset_reference(run, step))
    metrics = {
        dg.REWARD_MEAN: rewards.mean(), dg.REWARD_STD: rewards.std(unbiased=False),
        **reward_metrics,
        **dg.entropy_metrics(batch.entropy, batch.discriminator, mask, baseline=batch.baseline),
        dg.RESPONSE_LENGTH: mask.sum(1).float().mean(),
        dg.ENTROPY_FIRST_TOKEN: batch.entropy[:, 0].mean(),  # every response has a first token
        dg.ROLLOUT_LOGPROB_GAP: (rollout.sampler_logprobs - old_logprobs)[mask].abs().max(),
        **plan.metrics, **update,
    }  # fmt: skip
    if probing:
        with torch.no_grad():
            new_logits = response_logits(run.model, rollout.input_ids, rollout.attention_mask,
                                         mask.shape[1], group_size=G)  # fmt: skip  # as `score`
        ratio = torch.ones_like(old_logprobs)  # the plan's ratio: on-policy at plan time
        alpha = nominal_step(update[dg.OPTIM_LR], advantages, ratio=ratio, keep=plan.keep,
                             weight=plan.weight)  # fmt: skip
        metrics.update(entropy_probe(old_logits, new_logits, rollout.response_ids, mask, alpha,
                                     temperature=cfg.rollout.temperature))  # fmt: skip
        save_step_data(run.run_dir, step, batch, plan, kind="dist")
    if cfg.logging.save_batch_every and step % cfg.logging.save_batch_every == 0:
        save_step_data(run.run_dir, step, batch, plan, kind="batch", spec=cfg.method.spec)
    elapsed = time.perf_counter() - started
    metrics[dg.TIME_STEP_S] = elapsed
    metrics[dg.TIME_STEP_CPU_S] = time.process_time() - started_cpu
    metrics[dg.TIME_TOKENS_PER_S] = float(mask.sum()) / elapsed
    return {k: float(v) for k, v in metrics.items()}


class Scored(NamedTuple):
    """What `score` computed: the statistics and what the output layer read (one of the two)."""

    stats: TokenStats
    logits: torch.Tensor | None = None  # [b, T, V] when the statistics came from the logits
    hidden: torch.Tensor | None = None  # [b, T, D] with `model.stats_from` = hidden


def score(run: Run, rollout, rows, *, grad: bool, policy=None) -> Scored:
    """TokenStats of the response tokens in `rows`, with the logits or the final hidden states.

    From the logits or, with `model.stats_from` = hidden, from the final hidden states without
    ever holding the logits.
    """
    policy = run.model if policy is None else policy
    T = rollout.response_ids.shape[1]
    ids, attention = rollout.input_ids[rows], rollout.attention_mask[rows]
    labels, mask = rollout.response_ids[rows], rollout.response_mask[rows]
    temperature = run.cfg.rollout.temperature
    # runs of G' rows share a prompt pass (shared_prompt_hidden): G' divides the group size, the
    # micro-batch and its first row, so a half-group micro-batch shares its prompt too
    G = math.gcd(run.cfg.rollout.group_size, ids.shape[0], rows.start or 0)
    with torch.set_grad_enabled(grad):
        if stats_from_hidden(run.cfg, policy):
            hidden = response_hidden(policy, ids, attention, T, group_size=G)  # (b, T, D)
            weight, bias = model_output_layer(policy)
            stats = token_stats_from_hidden(hidden, weight, labels, bias=bias,
                                            temperature=temperature, mask=mask)  # fmt: skip
            return Scored(stats, hidden=hidden)
        logits = response_logits(policy, ids, attention, T, group_size=G)  # (b, T, V)
        stats = token_stats(logits, labels, temperature=temperature, mask=mask)
        return Scored(stats, logits=logits)


def _clamped_entropy(run: Run, scored: Scored, mask):
    """AEnt's clamped entropy [b, T] from what `score` computed, when the method needs it."""
    clamp_p = run.method.clamp_p
    if clamp_p is None:
        return None
    temperature = run.cfg.rollout.temperature
    if scored.logits is not None:
        return clamped_entropy(scored.logits, clamp_p=clamp_p, temperature=temperature, mask=mask)
    weight, bias = model_output_layer(run.model)
    return clamped_entropy_from_hidden(scored.hidden, weight, bias=bias, clamp_p=clamp_p,
                                       temperature=temperature, mask=mask)  # fmt: skip


def _output_logits(run: Run, scored: Scored):
    """Detached logits [B, T, V] from what `score` computed (hidden states through lm_head)."""
    if scored.logits is not None:
        return scored.logits.detach()
    weight, bias = model_output_layer(run.model)
    with torch.no_grad():
        return torch.nn.functional.linear(scored.hidden.detach(), weight, bias).float()


def _update(run: Run, rollout, batch, plan, fused_stats) -> dict | None:
    """Micro-batched backward passes and the optimiser step(s); None on a non-finite loss."""
    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    B, epochs = batch.mask.shape[0], cfg.method.ppo_epochs
    micro = cfg.method.micro_batch_size or B
    loss_total, loss_sums = 0.0, {}
    for _ in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, B, micro):
            rows = slice(start, start + micro)
            if fused_stats is not None:
                stats, clamped = fused_stats
            else:
                scored = score(run, rollout, rows, grad=True)
                stats = scored.stats
                clamped = _clamped_entropy(run, scored, batch.mask[rows])
            extra = {} if clamped is None else {"clamped_entropy": clamped}
            loss, metrics = micro_batch_loss(cfg, run.method, plan, batch, rows, stats, **extra)
            if not torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                return None
            loss.backward()
            loss_total += float(loss.detach()) / epochs
            for k, v in metrics.items():  # raw sums over kept tokens, every micro-batch and epoch
                loss_sums[k] = loss_sums.get(k, 0.0) + float(v)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            return None
        lr = run.scheduler.get_last_lr()[0]
        optimizer.step()
        run.scheduler.step()
        _check_weights(run)
    loss_metrics = {k: float(v) for k, v in
                    run.method.finalize_metrics(loss_sums, plan, passes=epochs).items()}  # fmt: skip
    run.method.step_end(loss_metrics)
    return {dg.LOSS_TOTAL: loss_total, dg.OPTIM_GRAD_NORM: float(grad_norm), dg.OPTIM_LR: lr,
            **loss_metrics}  # fmt: skip


def _reset_reference(run: Run, step: int) -> bool:
    """After optimiser step `step`: the reference becomes the current policy (and the optimiser
    state starts afresh) when the method's kl_ref says so; returns whether it did."""
    reset, reset_optimizer = run.method.reference_reset(step)
    if reset:
        run.reference.load_state_dict(run.model.state_dict())
        if reset_optimizer:
            run.optimizer.state.clear()  # Adam's moments and step count; the schedule goes on
    return reset


def _check_weights(run: Run) -> None:
    """Stop the run when an update left non-finite weights or grew their norm 100-fold."""
    norm, start = weight_norm(run.model), run.weight_norm_start
    if math.isfinite(norm) and norm < DIVERGED_NORM_RATIO * start:
        return
    raise WeightsDivergedError(
        f"step {run.step + 1}: the weights diverged (global norm {norm:.3g}, {start:.3g} at the "
        f"start); the run stopped without saving them (the last checkpoint is intact); lower "
        f"optim.lr (now {run.cfg.optim.lr:g}) or set optim.grad_clip (now "
        f"{run.cfg.optim.grad_clip:g})"
    )


def micro_batch_loss(cfg, method, plan, batch, rows, stats, clamped_entropy=None):
    """The aggregated loss of one micro-batch (its share of the batch-global token mean)."""
    plan_rows = plan.rows(rows)
    token_loss, metrics = method.token_loss(
        logprobs=stats.logprobs, old_logprobs=batch.old_logprobs[rows],
        advantages=batch.advantages[rows], plan=plan_rows, entropy=stats.entropy,
        ref_logprobs=None if batch.ref_logprobs is None else batch.ref_logprobs[rows],
        clamped_entropy=clamped_entropy,
    )  # fmt: skip
    loss = aggregate(
        token_loss, plan_rows.keep, cfg.method.aggregation, num_tokens=plan.num_tokens,
        num_seqs=plan.num_seqs, max_len=cfg.rollout.max_new_tokens,
    )  # fmt: skip
    return loss, metrics
