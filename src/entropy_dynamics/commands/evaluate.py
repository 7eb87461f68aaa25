"""`entropy-dynamics eval RUN_DIR`: evaluate a run's checkpoint on its task's held-out split."""

from __future__ import annotations

from pathlib import Path

from entropy_dynamics.train import checkpoint as ckpt
from entropy_dynamics.train.config import load_config
from entropy_dynamics.train.logging import put_eval_record, warn


def evaluate_run(
    run_dir: Path,
    *,
    k: int | None = None,
    n_eval: int | None = None,
    checkpoint: str | None = None,
    temperature: float | None = None,
    write: bool = True,
    progress: bool = True,
) -> dict:
    """Load RUN_DIR/config.yaml and a checkpoint (default: the latest), evaluate, and return the
    eval.jsonl record, written to RUN_DIR/eval.jsonl when `write`: it replaces the record of the
    same (step, k, checkpoint), so re-running an evaluation never duplicates it. `progress`:
    show the prompts done on stderr."""
    from entropy_dynamics.train.evaluate import evaluate
    from entropy_dynamics.train.rewards import SafeReward
    from entropy_dynamics.train.setup import build_policy, get_task

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise ValueError(f"run_dir {run_dir}: no config.yaml (is it a training run directory?)")
    cfg = load_config(run_dir / "config.yaml")
    path = Path(checkpoint) if checkpoint else ckpt.latest_checkpoint(run_dir, warn=warn)
    if path is None:
        raise ValueError(f"run_dir {run_dir}: no intact checkpoint found under checkpoints/")
    model, tokenizer = build_policy(cfg, warm_start=False)
    state = ckpt.load_checkpoint(path, model=model, restore_rng=False)  # verifies the digest
    task = get_task(cfg)
    problems = task.problems("test", n_eval or cfg.task.n_eval, seed=cfg.seed)
    if not problems:
        raise ValueError("n_eval: the held-out split is empty; pass --n with a positive count")
    result = evaluate(
        model, tokenizer, task, problems, n=k or cfg.logging.eval_k or 8,
        temperature=cfg.rollout.temperature if temperature is None else temperature,
        top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
        seed=cfg.seed + 7919 * state["step"],
        reward_fn=SafeReward(task, timeout_s=cfg.task.reward_timeout_s), progress=progress,
    )  # fmt: skip
    record = {"step": state["step"], "checkpoint": path.name, **result}
    record["temperature"] = cfg.rollout.temperature if temperature is None else temperature
    if write:
        put_eval_record(run_dir / "eval.jsonl", record)
    return record
