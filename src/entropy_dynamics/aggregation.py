"""Loss reduction modes: how a per-token loss ``[B, T]`` becomes the scalar that is minimised.

The mode decides how tokens and sequences are weighted, which is a real modelling choice
(PAPER.md section 5; Dr. GRPO, Liu et al. 2025, arXiv 2503.20783, shows the length bias of
per-sequence normalisation). The normalisers (``num_tokens``, ``num_seqs``) can be passed in as
GLOBAL counts for the whole training batch (all micro-batches, all ranks; see ``normalisers``):
then the sum of the micro-batch results equals the whole-batch result, loss and gradient alike,
which is what gradient accumulation needs. Micro-batches split the batch by rows (sequences).

A sequence counts in ``num_seqs`` only if it has at least one valid token: a row whose tokens
are all masked (padding, or every token dropped by a filter) is not part of the objective, so
adding such rows never changes the loss (verl's ``seq-mean-token-mean`` makes the same choice).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from entropy_dynamics.distributed import global_sum

__all__ = ["MODES", "aggregate", "normalisers"]

MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def normalisers(mask: Tensor, *, group=None) -> dict[str, Tensor]:
    """Global normalisers of a training batch, for ``aggregate(..., **normalisers(mask))``.

    ``mask``: bool ``[B, T]`` of the tokens that enter the loss (after any token filter).
    Returns int64 0-dim tensors, summed over the ranks of ``group`` (one all-reduce):
    ``num_tokens`` = number of True entries, ``num_seqs`` = number of rows with at least one.
    """
    _check_mask(mask)
    local = torch.stack([mask.sum(), mask.any(dim=-1).sum()]).to(torch.int64)
    num_tokens, num_seqs = global_sum(local, group=group).unbind()
    return {"num_tokens": num_tokens, "num_seqs": num_seqs}


def _check_mask(mask: Tensor) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        got = (mask.dtype, tuple(mask.shape)) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor [B, T] (True = counted token), got {got}")


def _normaliser(value, fallback: Tensor, name: str, like: Tensor) -> Tensor:
    """``value`` (a whole count >= this call's own count ``fallback``) or ``fallback``, as a
    tensor like ``like``, clamped to >= 1.

    A Python number, or a tensor on the CPU, is checked in full: finite, whole, not negative and
    not below this call's count (a global count cannot be smaller than a local one; a smaller
    one would silently turn the mean into a sum). A tensor on an accelerator is only checked for
    its shape and dtype, to keep the loss free of host syncs.
    """
    if value is None:
        value = fallback
    elif isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise ValueError(f"{name} must be a whole count >= 0 (int or 0-dim tensor), got {value!r}")
    elif isinstance(value, Tensor):
        if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
            raise ValueError(
                f"{name} must be a 0-dim real tensor or a number, got a {value.dtype} tensor of "
                f"shape {tuple(value.shape)}"
            )
        if value.device.type == "cpu":
            _check_count(float(value), fallback, name)
    else:
        _check_count(float(value), fallback, name)
    value = torch.as_tensor(value).to(dtype=like.dtype, device=like.device)
    # A zero count means no valid token anywhere, so the numerator is 0 too: 0 / 1 = 0, not NaN.
    return value.clamp(min=1)


def _check_count(number: float, local: Tensor, name: str) -> None:
    if not math.isfinite(number) or number < 0 or number != math.floor(number):
        raise ValueError(f"{name} must be a whole count >= 0, got {number!r}")
    counted = int(local)
    if number < counted:
        raise ValueError(
            f"{name}={number:g} is fewer than the {counted} this call's mask counts; pass the "
            "whole batch's counts (aggregation.normalisers(keep_mask)) or leave it None"
        )


def aggregate(
    loss: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    *,
    num_tokens: int | Tensor | None = None,
    num_seqs: int | Tensor | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce a per-token loss ``[B, T]`` over the valid tokens ``mask [B, T]`` to a scalar.

    With ``l`` the loss, ``m`` the mask, ``n_b = sum_t m_bt`` the valid tokens of sequence
    ``b``, ``N = num_tokens`` and ``S = num_seqs``:

    - ``token-mean``: ``sum_bt m l / N`` (every token weighs the same; GRPO in DAPO's form).
    - ``seq-mean-token-mean``: ``sum_b [n_b > 0] (sum_t m l / n_b) / S`` (GRPO as written in
      DeepSeekMath: each sequence weighs the same, its tokens 1 / length each).
    - ``seq-mean-token-sum``: ``sum_b (sum_t m l) / S``.
    - ``seq-mean-token-sum-norm``: ``sum_b (sum_t m l / max_len) / S``, a constant length
      (Dr. GRPO, Liu et al. 2025); ``max_len`` is required (e.g. the generation budget).

    ``num_tokens`` / ``num_seqs`` default to this call's counts (``N = sum m``, ``S`` = rows
    with a valid token); pass the whole batch's GLOBAL counts (``normalisers``) when ``loss`` is
    one micro-batch or one rank's share, so that the results add up to the whole-batch loss. A
    mode reads only its own normaliser; the others may be passed (one call site for every mode)
    and are not used. A zero count (no valid token) gives 0 and zero gradient, never NaN;
    masked positions never reach the result or its gradient, whatever they hold.

    ``num_tokens`` / ``num_seqs`` must be whole counts, not below this call's own counts
    (checked for Python numbers and CPU tensors; see ``_normaliser``).

    Same as verl 0.9.1's ``agg_loss`` (every mode, with ``loss_scale_factor = max_len`` for
    ``seq-mean-token-sum-norm``; before verl 0.7.1 that mode did not divide by the number of
    sequences). Differs from TRL: its sequence-mean losses count rows without a valid token in
    ``S`` (``.mean()`` over all rows); here and in verl they do not.

    Example: ``loss = [[1, 2, 9], [4, 9, 9]]``, ``mask = [[1, 1, 0], [1, 0, 0]]``:
    token-mean ``7 / 3``; seq-mean-token-mean ``(1.5 + 4) / 2 = 2.75``; seq-mean-token-sum
    ``(3 + 4) / 2 = 3.5``; seq-mean-token-sum-norm with ``max_len = 4``: ``(3/4 + 4/4) / 2``.
    Returns a 0-dim tensor, fp32 (fp64 stays fp64); gradients flow to ``loss``.
    """
    _check_mask(mask)
    if not isinstance(loss, Tensor) or loss.shape != mask.shape:
        got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"loss must be a tensor of the mask's shape {tuple(mask.shape)}, got {got}"
        )
    if mode not in MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid modes: {', '.join(MODES)}")
    if max_len is not None and (
        isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1
    ):
        raise ValueError(f"max_len must be an int >= 1, got {max_len!r}")
    if mode == "seq-mean-token-sum-norm" and max_len is None:
        raise ValueError(
            "mode 'seq-mean-token-sum-norm' needs max_len (the fixed length, e.g. "
            "the generation budget, that each sequence's token sum is divided by)"
        )

    if not loss.is_floating_point() or loss.dtype not in (torch.float32, torch.float64):
        loss = loss.float()
    masked = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if mode == "token-mean":
        denominator = _normaliser(num_tokens, mask.sum(), "num_tokens", masked)
        return masked.sum() / denominator

    seq_sums = masked.sum(dim=-1)  # (B,)
    if mode == "seq-mean-token-mean":
        lengths = mask.sum(dim=-1).clamp(min=1).to(masked.dtype)  # (B,); empty rows sum to 0
        seq_values = seq_sums / lengths
    elif mode == "seq-mean-token-sum":
        seq_values = seq_sums
    else:  # seq-mean-token-sum-norm
        seq_values = seq_sums / max_len
    denominator = _normaliser(num_seqs, mask.any(dim=-1).sum(), "num_seqs", masked)
    return seq_values.sum() / denominator
