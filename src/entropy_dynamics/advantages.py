"""Outcome-advantage estimators for groups of sampled responses, registered by name.

Every estimator maps the rewards of ``B`` responses to one advantage per response:
``estimator(rewards [B], group_size, **hyperparameters) -> [B]``. The ``G = group_size``
responses of one prompt are contiguous: prompt ``g`` owns rows ``g*G .. g*G + G - 1``.
Results are fp32 (fp64 input stays fp64). ``broadcast_to_tokens`` spreads them over the tokens.

    >>> import torch
    >>> from entropy_dynamics import advantages
    >>> advantages.names()
    ('dr_grpo', 'grpo', 'rloo')
    >>> advantages.get("rloo")(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    tensor([ 1.0000, -0.3333, -0.3333, -0.3333])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "broadcast_to_tokens",
    "dr_grpo_advantages",
    "get",
    "grpo_advantages",
    "names",
    "register",
    "rloo_advantages",
]

Estimator = Callable[..., Tensor]
_REGISTRY: dict[str, Estimator] = {}


def register(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator registering ``fn(rewards [B], group_size, **kw) -> [B]`` under ``name``.

    Registering a name twice raises ``ValueError`` (no silent replacement).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an estimator name must be a non-empty string, got {name!r}")

    def decorator(fn: Estimator) -> Estimator:
        if name in _REGISTRY:
            raise ValueError(
                f"advantage estimator {name!r} is already registered (by "
                f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}); pick another name"
            )
        _REGISTRY[name] = fn
        return fn

    return decorator


def get(name: str) -> Estimator:
    """The estimator registered as ``name``; an unknown name raises ``ValueError`` listing all."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown advantage estimator {name!r}; valid names: {', '.join(names())}"
        ) from None


def names() -> tuple[str, ...]:
    """Registered estimator names, sorted."""
    return tuple(sorted(_REGISTRY))


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """Validate and reshape ``rewards [B]`` to ``[B / G, G]`` in float64."""
    if not isinstance(rewards, Tensor) or rewards.dim() != 1:
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a 1-D tensor [B], got {shape}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"the number of rewards ({rewards.numel()}) must be a multiple of group_size "
            f"({group_size}): each prompt needs exactly group_size contiguous responses"
        )
    rewards = rewards.to(torch.float64)
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards must be finite (got NaN or inf)")
    return rewards.reshape(-1, group_size)


def _out_dtype(rewards: Tensor) -> torch.dtype:
    return torch.float64 if rewards.dtype == torch.float64 else torch.float32


@register("grpo")
def grpo_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-6) -> Tensor:
    """GRPO's group z-score (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300).

    ``rewards``: ``[B]`` with ``B = num_prompts * G``, ``G = group_size``. Returns ``[B]``:
    ``A_i = (R_i - mean_g R) / (std_g R + eps)`` over the ``G`` responses of ``i``'s prompt,
    with the UNBIASED std (denominator ``G - 1``) and ``eps`` added to the std (PAPER.md
    section 3, as in the authors' released code). A group of equal rewards gives 0.

    Differs from the released code: there a group of one gets mean 0 and std 1, so
    ``A = R / (1 + eps)``; here a group of one gets ``A = 0`` (mean = R, std = 1): a lone
    response has no baseline to be better or worse than.

    Example: rewards ``[1, 0, 0, 0]``, G = 4: mean 0.25, unbiased std 0.5, so
    ``A = [0.75, -0.25, -0.25, -0.25] / (0.5 + 1e-6) ~ [1.5, -0.5, -0.5, -0.5]``.
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite float > 0 (it keeps 0 / 0 away), got {eps!r}")
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if group_size == 1 or grouped.numel() == 0:  # no spread to measure
        return torch.zeros_like(centred).reshape(-1).to(_out_dtype(rewards))
    std = grouped.std(dim=1, correction=1, keepdim=True)
    return (centred / (std + eps)).reshape(-1).to(_out_dtype(rewards))


@register("dr_grpo")
def dr_grpo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO's mean-centred advantage (Liu et al. 2025, "Understanding R1-Zero-Like
    Training: A Critical Perspective", arXiv 2503.20783).

    ``rewards [B]`` -> ``[B]``: ``A_i = R_i - mean_g R``; no division by the group std, which
    the paper shows biases updates towards too-easy and too-hard prompts. A group of one gets 0.

    Example: rewards ``[1, 0, 0, 0]``, G = 4 -> ``[0.75, -0.25, -0.25, -0.25]``.
    """
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1).to(_out_dtype(rewards))


@register("rloo")
def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to Basics: Revisiting
    REINFORCE-Style Optimization for Learning from Human Feedback in LLMs", arXiv 2402.14740).

    ``rewards [B]`` -> ``[B]``: ``A_i = R_i - mean_{j != i} R_j`` over the other ``G - 1``
    responses of the same prompt, computed as ``(sum_g R - R_i) / (G - 1)`` for the baseline.
    A group of one has no other response and gets 0.

    Example: rewards ``[1, 0, 0, 0]``, G = 4 -> ``[1 - 0, 0 - 1/3, 0 - 1/3, 0 - 1/3]``.
    """
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    if group_size == 1:
        return torch.zeros_like(grouped).reshape(-1).to(_out_dtype(rewards))
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1).to(_out_dtype(rewards))


def broadcast_to_tokens(advantages: Tensor, mask: Tensor) -> Tensor:
    """Each response's advantage on each of its tokens: ``[B]`` and bool ``[B, T]`` -> ``[B, T]``.

    ``out[b, t] = advantages[b]`` where ``mask[b, t]``, else 0 (masked positions carry no
    advantage). fp32 (fp64 stays fp64).
    """
    if not isinstance(advantages, Tensor) or advantages.dim() != 1:
        raise ValueError("advantages must be a 1-D tensor [B]")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError("mask must be a bool tensor [B, T] (True = response token)")
    if mask.shape[0] != advantages.shape[0]:
        raise ValueError(
            f"advantages [B={advantages.shape[0]}] and mask [B={mask.shape[0]}, T] must have "
            "the same B"
        )
    values = advantages.to(_out_dtype(advantages))[:, None]  # (B, 1)
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
