"""Batch-global statistics over masked tokens, identical on every data-parallel rank.

Every function works in a single process (no ``torch.distributed`` process group) and, when
``torch.distributed.is_available() and torch.distributed.is_initialized()``, reduces or gathers
over ``group`` (``None`` = the default WORLD group). The result on every rank equals the
single-process result on the concatenated batch: the ranks' valid tokens are ordered by rank,
then row-major within a rank (the "global position" of a token).

Shapes: ``values`` and ``mask`` are ``[B, T]`` (any shape works; row-major order is used) and
``B``/``T`` may differ between ranks. ``mask`` is bool (True = counted token); values at
masked positions are never read, so padding may hold anything, even NaN.

Results carry no gradient: these are statistics for masks and normalisers. Floating results are
fp32 whatever the input dtype (fp64 stays fp64). Collectives run on the CPU for a ``gloo``
group and on the tensors' device otherwise (``nccl``).

Host synchronisation: ``global_sum`` and ``masked_mean_std`` never read a value on the host;
the gathering functions (``gather_masked``, ``masked_quantile``, ``masked_topk``,
``global_position_select``) read the per-rank counts, which is one device-to-host sync.
"""

from __future__ import annotations

import operator

import torch
import torch.distributed as dist
from torch import Tensor

from ._dtypes import compute_dtype

__all__ = [
    "gather_masked",
    "global_position_select",
    "global_sum",
    "is_distributed",
    "masked_mean_std",
    "masked_quantile",
    "masked_topk",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised (collectives will run)."""
    return dist.is_available() and dist.is_initialized()


def world_size(group=None) -> int:
    """Number of ranks in ``group`` (1 without a process group)."""
    return dist.get_world_size(group) if is_distributed() else 1


def rank(group=None) -> int:
    """This process's rank within ``group`` (0 without a process group)."""
    return dist.get_rank(group) if is_distributed() else 0


# ---------------------------------------------------------------------------------------------
# private helpers


def _stat_dtype(x: Tensor) -> torch.dtype:
    return compute_dtype(x.dtype)


def _check_mask(values: Tensor, mask: Tensor) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = type(mask).__name__ if not isinstance(mask, Tensor) else mask.dtype
        raise ValueError(f"mask must be a bool tensor (True = counted token), got {got}")
    if values.shape != mask.shape:
        raise ValueError(
            f"values and mask must have the same shape, got values {tuple(values.shape)} "
            f"and mask {tuple(mask.shape)}"
        )
    return mask


def _comm_device(group, device: torch.device) -> torch.device:
    """The device a collective over ``group`` needs: CPU for gloo, else the tensor's own."""
    return torch.device("cpu") if dist.get_backend(group) == "gloo" else device


def _all_reduce_sum(x: Tensor, group) -> Tensor:
    """Sum of ``x`` over the ranks of ``group`` (a new tensor; ``x`` is not modified)."""
    if not is_distributed():
        return x.clone()
    device = x.device
    buf = x.detach().to(_comm_device(group, device), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    return buf.to(device)


def _all_gather_1d(x: Tensor, counts: list[int], group) -> Tensor:
    """Concatenate 1-D tensors of per-rank lengths ``counts`` in rank order."""
    longest = max(counts)
    if not is_distributed() or longest == 0:  # every rank sees the same counts: no deadlock
        return x
    device = x.device
    comm = _comm_device(group, device)
    padded = torch.zeros(longest, dtype=x.dtype, device=comm)
    padded[: x.numel()] = x.to(comm)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)]).to(device)


def _rank_counts(mask: Tensor, group, *, extra: Tensor | None = None) -> list[list[int]]:
    """Per rank ``[n_valid, *extra]`` as host ints (one sync); every rank gets the same list."""
    local = mask.sum().reshape(1).to(torch.int64)
    if extra is not None:
        local = torch.cat([local, extra.reshape(-1).to(device=local.device, dtype=torch.int64)])
    if not is_distributed():
        return [local.tolist()]
    comm = _comm_device(group, local.device)
    local = local.to(comm)
    parts = [torch.empty_like(local) for _ in range(world_size(group))]
    dist.all_gather(parts, local, group=group)
    return [part.tolist() for part in parts]


def _valid_values(values: Tensor, mask: Tensor) -> Tensor:
    """This rank's valid values, row-major, detached, as fp32 (fp64 stays fp64)."""
    flat = values.detach().reshape(-1)
    if flat.is_floating_point():
        flat = flat.to(_stat_dtype(flat))
    return flat[mask.reshape(-1)]


# ---------------------------------------------------------------------------------------------
# public functions


def global_sum(x: Tensor, *, group=None) -> Tensor:
    """Sum of ``x`` over all ranks (elementwise for a non-scalar ``x``), without gradient.

    ``x`` must have the same shape and dtype on every rank. A bool ``x`` is summed as int64.
    Single process: a detached copy of ``x``.

    Example: ``global_sum(mask.sum())`` is the global number of valid tokens.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a tensor, got {type(x).__name__}")
    x = x.detach()
    if x.dtype == torch.bool:
        x = x.to(torch.int64)
    return _all_reduce_sum(x, group)


def masked_mean_std(values: Tensor, mask: Tensor, *, group=None) -> tuple[Tensor, Tensor, Tensor]:
    """Global mean, population standard deviation and count of the valid ``values``.

    ``values, mask``: ``[B, T]``. Returns three 0-dim tensors: ``mean`` and ``std`` (fp32, fp64
    for fp64 input) and ``count`` (int64), over all valid tokens of all ranks:
    ``mean = sum x / n``, ``std = sqrt(sum (x - mean)^2 / n)`` (denominator n, as Clip_B's s).

    Computed in float64 in two passes (centred form, two all-reduces): first the global sum and
    count give the mean, then the global sum of squared deviations from that mean. This avoids
    the cancellation of ``E[x^2] - E[x]^2``. No valid token (here or anywhere) gives
    ``mean = std = 0`` and ``count = 0``, never NaN; non-finite valid values propagate.
    """
    _check_mask(values, mask)
    out_dtype = _stat_dtype(values)
    x = torch.where(mask, values.detach().to(torch.float64), 0.0)
    first = torch.stack([x.sum(), mask.sum().to(torch.float64)])
    total, count = _all_reduce_sum(first, group).unbind()
    mean = total / count.clamp(min=1.0)
    squared = torch.where(mask, (x - mean) ** 2, 0.0).sum()
    variance = _all_reduce_sum(squared, group) / count.clamp(min=1.0)
    return mean.to(out_dtype), variance.sqrt().to(out_dtype), count.round().to(torch.int64)


def gather_masked(values: Tensor, mask: Tensor, *, group=None) -> Tensor:
    """All valid values of all ranks as one 1-D tensor ``[n_global]``, identical on every rank.

    Order: rank 0's valid values row-major, then rank 1's, ... (the global position order used by
    ``masked_topk`` and ``global_position_select``). Ranks may hold different ``B``, ``T`` and
    numbers of valid tokens (each rank pads to the largest count for the all-gather).
    Floating values come back as fp32 (fp64 stays fp64); integer dtypes are kept.
    """
    _check_mask(values, mask)
    counts = [c[0] for c in _rank_counts(mask, group)]
    return _all_gather_1d(_valid_values(values, mask), counts, group)


def _linear_quantile(sorted_values: Tensor, q: Tensor) -> Tensor:
    """``torch.quantile(..., interpolation='linear')`` on already sorted values, any length."""
    position = q * (sorted_values.numel() - 1)
    low = position.floor().long()
    high = position.ceil().long()
    frac = (position - low).to(sorted_values.dtype)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac


def masked_quantile(values: Tensor, mask: Tensor, q, *, group=None) -> Tensor:
    """The ``q``-quantile(s) of the valid values of all ranks.

    ``values, mask``: ``[B, T]``; ``q``: a float in [0, 1] or a 1-D tensor of them. Returns a
    0-dim tensor (``[len(q)]`` for a tensor ``q``), fp32 (fp64 for fp64 input).

    Interpolation is ``torch.quantile``'s (and numpy's) default ``'linear'``: with the ``n``
    gathered valid values sorted as ``x_0 <= ... <= x_{n-1}`` and ``h = q (n - 1)``,
    ``Q(q) = x_floor(h) + (h - floor(h)) (x_ceil(h) - x_floor(h))``. Implemented on a full sort
    of the gathered values, so there is no size limit (``torch.quantile`` refuses more than
    2^24 elements). No valid token anywhere gives 0. NaN among the valid values raises.
    """
    _check_mask(values, mask)
    q_tensor = torch.as_tensor(q, dtype=torch.float64)
    if q_tensor.dim() > 1 or not bool(((q_tensor >= 0) & (q_tensor <= 1)).all()):
        raise ValueError(f"q must be a float or 1-D tensor of floats in [0, 1], got {q!r}")
    rows = _rank_counts(mask, group, extra=(values.detach().isnan() & mask).sum())
    if any(nan_count for _, nan_count in rows):
        raise ValueError("values hold NaN at valid (mask=True) positions: no quantile")
    gathered = _all_gather_1d(_valid_values(values, mask), [n for n, _ in rows], group)
    out_dtype = _stat_dtype(values)
    if gathered.numel() == 0:
        return torch.zeros(q_tensor.shape, dtype=out_dtype, device=values.device)
    sorted_values = gathered.to(torch.float64).sort().values
    result = _linear_quantile(sorted_values, q_tensor.to(sorted_values.device))
    return result.to(out_dtype)


def global_position_select(mask: Tensor, chosen_global_idx: Tensor, *, group=None) -> Tensor:
    """This rank's share of a choice of tokens given by their global positions.

    ``mask``: bool ``[B, T]``; ``chosen_global_idx``: 1-D integer tensor of global positions in
    ``[0, n_global)`` (the order of ``gather_masked``), the SAME on every rank (e.g. drawn with a
    generator seeded identically on all ranks). Returns bool ``[B, T]``: True at this rank's
    valid tokens whose global position is chosen. Duplicates are allowed.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError("mask must be a bool tensor (True = counted token)")
    chosen = torch.as_tensor(chosen_global_idx, device=mask.device)
    if chosen.dim() != 1 or chosen.is_floating_point() or chosen.dtype == torch.bool:
        raise ValueError(
            f"chosen_global_idx must be a 1-D integer tensor, got shape {tuple(chosen.shape)} "
            f"and dtype {chosen.dtype}"
        )
    counts = [c[0] for c in _rank_counts(mask, group)]
    n_global = sum(counts)
    if chosen.numel() and (int(chosen.min()) < 0 or int(chosen.max()) >= n_global):
        raise ValueError(
            f"chosen_global_idx must lie in [0, {n_global}) (the global number of valid tokens), "
            f"got values in [{int(chosen.min())}, {int(chosen.max())}]"
        )
    return _select_local(mask, chosen, counts, rank(group))


def _select_local(mask: Tensor, chosen: Tensor, counts: list[int], me: int) -> Tensor:
    """Bool ``[B, T]`` of this rank's valid tokens whose global position is in ``chosen``."""
    offset = sum(counts[:me])
    local = chosen[(chosen >= offset) & (chosen < offset + counts[me])] - offset
    flat_valid = mask.reshape(-1).nonzero().squeeze(1)  # row-major positions of valid tokens
    selected = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    selected[flat_valid[local.long()]] = True
    return selected.reshape(mask.shape)


def masked_topk(values: Tensor, mask: Tensor, k: int, *, group=None) -> Tensor:
    """This rank's share of the global top-``k`` valid tokens by ``values``: bool ``[B, T]``.

    ``values, mask``: ``[B, T]``; ``k``: int >= 0, clipped to the global number of valid tokens.
    Ties are broken by global position: of equal values, the token of the lower rank, then the
    lower row-major index, is taken first, so the choice is deterministic and the union over
    ranks equals the single-process result on the concatenated batch.

    Each rank sends only its own top-``min(k, n_rank)`` candidates (which contain every token of
    the global top-k), not all its values. NaN among the valid values raises.
    """
    _check_mask(values, mask)
    try:
        k_int = operator.index(k)  # accepts Python, numpy and 0-dim integer tensor ints
    except TypeError:
        k_int = -1
    if isinstance(k, bool) or k_int < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    k = k_int
    rows = _rank_counts(mask, group, extra=(values.detach().isnan() & mask).sum())
    if any(nan_count for _, nan_count in rows):
        raise ValueError("values hold NaN at valid (mask=True) positions; top-k is undefined")
    counts = [n for n, _ in rows]
    me = rank(group)
    offset = sum(counts[:me])
    local_values = _valid_values(values, mask).to(torch.float64)
    # Stable sorts keep equal values in position order: within a rank here, and across ranks
    # below (candidates are concatenated in rank order), so ties go to the lower global position.
    candidates = local_values.sort(descending=True, stable=True).indices[: min(k, counts[me])]
    cand_counts = [min(k, n) for n in counts]
    cand_values = _all_gather_1d(local_values[candidates], cand_counts, group)
    cand_positions = _all_gather_1d(candidates + offset, cand_counts, group)
    top = cand_values.sort(descending=True, stable=True).indices[: min(k, sum(counts))]
    return _select_local(mask, cand_positions[top], counts, me)
