"""Trainer plumbing: build the policy (with its cached SFT warm start), the LR schedule, data order,
and the per-step files the report and the lens read."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from entropy_dynamics import tasks
from entropy_dynamics.train.config import TrainConfig
from entropy_dynamics.train.rollout import prompt_token_ids, use_chat_template

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; 'cuda' without CUDA is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available; valid here: cpu, auto")
    return name


def build_policy(cfg: TrainConfig, *, warm_start: bool = True, task=None):
    """(model, tokenizer) for cfg.model, SFT-warm-started (cached) when cfg.model.sft_steps > 0.

    The warm start trains on `task` (default: `tasks.get(cfg.task.name, **cfg.task.options)`).
    """
    from entropy_dynamics import models

    device = resolve_device(cfg.device)
    dtype = _DTYPES[cfg.model.dtype]
    if device == "cpu" and cfg.model.dtype == "float16":
        raise ValueError(
            f"config field model.dtype='float16' is invalid on device {cfg.device!r} (resolved "
            "to cpu); valid there: float32, bfloat16"
        )
    if cfg.model.name == "tiny":
        tokenizer = models.build_char_tokenizer()
        _check_tiny_options(models.build_tiny_model, cfg.model.tiny)
        model = models.build_tiny_model(tokenizer, **{"seed": cfg.seed, **cfg.model.tiny})
    else:
        if cfg.model.tiny:
            raise ValueError(
                f"model.tiny is set but model.name={cfg.model.name!r}; model.tiny only applies "
                "to model.name='tiny'"
            )
        model, tokenizer = models.load_model(cfg.model.name, dtype=dtype, device=device)
    model = model.to(device=device, dtype=dtype)
    if warm_start and cfg.model.sft_steps > 0:
        from entropy_dynamics.train.sft import cached_warm_start

        if task is None:
            task = get_task(cfg)
        problems = task.problems("train", cfg.task.n_train, seed=cfg.seed)
        cached_warm_start(model, tokenizer, task, problems, cfg=cfg)
    model.eval()
    return model, tokenizer


def _check_tiny_options(build, options: dict) -> None:
    import inspect

    valid = [n for n in inspect.signature(build).parameters if n not in ("tokenizer", "seed")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"config field model.tiny: unknown option(s) {', '.join(map(repr, unknown))}; valid: "
            + ", ".join(valid)
        )


def get_task(cfg: TrainConfig):
    """`tasks.get(cfg.task.name, **cfg.task.options)`, with a wrong option named as a config field."""

    try:
        return tasks.get(cfg.task.name, **cfg.task.options)
    except TypeError as err:  # an option the task's constructor does not take
        raise ValueError(
            f"config field task.options={cfg.task.options!r} is invalid for task "
            f"{cfg.task.name!r}: {err}"
        ) from None


def lr_lambda(cfg: TrainConfig):
    """Multiplier of optim.lr at each step: linear warm-up, then constant / linear / cosine to 0."""
    warmup, total, schedule = cfg.optim.warmup_steps, max(cfg.steps, 1), cfg.optim.schedule

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def problem_order(n: int, cfg: TrainConfig, step: int) -> list[int]:
    """Indices of the train problems used at `step` (0-based): epochs of seeded permutations.

    The data position is step * prompts_per_step, so a resumed run continues exactly.
    """
    per_step = cfg.rollout.prompts_per_step
    out, cache = [], {}
    for position in range(step * per_step, (step + 1) * per_step):
        epoch = position // n
        if epoch not in cache:
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            cache[epoch] = torch.randperm(n, generator=generator).tolist()
        out.append(cache[epoch][position % n])
    return out


def save_step_data(run_dir, step: int, batch, plan, *, kind: str, spec: str = "") -> Path:
    """Write dist/step-N.npz (per-token arrays for the report) or batches/step-N.pt (for the lens).

    The .npz holds 1-D float32 arrays over the batch's valid tokens: discriminator, advantages,
    entropy, baseline (when measured) and keep (the plan's filter decision).
    """
    mask = batch.mask
    if kind == "dist":
        arrays = {
            "discriminator": batch.discriminator[mask],
            "advantages": batch.advantages[mask],
            "entropy": batch.entropy[mask],
            "keep": plan.keep[mask].float(),
        }
        if batch.baseline is not None:
            arrays["baseline"] = batch.baseline[mask]
        path = Path(run_dir) / "dist" / f"step-{step}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path, **{k: v.detach().float().cpu().numpy() for k, v in arrays.items()}
        )
        return path
    if kind == "batch":
        fields = {
            f.name: None
            if getattr(batch, f.name) is None
            else getattr(batch, f.name).detach().cpu()
            for f in dataclasses.fields(batch)
        }
        path = Path(run_dir) / "batches" / f"step-{step}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "step": step,
                "method": spec,
                "batch": fields,
                "plan": {
                    "keep": plan.keep.cpu(),
                    "weight": plan.weight.detach().cpu(),
                    "selected": {k: v.cpu() for k, v in plan.selected.items()},
                },
            },
            path,
        )
        return path
    raise ValueError(f"kind={kind!r}: valid kinds are 'dist', 'batch'")


def save_samples(run_dir, step: int, prompts: list[str], texts: list[str], rewards,
                 *, group_size: int, n_prompts: int) -> Path:  # fmt: skip
    """Append the first `n_prompts` prompts of a step, each with its G completions and rewards,
    to samples.jsonl: one record {"step", "prompt", "completions", "rewards"} per prompt."""
    path = Path(run_dir) / "samples.jsonl"
    rewards = [float(r) for r in rewards]
    with open(path, "a") as f:
        for g, prompt in enumerate(prompts[:n_prompts]):
            rows = slice(g * group_size, (g + 1) * group_size)
            record = {"step": step, "prompt": prompt, "completions": texts[rows],
                      "rewards": rewards[rows]}  # fmt: skip
            f.write(json.dumps(record) + "\n")
    return path


@dataclasses.dataclass
class Run:
    """Everything a training run holds between steps (built by `build_run`)."""

    cfg: TrainConfig
    run_dir: Path
    model: torch.nn.Module
    tokenizer: object
    task: object
    train_problems: list
    eval_problems: list
    method: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    reward: object
    generator: torch.Generator
    reference: torch.nn.Module | None = None  # frozen initial policy, when the method has a KL
    step: int = 0
    nonfinite: int = 0  # consecutive steps skipped for a non-finite loss
    weight_norm_start: float = 0.0  # global weight norm when this process started training
    watch: object | None = None  # train.watch.RunWatch: warnings that need the run's history
    chat_template: bool = False  # prompts go through the tokenizer's chat template


def build_run(cfg: TrainConfig, *, task=None) -> Run:
    """Seed, then build the policy (warm-started), data, method, optimiser and reward wrapper."""
    import copy

    import numpy as np

    from entropy_dynamics import methods
    from entropy_dynamics.train.rewards import SafeReward

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if task is None:
        task = get_task(cfg)
    if hasattr(task, "start"):  # launch verifier workers before the reward time limit applies
        task.start()
    model, tokenizer = build_policy(cfg, task=task)
    method = methods.build(cfg.method.spec)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay, eps=cfg.optim.eps,
    )  # fmt: skip
    generator = torch.Generator(device=next(model.parameters()).device)
    generator.manual_seed(cfg.seed)
    train_problems = task.problems("train", cfg.task.n_train, seed=cfg.seed)
    eval_problems = task.problems("test", cfg.task.n_eval, seed=cfg.seed) if cfg.task.n_eval else []
    chat_template = use_chat_template(tokenizer, cfg.rollout.chat_template)
    check_lengths(cfg, model, tokenizer, task, [*train_problems, *eval_problems],
                  chat_template=chat_template)  # fmt: skip
    return Run(
        cfg=cfg,
        run_dir=Path(cfg.logging.run_dir),
        model=model,
        tokenizer=tokenizer,
        task=task,
        train_problems=train_problems,
        eval_problems=eval_problems,
        method=method,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg)),
        reward=SafeReward(task, timeout_s=cfg.task.reward_timeout_s),
        generator=generator,
        reference=copy.deepcopy(model).requires_grad_(False) if method.needs_ref_logprobs else None,
        weight_norm_start=weight_norm(model),
        chat_template=chat_template,
    )


def weight_norm(model: torch.nn.Module) -> float:
    """The global L2 norm of a model's parameters (inf or nan when any weight is)."""
    return float(torch.nn.utils.get_total_norm([p.detach() for p in model.parameters()]))


def check_lengths(
    cfg: TrainConfig, model, tokenizer, task, problems: list, *, chat_template: bool = False
) -> None:
    """Refuse a rollout.max_new_tokens that, with the longest prompt, exceeds the model's positions."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(limit, int) or not problems:
        return
    longest = max(
        len(prompt_token_ids(tokenizer, task.format_prompt(p), chat_template=chat_template))
        for p in problems
    )
    if longest + cfg.rollout.max_new_tokens > limit:
        raise ValueError(
            f"config field rollout.max_new_tokens={cfg.rollout.max_new_tokens} is invalid; "
            f"valid: at most {max(limit - longest, 0)} for this model (it has {limit} positions "
            f"and the longest prompt takes {longest} tokens)"
        )


def stats_from_hidden(cfg: TrainConfig, model) -> bool:
    """Whether token statistics are streamed from hidden states (model.stats_from)."""
    if cfg.model.stats_from == "auto":
        return model.get_output_embeddings().weight.shape[0] >= HIDDEN_STATS_MIN_VOCAB
    return cfg.model.stats_from == "hidden"


HIDDEN_STATS_MIN_VOCAB = 32_768
"""With "auto", vocabularies this large skip the [B, T, V] logits (SmolLM2: 49 152; the char
model: 91)."""
