"""Autograd functions behind `token_stats` and `token_stats_from_hidden`: streamed forward and backward.

Both work on the valid rows only, packed in row-major order (`n` of them). The forward pass
keeps per-row scalars (row max, log-sum, entropy); the backward pass recomputes `p` chunk by
chunk (and, from hidden states, the chunk's logits) instead of storing anything `[n, V]`.
`backend` (`_token_stats_backends`) streams the logits; `split` (None, or a `VocabSplit` from
`_token_stats_vocab_parallel`) combines the row sums of a vocabulary split across ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _huge_pages
from ._token_stats_backends import block_logits
from ._token_stats_kernels import RowSums


def _finish(sums: RowSums, label_logits: Tensor, inv_tau: float) -> tuple[Tensor, ...]:
    """`(log_s, mean_x, logprobs, entropy, discriminator, baseline)` of the packed rows, `[n]`."""
    log_s, mean_x, entropy, baseline = sums.finish()
    label_x = (label_logits - sums.m) * inv_tau
    logprobs = label_x - log_s
    discriminator = torch.exp(logprobs) * (label_x - mean_x)  # p_k (H + log p_k)
    return log_s, mean_x, logprobs, entropy, discriminator, baseline


def _check_finite(valid: Tensor, *packed: Tensor) -> None:
    """A NaN or inf anywhere in a valid row's logits makes its sums non-finite: raise then."""
    finite = torch.stack([torch.isfinite(t) for t in packed]).all(dim=0)
    if bool(finite.all()):
        return
    bad_packed = int((~finite).nonzero()[0])
    bad_flat = int(valid.nonzero()[bad_packed])
    raise ValueError(
        f"logits: {int((~finite).sum())} counted position(s) have non-finite logits (NaN or "
        f"+-inf), first at flattened position {bad_flat}; logits must be finite at every "
        "position that is not ignored (mask it out or set its label to ignore_index)"
    )


def _scatter_rows(valid: Tensor, packed: Tensor, shape: torch.Size) -> Tensor:
    """`[n]` values of the valid rows -> `shape` tensor with zeros at the ignored rows."""
    full = packed.new_zeros(valid.shape)
    return full.masked_scatter_(valid, packed).view(shape)


def _packed(grad: Tensor | None, valid: Tensor | None, like: Tensor) -> Tensor:
    """An incoming gradient as `[n]` values of the valid rows (zeros when autograd gave None)."""
    if grad is None:
        return torch.zeros_like(like)
    grad = grad.reshape(-1).to(like.dtype)
    return grad if valid is None else grad.masked_select(valid)


def _grad_coefficients(g_lp: Tensor, g_h: Tensor, mean_x: Tensor, inv_tau: float):
    """Per-row factors of `chunk_grad`: `(coef_x, coef_const, grad_label)`, `[n]` each."""
    return -g_h * inv_tau, (g_h * mean_x - g_lp) * inv_tau, g_lp * inv_tau


class LogitsStats(torch.autograd.Function):
    """`(logprobs, entropy, discriminator, baseline)` from logits `[..., V]`, streamed."""

    @staticmethod
    def forward(ctx, logits, labels, valid, runs, inv_tau, chunk_rows, cdtype, backend, split):
        # logits [..., V]; labels [n] packed valid labels; valid [B*T] bool; runs: valid ranges.
        sums, label_logits = backend.logits_sums(
            logits, labels, valid, runs, inv_tau, chunk_rows, cdtype
        )
        if split is not None:
            split.combine(sums, label_logits, inv_tau)
        log_s, mean_x, *stats = _finish(sums, label_logits, inv_tau)
        _check_finite(valid, *stats)
        shape = logits.shape[:-1]
        outputs = [_scatter_rows(valid, t, shape) for t in stats]
        ctx.mark_non_differentiable(outputs[2], outputs[3])
        ctx.save_for_backward(logits, labels, valid, sums.m, log_s, mean_x)
        ctx.runs, ctx.inv_tau, ctx.chunk_rows = runs, inv_tau, chunk_rows
        ctx.backend, ctx.split = backend, split
        return tuple(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprobs, grad_entropy, _grad_s, _grad_n):
        logits, labels, valid, m, log_s, mean_x = ctx.saved_tensors
        g_lp, g_h = (_packed(g, valid, mean_x) for g in (grad_logprobs, grad_entropy))
        coef_x, coef_const, grad_label = _grad_coefficients(g_lp, g_h, mean_x, ctx.inv_tau)
        if ctx.split is not None:
            grad_label = ctx.split.owned_only(grad_label)
        per_row = (labels, m, log_s, coef_x, coef_const, grad_label)
        grad = _huge_pages.empty(logits.shape, logits.dtype, logits.device)
        if labels.shape[0] < valid.numel():  # ignored rows get 0; the backend writes the rest
            ignored = (~valid).nonzero().squeeze(1)
            grad.view(-1, logits.shape[-1]).index_fill_(0, ignored, 0)
        ctx.backend.logits_grad(
            logits, labels, valid, ctx.runs, per_row, grad, ctx.inv_tau, ctx.chunk_rows
        )
        return grad, None, None, None, None, None, None, None, None


class HiddenStats(torch.autograd.Function):
    """The same statistics from hidden states and the output layer, one row block at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, valid, inv_tau, block_rows, chunk_rows, cdtype, backend, split):  # fmt: skip
        # hidden [n, D] packed valid rows; weight [V, D]; bias [V] or None; labels [n].
        sums, label_logits = backend.hidden_sums(
            hidden, weight, bias, labels, inv_tau, block_rows, chunk_rows, cdtype
        )
        if split is not None:
            split.combine(sums, label_logits, inv_tau)
        log_s, mean_x, *stats = _finish(sums, label_logits, inv_tau)
        _check_finite(valid, *stats)
        ctx.mark_non_differentiable(stats[2], stats[3])
        ctx.save_for_backward(hidden, weight, bias, labels, sums.m, log_s, mean_x)
        ctx.inv_tau, ctx.block_rows, ctx.chunk_rows = inv_tau, block_rows, chunk_rows
        ctx.backend, ctx.split = backend, split
        return tuple(stats)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprobs, grad_entropy, _grad_s, _grad_n):
        hidden, weight, bias, labels, m, log_s, mean_x = ctx.saved_tensors
        g_lp, g_h = (_packed(g, None, mean_x) for g in (grad_logprobs, grad_entropy))
        coef_x, coef_const, grad_label = _grad_coefficients(g_lp, g_h, mean_x, ctx.inv_tau)
        if ctx.split is not None:
            grad_label = ctx.split.owned_only(grad_label)
        per_row = (labels, m, log_s, coef_x, coef_const, grad_label)
        n, vocab = hidden.shape[0], weight.shape[0]
        want_hidden, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        # Accumulate over blocks in at least fp32: bf16 sums of many blocks would lose bits.
        acc_dtype = m.dtype
        if want_weight:
            grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device)
        if want_bias:
            grad_bias = torch.zeros(vocab, dtype=acc_dtype, device=weight.device)
        for start in range(0, n, ctx.block_rows):
            rows = slice(start, min(start + ctx.block_rows, n))
            logits = block_logits(hidden[rows], weight, bias)  # [c, V]
            grad_logits = ctx.backend.block_grad(
                logits, start, per_row, ctx.inv_tau, ctx.chunk_rows
            )
            if want_hidden:
                grad_hidden[rows] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if want_weight:
                if grad_logits.dtype == acc_dtype:
                    grad_weight.addmm_(grad_logits.T, hidden[rows].to(acc_dtype))
                else:  # a low-precision block product (tensor cores), summed in fp32
                    grad_weight += grad_logits.T @ hidden[rows]
            if want_bias:
                grad_bias += grad_logits.sum(dim=0, dtype=acc_dtype)
            del logits, grad_logits
        if grad_hidden is not None and ctx.split is not None:
            ctx.split.reduce_hidden_grad(grad_hidden)
        grad_weight = grad_weight.to(weight.dtype) if want_weight else None
        grad_bias = grad_bias.to(bias.dtype) if want_bias else None
        return grad_hidden, grad_weight, grad_bias, *([None] * 8)
