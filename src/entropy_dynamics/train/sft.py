"""SFT warm start for models built from scratch: teach the response format before RL (cached).

A randomly initialised model never produces a parseable answer, so every reward is 0 and GRPO
has no signal. A short supervised phase on the task's reference answers (prompt -> answer + EOS,
loss on the answer tokens only) gives a policy that is right some of the time and still
uncertain, which is where entropy dynamics are visible. The weights are cached under a key made
of everything that determines them, so later runs (and the demo's three methods) load them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from entropy_dynamics.train.config import TrainConfig, to_dict


def reference_completion(task, problem) -> str:
    """The SFT target: `task.reference(problem)`, a completion that earns reward 1."""
    return task.reference(problem)


def sft_cache_dir(cfg: TrainConfig) -> Path:
    """cfg.model.sft_cache, else $ENTROPY_DYNAMICS_CACHE/sft, else ~/.cache/entropy-dynamics/sft."""
    if cfg.model.sft_cache:
        return Path(cfg.model.sft_cache)
    root = os.environ.get("ENTROPY_DYNAMICS_CACHE")
    return Path(root) / "sft" if root else Path.home() / ".cache" / "entropy-dynamics" / "sft"


_NOT_IN_KEY = ("sft_cache", "stats_from")  # model fields that do not change the weights


def cache_key(cfg: TrainConfig) -> str:
    """Hash of what determines the warm-started weights (model, task, SFT settings, seed)."""
    settings = to_dict(cfg)
    data = {
        "model": {k: v for k, v in settings["model"].items() if k not in _NOT_IN_KEY},
        "task": {k: settings["task"][k] for k in ("name", "options", "n_train")},
        "seed": cfg.seed,
        "torch": torch.__version__.split("+")[0],
        "version": 1,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _batch(tokenizer, pairs: list[tuple[str, str]], device):
    """Right-padded [prompt + target + EOS] ids, attention mask and labels (-100 off the target)."""
    rows, labels = [], []
    for prompt, target in pairs:
        p = tokenizer(prompt)["input_ids"]
        t = [*tokenizer(target, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        rows.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels], device=device)
    return ids, mask, lab


def warm_start(
    model,
    tokenizer,
    task,
    problems,
    *,
    steps: int = 300,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> list[float]:
    """Train `steps` AdamW steps of next-token loss on the answers; returns the loss per step."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps={steps}, batch_size={batch_size}: both must be >= 1")
    device = next(model.parameters()).device
    pairs = [(task.format_prompt(p), reference_completion(task, p)) for p in problems]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps)
    losses = []
    model.train()
    for _ in range(steps):
        index = torch.randint(len(pairs), (batch_size,), generator=generator).tolist()
        ids, mask, labels = _batch(tokenizer, [pairs[i] for i in index], device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def cached_warm_start(model, tokenizer, task, problems, *, cfg: TrainConfig) -> Path:
    """Load the warm-started weights from the cache, or train and store them. Returns the file."""
    from safetensors.torch import load_model, save_model

    path = sft_cache_dir(cfg) / f"{cache_key(cfg)}.safetensors"
    if path.exists():
        load_model(model, str(path))
        return path
    with torch.random.fork_rng(devices=[]):
        losses = warm_start(
            model, tokenizer, task, problems, steps=cfg.model.sft_steps, lr=cfg.model.sft_lr,
            batch_size=cfg.model.sft_batch_size, seed=cfg.seed,
        )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_model(model, str(tmp))
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps({"losses": losses[-10:]}))
    return path
