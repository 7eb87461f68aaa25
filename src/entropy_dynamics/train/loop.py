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
   policy is kept as the reference, reset to the current policy every N steps (and the
   optimiser state with it) when the part says so (`kl_ref(reset_every=N)`, ProRL).
4. Token statistics (H, S_*, N) come from `token_stats` under the policy before the update.
5. A reward that raises or times out scores 0 and is counted (`reward/errors`).
6. A non-finite loss skips the step (warning) and stops the run after `max_nonfinite` in a row;
   weights that turn non-finite or grow 100-fold stop it at once (nothing of them is saved).
7. The entropy probe (train/probe.py) re-measures entropy after the update at the same positions.
8. Dropout is off throughout (the policy stays in eval mode): rollouts and updates see one policy.
9. Token statistics stream from hidden states for large vocabularies (`model.stats_from`), so
   the [B, T, V] logits exist only on probe steps.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from entropy_dynamics import diagnostics as dg
from entropy_dynamics.train import checkpoint as ckpt
from entropy_dynamics.train.config import TrainConfig, config_warnings, save_config
from entropy_dynamics.train.evaluate import evaluate
from entropy_dynamics.train.logging import WARNING_PREFIX, RunLogger, truncate_jsonl, warn
from entropy_dynamics.train.progress import Progress, run_summary
from entropy_dynamics.train.rundir import claim_run_dir
from entropy_dynamics.train.setup import (  # noqa: F401 (build_policy: tests rebuild a policy)
    Run,
    build_policy,
    build_run,
    problem_order,
    weight_norm,
)
from entropy_dynamics.train.step import (  # noqa: F401 (WeightsDivergedError: re-exported)
    NonFiniteLossError,
    WeightsDivergedError,
    train_step,
)
from entropy_dynamics.train.watch import RunWatch


class TrainInterrupted(KeyboardInterrupt):
    """Raised by `train` after Ctrl-C or SIGTERM, once the checkpoint of the last finished step
    is saved: a caller that trains several runs (the demo, `reproduce`) stops instead of taking
    the unfinished run for a finished one. `entropy-dynamics train` catches it and exits 0."""

    def __init__(self, run_dir: Path, step: int, by: str):
        super().__init__(f"{by} at step {step}; continue with --resume")
        self.run_dir, self.step = run_dir, step


_STOP_SIGNALS = ("SIGINT", "SIGTERM")  # each checkpoints and returns, like Ctrl-C


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    task=None,
    overwrite: bool = False,
    allow_config_change: bool = False,
) -> Path:
    """Run `cfg.steps` RL steps; returns the run directory. Ctrl-C or SIGTERM lets the step in
    progress finish, saves a checkpoint, then raises `TrainInterrupted` (a KeyboardInterrupt).

    `task` (an object with problems / format_prompt / reward) replaces `tasks.get(cfg.task.name)`,
    for tasks that are not registered. A non-empty run directory is refused unless `resume`
    (continue it; a changed method, seed, lr, group size ... is refused unless
    `allow_config_change`) or `overwrite` (empty it first); see `train.rundir`.
    """
    for message in config_warnings(cfg):
        warn(message)
    with claim_run_dir(cfg, resume=resume, overwrite=overwrite,
                       allow_config_change=allow_config_change):  # fmt: skip
        return _train(cfg, resume=resume, task=task)


def _train(cfg: TrainConfig, *, resume: bool, task) -> Path:
    run = build_run(cfg, task=task)
    _restore_or_reset(run, resume=resume)
    save_config(cfg, run.run_dir / "config.yaml")
    logger = RunLogger(run.run_dir, tensorboard=cfg.logging.tensorboard)
    interrupted = {"flag": False, "by": ""}
    previous_handlers = _catch_stop_signals(interrupted)
    progress = Progress(cfg.steps, initial=run.step, enabled=cfg.logging.progress, desc="train")
    run.watch = RunWatch(run.method, no_drop_steps=cfg.logging.warn_no_drop_steps,
                         warn=lambda message: progress.write(WARNING_PREFIX + message))  # fmt: skip
    every = lambda n: bool(n) and run.step % n == 0  # noqa: E731
    first_step, started = run.step, time.monotonic()
    shown, evaluation = {}, None  # the first and last step's shown metrics, the last evaluation
    try:
        if run.step == 0 and cfg.logging.eval_every:
            evaluation = _evaluate(run, logger)
        while run.step < cfg.steps and not interrupted["flag"]:
            problems = [
                run.train_problems[i] for i in problem_order(len(run.train_problems), cfg, run.step)
            ]
            metrics = train_step(run, problems)
            run.step += 1
            if metrics is None:
                metrics = _skip_nonfinite(run)
            else:
                run.nonfinite = 0
            logger.log_step(run.step, metrics)
            shown["last"] = {k: v for k, v in metrics.items() if k in _SHOWN}
            shown.setdefault("first", shown["last"])
            progress.update(shown["last"])
            if every(cfg.logging.eval_every):
                evaluation = _evaluate(run, logger)
            if every(cfg.logging.checkpoint_every):
                _save(run)
        if run.step == first_step:  # a finished run resumed, or Ctrl-C before the first step
            if interrupted["flag"]:
                warn(f"{interrupted['by']} before step {run.step + 1}; nothing new to save")
                raise TrainInterrupted(run.run_dir, run.step, interrupted["by"])
            return run.run_dir
        if interrupted["flag"]:
            warn(
                f"{interrupted['by']} at step {run.step}; checkpoint saved, continue with --resume"
            )
        elif not every(cfg.logging.eval_every):
            evaluation = _evaluate(run, logger)  # every run ends with an evaluation
        _save(run)
        progress.close()
        if cfg.logging.progress:
            summary = run_summary(run.run_dir, steps=(first_step, run.step),
                                  elapsed_s=time.monotonic() - started, first=shown["first"],
                                  last=shown["last"], evaluation=evaluation,
                                  notes=run.watch.summary())  # fmt: skip
            progress.write("\n".join(summary))
        if interrupted["flag"]:
            raise TrainInterrupted(run.run_dir, run.step, interrupted["by"])
    finally:
        for name, handler in previous_handlers.items():
            signal.signal(getattr(signal, name), handler)
        progress.close()
        logger.close()
        if hasattr(run.task, "close"):
            run.task.close()
    return run.run_dir


_SHOWN = (dg.REWARD_MEAN, dg.ENTROPY_MEAN, dg.LOSS_TOTAL)


def _catch_stop_signals(interrupted: dict) -> dict:
    """SIGINT and SIGTERM set the flag (the loop checkpoints and returns); returns the old handlers.

    Signal handlers can only be set from the main thread; elsewhere the defaults stay.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum, frame):
        interrupted.update(flag=True, by=f"interrupted ({signal.Signals(signum).name})")

    previous = {}
    for name in _STOP_SIGNALS:
        if hasattr(signal, name):
            previous[name] = signal.signal(getattr(signal, name), stop)
    return previous


def _restore_or_reset(run: Run, *, resume: bool) -> None:
    """Resume from the newest intact checkpoint (JSONL cut back to its step), or start afresh.

    A damaged checkpoint is renamed checkpoints/damaged-step-N (kept for inspection, ignored
    from then on) with a warning, and the next older one is tried.
    """
    ckpt.remove_stale_temporaries(run.run_dir)
    latest, damaged = None, []
    for path in reversed(ckpt.list_checkpoints(run.run_dir) if resume else []):
        try:
            state = ckpt.load_checkpoint(path, model=run.model, optimizer=run.optimizer,
                                         scheduler=run.scheduler, generator=run.generator,
                                         method=run.method, reference=run.reference)  # fmt: skip
        except ckpt.CheckpointError as err:
            damaged.append(path)
            aside = path.with_name(f"damaged-{path.name}")
            path.rename(aside)
            warn(f"skipping damaged checkpoint ({err}); moved it to {aside}")
            continue
        latest = path
        break
    if latest is not None:
        if state["step"] > run.cfg.steps:
            raise ValueError(
                f"--resume: {latest} is at step {state['step']}, past steps={run.cfg.steps}; "
                f"pass steps={state['step']} or more to continue"
            )
        if damaged:
            warn(f"resuming from {latest.name}, the newest intact checkpoint")
        run.step, run.nonfinite = state["step"], state.get("nonfinite", 0)
        run.weight_norm_start = weight_norm(run.model)
    elif damaged:
        raise ValueError(
            f"--resume: no intact checkpoint in {run.run_dir}/checkpoints (all damaged); start "
            "afresh with --overwrite"
        )
    elif resume:
        warn(f"--resume: no checkpoint in {run.run_dir}/checkpoints; starting from step 0")
    for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
        if latest is not None:
            truncate_jsonl(run.run_dir / name, run.step)
        else:
            (run.run_dir / name).unlink(missing_ok=True)


def _save(run: Run) -> None:
    resets = run.reference is not None and run.method.reference_reset_every > 0
    ckpt.save_checkpoint(
        run.run_dir, step=run.step, model=run.model, optimizer=run.optimizer,
        scheduler=run.scheduler, state={"nonfinite": run.nonfinite}, generator=run.generator,
        method=run.method, reference=run.reference if resets else None,
    )  # fmt: skip


def _evaluate(run: Run, logger: RunLogger) -> dict | None:
    """Held-out avg@k / pass@k / greedy accuracy, with its own RNG (training RNG untouched)."""
    cfg = run.cfg
    if not (cfg.logging.eval_k and run.eval_problems):
        return None
    result = evaluate(
        run.model, run.tokenizer, run.task, run.eval_problems, n=cfg.logging.eval_k,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
        max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed + 7919 * run.step,
        reward_fn=run.reward, progress=cfg.logging.progress, chat_template=run.chat_template,
    )  # fmt: skip
    logger.log_eval(run.step, result)
    return {"step": run.step, **result}


def _skip_nonfinite(run: Run) -> dict:
    run.nonfinite += 1
    warn(f"step {run.step}: non-finite loss, update skipped ({run.nonfinite} in a row)")
    if run.nonfinite >= run.cfg.optim.max_nonfinite:
        _save(run)
        raise NonFiniteLossError(
            f"{run.nonfinite} consecutive non-finite losses (optim.max_nonfinite="
            f"{run.cfg.optim.max_nonfinite}); lower optim.lr or check the task's rewards"
        )
    return {dg.LOSS_NONFINITE: 1.0}
