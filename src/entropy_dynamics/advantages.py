"""Outcome-advantage estimators for groups of sampled responses, registered by name.

Every estimator maps the rewards of ``B`` responses to one advantage per response:
``estimator(rewards [B], group_size, **hyperparameters) -> [B]``. The ``G = group_size``
responses of one prompt are contiguous: prompt ``g`` owns rows ``g*G .. g*G + G - 1``.
Results are fp32 (fp64 input stays fp64). ``broadcast_to_tokens`` spreads them over the tokens.

    >>> import torch
    >>> from entropy_dynamics import advantages
    >>> advantages.names()
    ('dr_grpo', 'grpo', 'qae', 'rloo', 'w_reinforce')
    >>> advantages.get("rloo")(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    tensor([ 1.0000, -0.3333, -0.3333, -0.3333])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._dtypes import compute_dtype

__all__ = [
    "broadcast_to_tokens",
    "dr_grpo_advantages",
    "get",
    "grpo_advantages",
    "names",
    "qae_advantages",
    "register",
    "rloo_advantages",
    "w_reinforce_advantages",
]

GROUP_OF_ONE = ("zero", "reward")
QUANTILE_METHODS = ("linear", "inverted_cdf")

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
    return compute_dtype(rewards.dtype)


def _check_group_of_one(group_of_one) -> str:
    if group_of_one not in GROUP_OF_ONE:
        raise ValueError(
            f"group_of_one must be one of {list(GROUP_OF_ONE)} ('zero': a lone response has no "
            f"baseline; 'reward': verl's mean 0 / std 1), got {group_of_one!r}"
        )
    return group_of_one


@register("grpo")
def grpo_advantages(
    rewards: Tensor, group_size: int, *, eps: float = 1e-6, group_of_one: str = "zero"
) -> Tensor:
    """GRPO's group z-score (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300).

    ``rewards``: ``[B]`` with ``B = num_prompts * G``, ``G = group_size``. Returns ``[B]``:
    ``A_i = (R_i - mean_g R) / (std_g R + eps)`` over the ``G`` responses of ``i``'s prompt,
    with the UNBIASED std (denominator ``G - 1``) and ``eps`` added to the std (PAPER.md
    section 3, as in the authors' released code). A group of equal rewards gives 0.

    Differs from the released code (and verl): there a group of one gets mean 0 and std 1, so
    ``A = R / (1 + eps)``; here a group of one gets ``A = 0``: a lone response has no baseline
    to be better or worse than. ``group_of_one="reward"`` gives the released ``R / (1 + eps)``.
    TRL puts ``eps = 1e-4`` (``eps=1e-4`` reproduces it).

    Example: rewards ``[1, 0, 0, 0]``, G = 4: mean 0.25, unbiased std 0.5, so
    ``A = [0.75, -0.25, -0.25, -0.25] / (0.5 + 1e-6) ~ [1.5, -0.5, -0.5, -0.5]``.
    """
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite float > 0 (it keeps 0 / 0 away), got {eps!r}")
    _check_group_of_one(group_of_one)
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if group_size == 1 and group_of_one == "reward":
        return (grouped / (1.0 + eps)).reshape(-1).to(_out_dtype(rewards))
    if group_size == 1 or grouped.numel() == 0:  # no spread to measure
        return torch.zeros_like(centred).reshape(-1).to(_out_dtype(rewards))
    std = grouped.std(dim=1, correction=1, keepdim=True)
    return (centred / (std + eps)).reshape(-1).to(_out_dtype(rewards))


@register("dr_grpo")
def dr_grpo_advantages(rewards: Tensor, group_size: int, *, group_of_one: str = "zero") -> Tensor:
    """Dr. GRPO's mean-centred advantage (Liu et al. 2025, "Understanding R1-Zero-Like
    Training: A Critical Perspective", arXiv 2503.20783).

    ``rewards [B]`` -> ``[B]``: ``A_i = R_i - mean_g R``; no division by the group std, which
    the paper shows biases updates towards too-easy and too-hard prompts. A group of one gets 0;
    ``group_of_one="reward"`` gives verl's ``R`` (its GRPO without std uses mean 0 there).

    Example: rewards ``[1, 0, 0, 0]``, G = 4 -> ``[0.75, -0.25, -0.25, -0.25]``.
    """
    _check_group_of_one(group_of_one)
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    if group_size == 1 and group_of_one == "reward":
        return grouped.reshape(-1).to(_out_dtype(rewards))
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1).to(_out_dtype(rewards))


@register("rloo")
def rloo_advantages(rewards: Tensor, group_size: int, *, group_of_one: str = "zero") -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to Basics: Revisiting
    REINFORCE-Style Optimization for Learning from Human Feedback in LLMs", arXiv 2402.14740).

    ``rewards [B]`` -> ``[B]``: ``A_i = R_i - mean_{j != i} R_j`` over the other ``G - 1``
    responses of the same prompt, computed as ``(sum_g R - R_i) / (G - 1)`` for the baseline.
    A group of one has no other response and gets 0; ``group_of_one="reward"`` gives verl's
    ``R`` (no baseline there).

    Example: rewards ``[1, 0, 0, 0]``, G = 4 -> ``[1 - 0, 0 - 1/3, 0 - 1/3, 0 - 1/3]``.
    """
    _check_group_of_one(group_of_one)
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    if group_size == 1:
        keep = group_of_one == "reward"
        return (grouped if keep else torch.zeros_like(grouped)).reshape(-1).to(_out_dtype(rewards))
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1).to(_out_dtype(rewards))


def _group_quantile(grouped: Tensor, k: float, method: str) -> Tensor:
    """Each row's ``k``-quantile, ``[B / G, 1]`` (float64 ``grouped``, ``[B / G, G]``).

    ``linear``: ``torch.quantile``'s default, ``x_(j) + f (x_(j+1) - x_(j))`` at the sorted
    position ``(G - 1) k = j + f``; ``inverted_cdf``: the smallest ``x`` whose empirical CDF
    reaches ``k``, the sorted value at 1-based position ``ceil(k G)``.
    """
    if method == "linear":
        return torch.quantile(grouped, k, dim=1, keepdim=True)
    ordered = grouped.sort(dim=1).values
    position = max(math.ceil(k * grouped.shape[1]) - 1, 0)  # 0-based
    return ordered[:, position : position + 1]


@register("qae")
def qae_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    k: float = 0.4,
    quantile: str = "linear",
    norm_by_std: bool = True,
    eps: float = 1e-6,
    group_of_one: str = "zero",
) -> Tensor:
    """Quantile Advantage Estimation (Wu et al. 2025, "Quantile Advantage Estimation for
    Entropy-Safe Reasoning", arXiv 2509.22611): GRPO with the group mean replaced by the group's
    ``k``-quantile.

    ``rewards [B]`` -> ``[B]``: ``A_i = (R_i - Q_k(R_g)) / (std_g R + eps)`` over the ``G``
    responses of ``i``'s prompt (unbiased std, as ``grpo``); ``norm_by_std=False`` gives
    ``R_i - Q_k(R_g)``. ``quantile``: ``"linear"`` is ``torch.quantile``'s default, which the
    authors' code calls (their verl patch sets the GRPO baseline to
    ``torch.quantile(scores, quantile_k)`` and changes nothing else); ``"inverted_cdf"`` is the
    paper's two-regime gate exactly: for 0/1 rewards with success rate ``p`` the baseline is 0
    when ``p <= 1 - k`` (only successes get an advantage) and 1 otherwise (only failures do).
    ``k`` in (0, 1); 0.4 is the value of the authors' run scripts. A group of one gets 0
    (``group_of_one="reward"``: verl's ``R / (1 + eps)``, as ``grpo``).

    Example: rewards ``[1, 0, 0, 0, 0]``, G = 5, k = 0.4, linear: sorted position 1.6, baseline
    0, unbiased std ``sqrt(0.2)``, so ``A = [1, 0, 0, 0, 0] / (0.4472 + 1e-6)``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0.0 < k < 1.0:
        raise ValueError(f"qae: k must be a number in (0, 1) (for the mean, use 'grpo'), got {k!r}")
    if quantile not in QUANTILE_METHODS:
        raise ValueError(f"qae: quantile must be one of {list(QUANTILE_METHODS)}, got {quantile!r}")
    if not isinstance(norm_by_std, bool):
        raise ValueError(f"qae: norm_by_std must be True or False, got {norm_by_std!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"qae: eps must be a finite float > 0, got {eps!r}")
    _check_group_of_one(group_of_one)
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    if group_size == 1 and group_of_one == "reward":
        return (grouped / (1.0 + eps)).reshape(-1).to(_out_dtype(rewards))
    if group_size == 1 or grouped.numel() == 0:  # no group to take a quantile of
        return torch.zeros_like(grouped).reshape(-1).to(_out_dtype(rewards))
    centred = grouped - _group_quantile(grouped, float(k), quantile)
    if norm_by_std:
        centred = centred / (grouped.std(dim=1, correction=1, keepdim=True) + eps)
    return centred.reshape(-1).to(_out_dtype(rewards))


@register("w_reinforce")
def w_reinforce_advantages(
    rewards: Tensor, group_size: int, *, pos_weight: float = 0.1, neg_weight: float = 1.0
) -> Tensor:
    """W-REINFORCE's advantage (Zhu et al. 2025, "The Surprising Effectiveness of Negative
    Reinforcement in LLM Reasoning", arXiv 2506.01347), as the authors' code computes it.

    ``rewards [B]`` of 0 (wrong) or 1 (correct) -> ``[B]``: ``A = +pos_weight`` (lambda, 0.1)
    for a correct and ``A = -neg_weight`` (1) for a wrong response. There is no group baseline:
    an all-correct group gets ``+pos_weight`` each, not 0. ``group_size`` only checks the layout.
    Rewards other than 0 and 1 are refused (the authors' code leaves them unweighted, which is
    not W-REINFORCE); use ``grpo`` for graded rewards.

    Example: rewards ``[1, 0, 1, 1]``, G = 2 -> ``[0.1, -1.0, 0.1, 0.1]``.
    """
    for name, value in (("pos_weight", pos_weight), ("neg_weight", neg_weight)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value >= 0)
        ):
            raise ValueError(f"w_reinforce: {name} must be a finite number >= 0, got {value!r}")
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    binary = (grouped == 0) | (grouped == 1)
    if not bool(binary.all()):
        bad = grouped[~binary].reshape(-1)[:3].tolist()
        raise ValueError(
            f"w_reinforce: rewards must be 0 (wrong) or 1 (correct), got {bad}; W-REINFORCE is "
            "defined for verifiable 0/1 rewards (use 'grpo' for graded ones)"
        )
    advantage = torch.where(grouped == 1, float(pos_weight), -float(neg_weight))
    return advantage.reshape(-1).to(_out_dtype(rewards))


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
