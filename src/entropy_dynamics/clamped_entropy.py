"""Clamped entropy (AEnt): the entropy of the policy renormalised after its lowest logits are cut.

At one position with logits ``z`` (``V`` entries, divided by the temperature), let
``k = int(V * clamp_p)`` and ``K`` the ``V - k`` largest logits. The clamped policy is
``q_i = exp(z_i) / sum_{j in K} exp(z_j)`` for ``i in K`` (0 elsewhere) and the clamped entropy
``H_c = -sum_{i in K} q_i log q_i = logsumexp_K(z) - sum_{i in K} q_i z_i``
(Shen 2025, "On Entropy Control in LLM-RL Algorithms", arXiv 2509.03493, AEnt; the authors' code,
antgroup AEnt ``clamped_softmax_entropy``, masks the ``k`` smallest logits with ``-inf``).
``H_c`` depends only on the values kept, so ties at the cut do not change it.

Streamed over row chunks: at most one ``[chunk, V]`` fp32 copy at a time; with gradient, each
chunk is recomputed in the backward pass (``torch.utils.checkpoint``), so nothing of size
``[B, T, V]`` is held for it. Results are fp32 (fp64 inputs stay fp64); ignored positions give 0
and no gradient. The gradient flows through the kept logits (the cut itself is a selection).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ._dtypes import compute_dtype

__all__ = ["clamped_entropy", "clamped_entropy_from_hidden"]

_CHUNK_ELEMENTS = 1 << 24  # fp32 elements per chunk (64 MiB) when chunk_size is not given


def _check(clamp_p: float, temperature: float) -> None:
    if isinstance(clamp_p, bool) or not isinstance(clamp_p, int | float) or not 0 <= clamp_p < 1:
        raise ValueError(f"clamped_entropy: clamp_p must lie in [0, 1), got {clamp_p!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or temperature <= 0
    ):
        raise ValueError(f"clamped_entropy: temperature must be > 0, got {temperature!r}")


def _rows_entropy(logits: Tensor, keep: int) -> Tensor:
    """``[n, V]`` logits (already / temperature, fp32 or fp64) -> ``[n]`` clamped entropy."""
    top = torch.topk(logits, keep, dim=-1, largest=True, sorted=False).values  # (n, V - k)
    lse = torch.logsumexp(top, dim=-1, keepdim=True)
    q = torch.exp(top - lse)
    return (lse.squeeze(-1) - (q * top).sum(-1)).clamp(min=0.0)


def _stream(n_rows: int, vocab: int, chunk_logits, *, clamp_p, dtype, device, chunk_size, grad):
    keep = vocab - int(vocab * clamp_p)
    rows = chunk_size or max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    out = []
    for start in range(0, n_rows, rows):
        index = slice(start, min(start + rows, n_rows))

        def piece(index=index):
            return _rows_entropy(chunk_logits(index), keep)

        out.append(checkpoint(piece, use_reentrant=False) if grad else piece())
    if not out:
        return torch.zeros(0, dtype=dtype, device=device)
    return torch.cat(out)


def clamped_entropy(
    logits: Tensor,
    *,
    clamp_p: float = 0.3,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Clamped entropy ``H_c`` per position, ``[B, T]`` from logits ``[B, T, V]`` (module doc).

    ``clamp_p``: the share of the vocabulary cut (the ``int(V * clamp_p)`` lowest logits);
    0 gives the ordinary entropy. ``mask``: bool ``[B, T]``, positions to compute (others 0).
    ``chunk_size``: rows of valid positions per chunk. Example: logits ``[0, 0, -5]`` (V = 3)
    with ``clamp_p = 0.34`` cut the ``-5`` and give ``log 2``.
    """
    _check(clamp_p, temperature)
    if logits.dim() != 3:
        raise ValueError(f"clamped_entropy: logits must be [B, T, V], got {tuple(logits.shape)}")
    B, T, V = logits.shape
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=logits.device)
    if mask.shape != (B, T) or mask.dtype != torch.bool:
        raise ValueError(f"clamped_entropy: mask must be a bool tensor [B, T] = [{B}, {T}]")
    dtype = compute_dtype(logits.dtype)
    positions = mask.reshape(-1).nonzero().squeeze(-1)  # (n,)
    flat = logits.reshape(B * T, V)

    def chunk_logits(index):
        return flat[positions[index]].to(dtype) / temperature  # (rows, V)

    values = _stream(positions.numel(), V, chunk_logits, clamp_p=clamp_p, dtype=dtype,
                     device=logits.device, chunk_size=chunk_size,
                     grad=torch.is_grad_enabled() and logits.requires_grad)  # fmt: skip
    result = torch.zeros(B * T, dtype=values.dtype, device=logits.device)
    return result.index_put((positions,), values).reshape(B, T)


def clamped_entropy_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    *,
    bias: Tensor | None = None,
    clamp_p: float = 0.3,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``clamped_entropy`` from final hidden states ``[B, T, D]`` and the output layer
    ``weight [V, D]`` (``bias [V]``), computing the logits one row chunk at a time."""
    _check(clamp_p, temperature)
    if hidden.dim() != 3 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"clamped_entropy_from_hidden: hidden [B, T, D] and weight [V, D] must share D, got "
            f"{tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    B, T, D = hidden.shape
    V = weight.shape[0]
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=hidden.device)
    if mask.shape != (B, T) or mask.dtype != torch.bool:
        raise ValueError(f"clamped_entropy_from_hidden: mask must be a bool tensor [{B}, {T}]")
    dtype = compute_dtype(hidden.dtype)
    positions = mask.reshape(-1).nonzero().squeeze(-1)
    flat = hidden.reshape(B * T, D)

    def chunk_logits(index):
        logits = torch.nn.functional.linear(flat[positions[index]], weight, bias)
        return logits.to(dtype) / temperature

    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    values = _stream(positions.numel(), V, chunk_logits, clamp_p=clamp_p, dtype=dtype,
                     device=hidden.device, chunk_size=chunk_size, grad=needs_grad)  # fmt: skip
    result = torch.zeros(B * T, dtype=values.dtype, device=hidden.device)
    return result.index_put((positions,), values).reshape(B, T)
