"""Distribution-level entropy dynamics on logits: H, S, N, first-order predictions, exact changes.

Every function works on logits `z` of shape `[..., V]` (any leading dims) for the distribution
`p = softmax(z)`; to model a sampling temperature `T`, pass `z / T`. Results are fp32 for fp16,
bf16 and fp32 inputs, and fp64 for fp64 inputs. Logits of `-inf` (a masked vocabulary entry) are
allowed and give `p_i = 0`, which contributes nothing; NaN or `+inf` raise `ValueError`, as do
NaN or inf step sizes (`eps`, `alpha`).

The one identity everything rests on (PAPER.md section 2): `S_j = p_j (H + log p_j) = -dH/dz_j`,
so for any small logit change `dz`, `dH = -sum_j S_j dz_j + O(|dz|^2)`.

Example:
    >>> z = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    >>> entropy(z)                       # 1.5 * ln 2
    tensor(1.0397)
    >>> predict_single_logit_change(z, torch.tensor(0), 0.1)   # -0.1 * 0.25 * ln 2
    tensor(-0.0173)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._dtypes import compute_dtype

__all__ = [
    "discriminator",
    "entropy",
    "exact_entropy_change",
    "exact_grpo_step_change",
    "exact_single_logit_change",
    "grpo_step_delta",
    "nominal_step",
    "predict_entropy_change",
    "predict_grpo_step_change",
    "predict_single_logit_change",
    "vocab_baseline",
]


def _check_logits(logits: Tensor, name: str = "logits") -> Tensor:
    """Validate `logits [..., V]` and return them in the computation dtype (fp32, or fp64)."""
    if not isinstance(logits, Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape [..., V], got {type(logits).__name__}"
        )
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"{name} must have shape [..., V] with V >= 1, got {tuple(logits.shape)}")
    if torch.isnan(logits).any() or torch.isposinf(logits).any():
        raise ValueError(
            f"{name} contains NaN or +inf; only finite values or -inf (masked) are valid"
        )
    if torch.isneginf(logits).all(dim=-1).any():
        raise ValueError(f"{name} has a row where every entry is -inf: no distribution is defined")
    return logits.to(compute_dtype(logits.dtype))


def _check_token(token: Tensor, logits: Tensor) -> Tensor:
    """Validate `token [...]` against `logits [..., V]` and return it as int64."""
    if not isinstance(token, Tensor) or token.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            "token must be an integer torch.Tensor of shape [...] (the logits' leading dims)"
        )
    if tuple(token.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"token shape {tuple(token.shape)} must equal the logits' leading shape "
            f"{tuple(logits.shape[:-1])}"
        )
    V = logits.shape[-1]
    if token.numel() and (token.min() < 0 or token.max() >= V):
        raise ValueError(
            f"token ids must lie in [0, {V}), got range [{token.min()}, {token.max()}]"
        )
    return token.long()


def _check_step(value, name: str) -> Tensor | float:
    """A step size (``eps`` or ``alpha``): a finite number or a finite real tensor."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise ValueError(f"{name} must be a finite number or tensor, got {value!r}")
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise ValueError(f"{name} must be a real tensor, got dtype {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or inf; expected finite step sizes")
    elif not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _probs_and_logprobs(z: Tensor) -> tuple[Tensor, Tensor]:
    """`p`, `log p` `[..., V]`; `log p` is set to 0 where `p = 0` so that `p * log p = 0` there."""
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    return p, torch.where(p > 0, logp, torch.zeros_like(logp))


def entropy(logits: Tensor) -> Tensor:
    """Entropy `H = -sum_i p_i log p_i` (nats) of `softmax(logits)`.

    Args: logits `[..., V]`. Returns `[...]`.
    """
    p, logp = _probs_and_logprobs(_check_logits(logits))
    return -(p * logp).sum(-1)


def discriminator(logits: Tensor) -> Tensor:
    """Entropy discriminator of every vocabulary token, `S_i = p_i (H + log p_i)` (PAPER.md sec. 2).

    `S_i = -dH/dz_i`; `sign(S_i) = sign(p_i - exp(-H))`. For the updated token `k`, `S_* = S_k`.
    Args: logits `[..., V]`. Returns `[..., V]`.
    """
    p, logp = _probs_and_logprobs(_check_logits(logits))
    H = -(p * logp).sum(-1, keepdim=True)
    return p * (H + logp)


def vocab_baseline(logits: Tensor) -> Tensor:
    """Vocabulary baseline `N = E_{i~p}[S_i] = sum_i p_i^2 (H + log p_i)` (Thm 3.3).

    Args: logits `[..., V]`. Returns `[...]`.
    """
    z = _check_logits(logits)
    p, logp = _probs_and_logprobs(z)
    H = -(p * logp).sum(-1, keepdim=True)
    return (p * p * (H + logp)).sum(-1)


def predict_entropy_change(logits: Tensor, delta_logits: Tensor) -> Tensor:
    """First-order entropy change for any logit change: `dH ~= -sum_j S_j dz_j`.

    Args: logits `[..., V]`; delta_logits `[..., V]` (same shape). Returns `[...]`.
    """
    z = _check_logits(logits)
    dz = _check_logits(delta_logits, "delta_logits")
    if dz.shape != z.shape:
        raise ValueError(
            f"delta_logits shape {tuple(dz.shape)} must equal logits shape {tuple(z.shape)}"
        )
    return -(discriminator(z) * dz.to(z.dtype)).sum(-1)


def predict_single_logit_change(logits: Tensor, token: Tensor, eps: float | Tensor) -> Tensor:
    """Theorem 3.2: raising only logit `k` by `eps` changes entropy by `-eps * S_k` to first order.

    Args: logits `[..., V]`; token `[...]` (ids); eps a float or a tensor broadcastable to `[...]`.
    Returns `[...]`.
    """
    z = _check_logits(logits)
    k = _check_token(token, z)
    eps = _check_step(eps, "eps")
    S_k = discriminator(z).gather(-1, k.unsqueeze(-1)).squeeze(-1)
    return -torch.as_tensor(eps, dtype=z.dtype) * S_k


def predict_grpo_step_change(logits: Tensor, token: Tensor, alpha: float | Tensor) -> Tensor:
    """Theorem 3.3: one GRPO step on token `k` (`dz = alpha (e_k - p)`) gives `dH ~= -alpha (S_k - N)`.

    `alpha = eta * r * A` (learning rate, importance ratio, advantage).
    Args: logits `[..., V]`; token `[...]`; alpha a float or a tensor broadcastable to `[...]`.
    Returns `[...]`.
    """
    z = _check_logits(logits)
    k = _check_token(token, z)
    alpha = _check_step(alpha, "alpha")
    S_k = discriminator(z).gather(-1, k.unsqueeze(-1)).squeeze(-1)
    return -torch.as_tensor(alpha, dtype=z.dtype) * (S_k - vocab_baseline(z))


def nominal_step(
    lr: float,
    advantages: Tensor,
    *,
    ratio: Tensor | None = None,
    keep: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """Theorem 3.3's step size per token: `alpha_t = lr * r_t * A_t * keep_t * w_t`.

    The step a policy-gradient update gives token `t`'s own logit (before the optimiser's
    preconditioning): `lr` the learning rate, `ratio` r `[B, T]` (1 = on-policy, the default),
    `advantages` A `[B, T]`, `keep` a bool `[B, T]` (0 for tokens a method drops; default all)
    and `weight` `[B, T]` (a method's reweighting; default 1). Returns `[B, T]`; pass it as
    `alpha` to `predict_grpo_step_change` or the lens. The trainer's probe, the TRL adapter and
    the lens all take their alpha from here.
    """
    alpha = _check_step(lr, "lr") * advantages
    if ratio is not None:
        alpha = alpha * ratio
    if keep is not None:
        alpha = alpha * keep.to(alpha.dtype)
    if weight is not None:
        alpha = alpha * weight.to(alpha.dtype)
    return alpha


def grpo_step_delta(logits: Tensor, token: Tensor, alpha: float | Tensor) -> Tensor:
    """Logit change of one GRPO step on token `k`: `dz = alpha (e_k - p)` (the gradient of
    `alpha * log p_k` with respect to `z`, Thm 3.3).

    Args: logits `[..., V]`; token `[...]`; alpha a float or a tensor broadcastable to `[...]`.
    Returns `[..., V]`.
    """
    z = _check_logits(logits)
    k = _check_token(token, z)
    alpha = _check_step(alpha, "alpha")
    p = torch.softmax(z, dim=-1)
    e_k = torch.zeros_like(p).scatter_(-1, k.unsqueeze(-1), 1.0)
    return torch.as_tensor(alpha, dtype=z.dtype).unsqueeze(-1) * (e_k - p)


def exact_entropy_change(logits: Tensor, delta_logits: Tensor) -> Tensor:
    """Exact `H(softmax(z + dz)) - H(softmax(z))`. Args: both `[..., V]`. Returns `[...]`.

    Use fp64 inputs when comparing with the first-order predictions at small steps.
    """
    z = _check_logits(logits)
    dz = _check_logits(delta_logits, "delta_logits")
    if dz.shape != z.shape:
        raise ValueError(
            f"delta_logits shape {tuple(dz.shape)} must equal logits shape {tuple(z.shape)}"
        )
    return entropy(z + dz.to(z.dtype)) - entropy(z)


def exact_single_logit_change(logits: Tensor, token: Tensor, eps: float | Tensor) -> Tensor:
    """Exact entropy change when only logit `k` moves by `eps` (the exact side of Thm 3.2).

    Args: logits `[..., V]`; token `[...]`; eps broadcastable to `[...]`. Returns `[...]`.
    """
    z = _check_logits(logits)
    k = _check_token(token, z)
    eps = _check_step(eps, "eps")
    e_k = torch.zeros_like(z).scatter_(-1, k.unsqueeze(-1), 1.0)
    return exact_entropy_change(z, torch.as_tensor(eps, dtype=z.dtype).unsqueeze(-1) * e_k)


def exact_grpo_step_change(logits: Tensor, token: Tensor, alpha: float | Tensor) -> Tensor:
    """Exact entropy change of the GRPO logit step `dz = alpha (e_k - p)` (exact side of Thm 3.3).

    Args: logits `[..., V]`; token `[...]`; alpha broadcastable to `[...]`. Returns `[...]`.
    """
    z = _check_logits(logits)
    return exact_entropy_change(z, grpo_step_delta(z, token, alpha))
