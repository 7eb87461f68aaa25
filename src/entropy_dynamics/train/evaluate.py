"""Held-out evaluation: avg@k, unbiased pass@k (Chen et al. 2021), greedy accuracy, pass-rate histogram.

    result = evaluate(model, tokenizer, task, problems, n=8, seed=0)
    # {"k": 8, "num_prompts": 64, "avg@k": {"1": ...}, "pass@k": {...}, "greedy_acc": ...,
    #  "pass_rate_hist": [...], "reward/mean": ...}

The result is the `eval.jsonl` record documented in docs/report.md.
"""

from __future__ import annotations

import math

import torch

from entropy_dynamics.train.progress import Progress
from entropy_dynamics.train.rollout import sample


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct out of n samples (Chen et al. 2021, eq. 1).

    pass@k = 1 - C(n - c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i) to stay
    exact for large n. Example: n=4, c=1, k=2 -> 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5.
    """
    if not 0 <= c <= n:
        raise ValueError(f"c={c}: need 0 <= c <= n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k={k}: need 1 <= k <= n={n} (draw at least k samples per problem)")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def avg_at_k(n: int, c: int) -> float:
    """avg@k: the mean accuracy of the samples, c / n (the same for every k <= n)."""
    if not 0 <= c <= n or n < 1:
        raise ValueError(f"n={n}, c={c}: need n >= 1 and 0 <= c <= n")
    return c / n


def ks_up_to(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) < n]
    return [*ks, n]


def summarise(correct_counts: list[int], n: int) -> dict:
    """avg@k, pass@k (for k in ks_up_to(n)) and the pass-rate histogram from per-problem counts."""
    if not correct_counts:
        raise ValueError("correct_counts: need at least one problem")
    ks = ks_up_to(n)
    m = len(correct_counts)
    hist = [0] * (n + 1)
    for c in correct_counts:
        hist[c] += 1
    return {
        "k": n,
        "num_prompts": m,
        "avg@k": {str(k): sum(avg_at_k(n, c) for c in correct_counts) / m for k in ks},
        "pass@k": {str(k): sum(pass_at_k(n, c, k) for c in correct_counts) / m for k in ks},
        "pass_rate_hist": hist,
    }


def _rewards(task, problems, texts, per_problem: int, reward_fn) -> list[float]:
    score = reward_fn or task.reward
    return [float(score(problems[i // per_problem], text)) for i, text in enumerate(texts)]


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    task,
    problems: list,
    *,
    n: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 16,
    seed: int = 0,
    batch_prompts: int = 32,
    correct_threshold: float = 1.0,
    reward_fn=None,
    progress: bool = False,
    chat_template: bool = False,
) -> dict:
    """Sample n responses per held-out problem (and one greedy) and summarise.

    A sample is correct when its reward >= correct_threshold. `reward_fn(problem, completion)`
    defaults to `task.reward` (the trainer passes its safe, timed wrapper). `progress`: show the
    prompts done (train.progress.Progress, on stderr). `chat_template`: prompts as user turns of
    the tokenizer's chat template (`rollout.use_chat_template`), as in training.
    """
    if n < 1:
        raise ValueError(f"n={n}: need at least one sample per problem")
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    counts, greedy_correct, rewards = [], 0, []
    shown = Progress(len(problems), enabled=progress, desc=f"eval k={n}", unit="prompts")
    for start in range(0, len(problems), batch_prompts):
        chunk = problems[start : start + batch_prompts]
        prompts = [task.format_prompt(p) for p in chunk]
        sampled = sample(
            model, tokenizer, prompts, group_size=n, temperature=temperature, top_p=top_p,
            max_new_tokens=max_new_tokens, generator=generator, chat_template=chat_template,
        )  # fmt: skip
        r = _rewards(task, chunk, sampled.texts, n, reward_fn)
        rewards += r
        counts += [
            sum(x >= correct_threshold for x in r[i * n : (i + 1) * n]) for i in range(len(chunk))
        ]
        greedy = sample(model, tokenizer, prompts, temperature=0.0, max_new_tokens=max_new_tokens,
                        chat_template=chat_template)  # fmt: skip
        greedy_correct += sum(
            x >= correct_threshold for x in _rewards(task, chunk, greedy.texts, 1, reward_fn)
        )
        shown.update(n=len(chunk))
    shown.close()
    result = summarise(counts, n)
    result["greedy_acc"] = greedy_correct / len(problems)
    result["reward/mean"] = sum(rewards) / len(rewards)
    return result
