"""The compact single-device GRPO loop: `entropy-dynamics train --config configs/demo.yaml [a.b=v ...]`.

This is GRPO (Shao et al. 2024, DeepSeekMath): for each prompt sample G responses, score them
with a verifier, normalise the rewards within each group into advantages, and take clipped
policy-gradient steps with no value model. Where this loop departs from it:

1. The per-token loss is a composable *method* (`methods.build(spec)`): the GRPO surrogate plus
   optional token filters (Clip_B, Clip_V, ...), reweights and regularisers. Filters are decided
   ONCE per training batch (`method.plan`) before micro-batching, so the kept tokens and the
   token-mean denominator are batch-global and independent of the micro-batch size.
2. Strictly on-policy by default (`ppo_epochs=1`, the paper's setting): the "old" log-probs are
   the current policy's teacher-forced log-probs, so ratio == 1 exactly. The sampler's own
   KV-cache log-probs differ by float rounding; their gap is logged (`rollout/logprob_gap`).
   `ppo_epochs > 1` reuses the batch, and later passes are off-policy (ratio != 1).
3. No KL term unless the method has one (`... + kl_ref(coef=...)`); then the frozen initial
   policy is kept as the reference.
4. Token statistics (H, S_*, N) come from `token_stats` under the policy before the update.
5. A reward that raises or times out scores 0 and is counted (`reward/errors`).
6. A non-finite loss skips the step (warning) and stops the run after `max_nonfinite` in a row.
7. The entropy probe (train/probe.py) re-measures entropy after the update at the same positions.
8. Dropout is off throughout (the policy stays in eval mode): rollouts and updates see one policy.
"""

from __future__ import annotations

import copy
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch

from entropy_dynamics import diagnostics as dg
from entropy_dynamics import methods
from entropy_dynamics.advantages import get as get_advantage
from entropy_dynamics.aggregation import aggregate
from entropy_dynamics.methods import TokenBatch
from entropy_dynamics.token_stats import token_stats
from entropy_dynamics.train import checkpoint as ckpt
from entropy_dynamics.train.config import TrainConfig, save_config
from entropy_dynamics.train.evaluate import evaluate
from entropy_dynamics.train.logging import Progress, RunLogger, truncate_jsonl, warn
from entropy_dynamics.train.probe import entropy_probe
from entropy_dynamics.train.rewards import SafeReward
from entropy_dynamics.train.rollout import response_logits, sample
from entropy_dynamics.train.setup import build_policy, lr_lambda, problem_order, save_step_data


class NonFiniteLossError(RuntimeError):
    """Raised after `optim.max_nonfinite` consecutive steps with a non-finite loss."""


def train(cfg: TrainConfig, *, resume: bool = False, task=None) -> Path:
    """Run `cfg.steps` RL steps; returns the run directory. Ctrl-C checkpoints and returns.

    `task` (an object with problems / format_prompt / reward) replaces `tasks.get(cfg.task.name)`,
    for tasks that are not registered.
    """
    run_dir = Path(cfg.logging.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if task is None:
        from entropy_dynamics import tasks

        task = tasks.get(cfg.task.name, **cfg.task.options)
    if hasattr(task, "start"):  # launch verifier workers before the reward time limit applies
        task.start()
    model, tokenizer = build_policy(cfg, task=task)
    train_problems = task.problems("train", cfg.task.n_train, seed=cfg.seed)
    eval_problems = task.problems("test", cfg.task.n_eval, seed=cfg.seed) if cfg.task.n_eval else []
    method = methods.build(cfg.method.spec)
    reference = copy.deepcopy(model).requires_grad_(False) if _needs_reference(method) else None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay, eps=cfg.optim.eps,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    reward = SafeReward(task, timeout_s=cfg.task.reward_timeout_s)
    generator = torch.Generator(device=next(model.parameters()).device)
    generator.manual_seed(cfg.seed)

    step, nonfinite = 0, 0
    latest = ckpt.latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        state = ckpt.load_checkpoint(
            latest, model=model, optimizer=optimizer, scheduler=scheduler, generator=generator
        )
        step, nonfinite = state["step"], state.get("nonfinite", 0)
        for name in ("metrics.jsonl", "eval.jsonl"):
            truncate_jsonl(run_dir / name, step)
    elif not resume:
        for name in ("metrics.jsonl", "eval.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    logger = RunLogger(run_dir, tensorboard=cfg.logging.tensorboard)

    def run_eval(at_step: int) -> None:
        result = evaluate(
            model, tokenizer, task, eval_problems, n=cfg.logging.eval_k,
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
            max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed + 7919 * at_step,
            reward_fn=reward,
        )  # fmt: skip
        logger.log_eval(at_step, result)

    def save(at_step: int) -> None:
        ckpt.save_checkpoint(
            run_dir, step=at_step, model=model, optimizer=optimizer, scheduler=scheduler,
            state={"nonfinite": nonfinite}, generator=generator,
        )  # fmt: skip

    interrupted = {"flag": False}
    previous_handler = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *_: interrupted.update(flag=True))
    progress = Progress(cfg.steps, initial=step, enabled=cfg.logging.progress, desc="train")
    evaluating = cfg.logging.eval_k > 0 and eval_problems
    try:
        if evaluating and step == 0 and cfg.logging.eval_every:
            run_eval(0)
        while step < cfg.steps and not interrupted["flag"]:
            order = problem_order(len(train_problems), cfg, step)
            batch_problems = [train_problems[i] for i in order]
            metrics = train_step(
                cfg, step + 1, model, tokenizer, task, batch_problems, method, optimizer,
                scheduler, reward, generator, reference, run_dir,
            )  # fmt: skip
            step += 1
            if metrics is None:
                nonfinite += 1
                warn(f"step {step}: non-finite loss, update skipped ({nonfinite} in a row)")
                if nonfinite >= cfg.optim.max_nonfinite:
                    save(step)
                    raise NonFiniteLossError(
                        f"{nonfinite} consecutive non-finite losses (optim.max_nonfinite="
                        f"{cfg.optim.max_nonfinite}); lower optim.lr or check the task's rewards"
                    )
                metrics = {dg.LOSS_NONFINITE: 1.0}
            else:
                nonfinite = 0
            logger.log_step(step, metrics)
            progress.update({k: v for k, v in metrics.items() if k in _SHOWN})
            if evaluating and cfg.logging.eval_every and step % cfg.logging.eval_every == 0:
                run_eval(step)
            if cfg.logging.checkpoint_every and step % cfg.logging.checkpoint_every == 0:
                save(step)
        if interrupted["flag"]:
            save(step)
            warn(f"interrupted at step {step}; checkpoint saved, continue with --resume")
        else:
            if evaluating and not (cfg.logging.eval_every and step % cfg.logging.eval_every == 0):
                run_eval(step)
            save(step)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        progress.close()
        logger.close()
        if hasattr(task, "close"):
            task.close()
    return run_dir


_SHOWN = (dg.REWARD_MEAN, dg.ENTROPY_MEAN, dg.LOSS_TOTAL)


def _needs_reference(method) -> bool:
    return bool(getattr(method, "needs_ref_logprobs", False))


def train_step(
    cfg, step, model, tokenizer, task, problems, method, optimizer, scheduler, reward,
    generator, reference, run_dir,
) -> dict | None:  # fmt: skip
    """One GRPO step on `problems`; returns its metrics, or None when the loss was non-finite."""
    started, started_cpu = time.perf_counter(), time.process_time()
    G = cfg.rollout.group_size
    model.eval()
    rollout = sample(
        model, tokenizer, [task.format_prompt(p) for p in problems], group_size=G,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
        max_new_tokens=cfg.rollout.max_new_tokens, generator=generator,
    )  # fmt: skip
    rewards, reward_metrics = reward.score_groups(problems, rollout.texts, G)  # (B,)
    mask = rollout.response_mask  # (B, T)
    advantages = get_advantage(cfg.method.advantage)(rewards, G)[:, None].expand_as(mask)
    T = mask.shape[1]
    labels = rollout.response_ids

    def forward(rows, *, grad: bool, policy=model):
        with torch.set_grad_enabled(grad):
            logits = response_logits(  # (b, T, V)
                policy, rollout.input_ids[rows], rollout.attention_mask[rows], T
            )
            stats = token_stats(
                logits, labels[rows], temperature=cfg.rollout.temperature, mask=mask[rows]
            )
        return logits, stats

    whole = slice(None)
    B = mask.shape[0]
    micro = cfg.method.micro_batch_size or B
    fused = micro >= B and cfg.method.ppo_epochs == 1  # one forward serves stats and loss
    logits, stats = forward(whole, grad=fused)
    old_logprobs = stats.logprobs.detach()
    ref_logprobs = None
    if reference is not None:
        ref_logprobs = forward(whole, grad=False, policy=reference)[1].logprobs
    batch = TokenBatch(
        mask=mask, advantages=advantages, logprobs=old_logprobs, old_logprobs=old_logprobs,
        entropy=stats.entropy.detach(), discriminator=stats.discriminator,
        baseline=stats.baseline, ref_logprobs=ref_logprobs,
    )  # fmt: skip
    plan = method.plan(batch)

    optimizer.zero_grad(set_to_none=True)
    loss_total, loss_metrics = 0.0, {}
    for epoch in range(cfg.method.ppo_epochs):
        if epoch > 0:
            optimizer.zero_grad(set_to_none=True)
        for start in range(0, B, micro):
            rows = slice(start, start + micro)
            mb_stats = stats if fused else forward(rows, grad=True)[1]
            loss, metrics = micro_batch_loss(cfg, method, plan, batch, rows, mb_stats, T)
            if not torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                return None
            loss.backward()
            loss_total += float(loss.detach()) / cfg.method.ppo_epochs
            for k, v in metrics.items():
                loss_metrics[k] = loss_metrics.get(k, 0.0) + float(v) / cfg.method.ppo_epochs
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        )
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            return None
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
    method.step_end({**plan.metrics, **loss_metrics})

    metrics = {
        dg.REWARD_MEAN: rewards.mean(), dg.REWARD_STD: rewards.std(unbiased=False),
        **reward_metrics,
        **dg.entropy_metrics(batch.entropy, batch.discriminator, mask, baseline=batch.baseline),
        dg.RESPONSE_LENGTH: mask.sum(1).float().mean(),
        dg.ROLLOUT_LOGPROB_GAP: (rollout.sampler_logprobs - old_logprobs)[mask].abs().max(),
        dg.LOSS_TOTAL: loss_total, dg.OPTIM_GRAD_NORM: grad_norm, dg.OPTIM_LR: lr,
        **plan.metrics, **loss_metrics,
    }  # fmt: skip
    if cfg.logging.probe_every and step % cfg.logging.probe_every == 0:
        with torch.no_grad():
            new_logits = response_logits(model, rollout.input_ids, rollout.attention_mask, T)
        ratio = torch.ones_like(old_logprobs)  # the plan's ratio: on-policy at plan time
        alpha = lr * ratio * advantages * plan.keep * plan.weight
        metrics.update(entropy_probe(
            logits.detach(), new_logits, labels, mask, alpha, temperature=cfg.rollout.temperature
        ))  # fmt: skip
        save_step_data(run_dir, step, batch, plan, kind="dist")
    if cfg.logging.save_batch_every and step % cfg.logging.save_batch_every == 0:
        save_step_data(run_dir, step, batch, plan, kind="batch", spec=cfg.method.spec)
    elapsed = time.perf_counter() - started
    metrics[dg.TIME_STEP_S] = elapsed
    metrics[dg.TIME_STEP_CPU_S] = time.process_time() - started_cpu
    metrics[dg.TIME_TOKENS_PER_S] = float(mask.sum()) / elapsed
    return {k: float(v) for k, v in metrics.items()}


def micro_batch_loss(cfg, method, plan, batch, rows, stats, T):
    """The aggregated loss of one micro-batch (its share of the batch-global token mean)."""
    plan_rows = plan.rows(rows)
    token_loss, metrics = method.token_loss(
        logprobs=stats.logprobs, old_logprobs=batch.old_logprobs[rows],
        advantages=batch.advantages[rows], plan=plan_rows, entropy=stats.entropy,
        ref_logprobs=None if batch.ref_logprobs is None else batch.ref_logprobs[rows],
    )  # fmt: skip
    loss = aggregate(
        token_loss, plan_rows.keep, cfg.method.aggregation, num_tokens=plan.num_tokens,
        num_seqs=plan.num_seqs, max_len=cfg.rollout.max_new_tokens,
    )  # fmt: skip
    return loss, metrics
