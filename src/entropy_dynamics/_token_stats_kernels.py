"""Row-chunk kernels behind `token_stats`: one-exp statistics per chunk, their finish, and gradients.

Every kernel works on a 2-D chunk `z` of `c` rows of logits `[c, V]` (any float dtype; the
arithmetic runs in `compute_dtype`, fp32 or fp64) and writes per-row results into slices of
preallocated 1-D tensors, so nothing larger than a few `[c, V]` work buffers is ever allocated.

Per row, with `tau` the temperature, `m = max_i z_i`, `x_i = (z_i - m) / tau` and
`e_i = exp(x_i)`, ONE pass of `exp` gives the four sums

    s = sum e_i,  t = sum e_i x_i,  u = sum e_i^2,  w = sum e_i^2 x_i

and with `mean_x = t / s` (the mean of `x` under `p`):

    log p_i = x_i - log s                      lse = m / tau + log s
    H       = log s - mean_x
    H + log p_i = x_i - mean_x                 (log s cancels)
    S_*     = p_k (x_k - mean_x)
    sum p^2 = u / s^2,  sum p^2 log p = w / s^2 - (u / s^2) log s
    N       = H sum p^2 + sum p^2 log p = (w - u mean_x) / s^2

Writing `S_*`, `N` and the entropy gradient without `log s` keeps them accurate to fp32
relative precision even for a nearly one-hot row, where `s = 1 + 1e-9` rounds to 1: only `H`
and `log p_k` themselves carry that `log s` rounding (about 6e-8 absolute).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
from torch import Tensor

from ._dtypes import compute_dtype

# About 0.5 M elements per chunk buffer on CPU (3 rows at V = 151936): measured fastest, as the
# buffers stay in cache and the per-op Python overhead is still small (docs/performance.md).
CPU_CHUNK_ELEMENTS = 1 << 19
# From hidden states the chunk's logits come from a matmul that needs many rows to run at full
# speed (each block re-reads the [V, D] weight): about 64 M logits, 441 rows at V = 151936.
HIDDEN_BLOCK_ELEMENTS = 1 << 26
# Below this many logits a pass runs in the calling thread (starting workers costs ~0.1 ms).
PARALLEL_MIN_ELEMENTS = 1 << 21
# On an accelerator each op is a kernel launch: use large chunks (about 64 MB fp32 buffers).
ACCEL_CHUNK_ELEMENTS = 1 << 24


def default_chunk_rows(device: torch.device, vocab_size: int) -> int:
    """Rows per chunk for the statistics pass: about 0.5 M elements on CPU, 16 M elsewhere."""
    target = CPU_CHUNK_ELEMENTS if device.type == "cpu" else ACCEL_CHUNK_ELEMENTS
    return max(1, target // max(vocab_size, 1))


def default_block_rows(device: torch.device, vocab_size: int) -> int:
    """Rows per logits block computed from hidden states (at least one statistics chunk)."""
    return max(default_chunk_rows(device, vocab_size), HIDDEN_BLOCK_ELEMENTS // max(vocab_size, 1))


compute_dtype_for = compute_dtype  # the core's one rule (_dtypes), under this module's name


class Workspace:
    """Three reusable `[rows, V]` buffers so the chunk loop allocates nothing.

    Allocated on first use and grown when a caller asks for more rows, so a backend that needs
    no buffer (the compiled chunks, most of the time) never pays for one.
    """

    def __init__(self, vocab_size: int, dtype: torch.dtype, device: torch.device):
        self.vocab_size, self.dtype, self.device = vocab_size, dtype, device
        self._buffers: tuple[Tensor, Tensor, Tensor] | None = None

    def views(self, rows: int) -> tuple[Tensor, Tensor, Tensor]:
        if self._buffers is None or self._buffers[0].shape[0] < rows:
            shape = (rows, self.vocab_size)
            self._buffers = tuple(
                torch.empty(shape, dtype=self.dtype, device=self.device) for _ in range(3)
            )
        x, e, ex = self._buffers
        return x[:rows], e[:rows], ex[:rows]


class RowSums:
    """Per-row sums of the forward pass, `[n]` each, for `n` rows handled in chunks."""

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device):
        # One [5, n] block whose rows are the five sums, so a fused chunk kernel's `[5, c]`
        # result lands in one copy; `rescale_to` and the vocabulary split rebind the names.
        self.stacked = torch.zeros(5, n, dtype=dtype, device=device)
        self.m, self.s, self.t, self.u, self.w = self.stacked.unbind(0)

    def rescale_to(self, new_m: Tensor, inv_tau: float) -> None:
        """Re-express the sums at a row max `new_m >= m` (`rescaled_sums`), in place."""
        self.s, self.t, self.u, self.w = rescaled_sums(
            self.m, self.s, self.t, self.u, self.w, new_m, inv_tau
        )
        self.m = new_m

    def finish(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`(log_s, mean_x, entropy, baseline)`, each `[n]` (formulas in the module docstring)."""
        log_s = torch.log(self.s)
        mean_x = self.t / self.s
        entropy = log_s - mean_x
        baseline = (self.w - self.u * mean_x) / (self.s * self.s)
        return log_s, mean_x, entropy, baseline


def chunk_stats(z: Tensor, start: int, sums: RowSums, work: Workspace, inv_tau: float) -> None:
    """Accumulate the four sums of rows `start : start + c` of `sums` from logits `z [c, V]`."""
    c = z.shape[0]
    rows = slice(start, start + c)
    x, e, ex = work.views(c)
    m = z.amax(dim=-1, keepdim=True).to(x.dtype)  # [c, 1]
    sums.m[rows] = m.squeeze(-1)  # unscaled
    torch.sub(z, m, out=x)  # upcasts bf16/fp16 on the fly (m is a tensor)
    if inv_tau != 1.0:
        x.mul_(inv_tau)
    torch.exp(x, out=e)
    torch.sum(e, dim=-1, out=sums.s[rows])
    torch.mul(e, x, out=ex)
    torch.sum(ex, dim=-1, out=sums.t[rows])
    torch.linalg.vecdot(e, e, out=sums.u[rows])
    torch.linalg.vecdot(ex, e, out=sums.w[rows])


def rescaled_sums(m, s, t, u, w, new_m, inv_tau) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sums taken at a row (or block) max `m`, re-expressed at a larger max `new_m`.

    Every `x_i = (z_i - m) / tau` shifts by `d = (m - new_m) / tau <= 0` and every `e_i`
    scales by `a = e^d`, so `s -> a s`, `t -> a (t + d s)`, `u -> a^2 u`, `w -> a^2 (w + d u)`.
    All terms keep their sign (`x <= 0`, `d <= 0`), so nothing cancels. Tensors of any one
    shape (or broadcastable); the Triton kernels apply the same update as their max grows.
    """
    d = (m - new_m) * inv_tau
    a = torch.exp(d)
    a2 = a * a
    return a * s, a * (t + d * s), a2 * u, a2 * (w + d * u)


# Columns per block of the compiled forward. Inductor sums a reduction of more than 4096 fp32
# terms through a slower cascade helper, and a block of 4096 fp32 logits (16 KiB) stays in L1
# between the block's max and its sums, so a row is reduced block by block, then combined.
BLOCK_COLUMNS = 4096


def block_sums(z: Tensor, inv_tau: Tensor) -> tuple[Tensor, ...]:
    """`(m, s, t, u, w)` over the last dim of `z [..., L]`, each `[...]`, in `inv_tau`'s dtype.

    The formulas of `chunk_stats` as plain ops, for `torch.compile` to fuse into one loop per
    block (one `exp` per logit, the four sums kept in registers; `_token_stats_compiled`). `m`
    is the unscaled max; `inv_tau` is a 0-dim tensor in the compute dtype. A tuple, not a
    stack: stacking the sums makes inductor store `e` to memory and sum it in a second loop.
    """
    zc = z.to(inv_tau.dtype)  # bf16/fp16 upcast per element inside the loop
    m = zc.amax(dim=-1, keepdim=True)  # [..., 1]
    x = (zc - m) * inv_tau
    e = torch.exp(x)
    ex = e * x
    return m.squeeze(-1), e.sum(-1), ex.sum(-1), (e * e).sum(-1), (ex * e).sum(-1)


def fused_main_sums(z: Tensor, inv_tau: Tensor) -> tuple[Tensor, ...]:
    """`block_sums` of each `BLOCK_COLUMNS`-column block of `z [c, nb * BLOCK_COLUMNS]`, `[c, nb]`.

    The blocks are formed inside the compiled graph: given as a `[c, nb, BLOCK_COLUMNS]` input,
    inductor stores `e` to memory and sums it in a second loop.
    """
    return block_sums(z.view(z.shape[0], -1, BLOCK_COLUMNS), inv_tau)  # [c, nb, BLOCK]


def combine_blocks(blocks: Tensor, inv_tau: float) -> Tensor:
    """`[5, c, nb]` per-block `(m, s, t, u, w)` -> `[5, c]` of whole rows (`rescaled_sums`)."""
    m = blocks[0].amax(dim=-1, keepdim=True)  # [c, 1]
    rescaled = rescaled_sums(*blocks.unbind(0), m, inv_tau)
    return torch.stack([m.squeeze(-1), *(t.sum(-1) for t in rescaled)])


def softmax_grad(x: Tensor, log_s: Tensor, coef_x: Tensor, coef_const: Tensor) -> Tensor:
    """`p_j (coef_x x_j + coef_const)` with `p_j = e^(x_j - log s)`: `chunk_grad` before its
    label term. `x [c, L]` (scaled, shifted logits); the per-row factors `[c, 1]`."""
    return (x * coef_x + coef_const) * torch.exp(x - log_s)


def fused_chunk_grad(
    z: Tensor,
    m: Tensor,
    log_s: Tensor,
    coef_x: Tensor,
    coef_const: Tensor,
    inv_tau: Tensor,
    out: Tensor,
) -> None:
    """Write `softmax_grad` of logits `z [c, V]` into `out [c, V]` (any float dtype).

    Plain ops for `torch.compile` to fuse into one loop that writes `out` in place. `m`,
    `log_s`, `coef_x`, `coef_const` are the chunk's `[c]` slices and `inv_tau` a 0-dim tensor,
    all in the compute dtype; `out` must not overlap `z`. The caller then writes each row's
    label entry (`label_grad`): a comparison against a column index inside the loop costs
    more than the whole loop.
    """
    x = (z.to(m.dtype) - m[:, None]) * inv_tau
    out.copy_(softmax_grad(x, log_s[:, None], coef_x[:, None], coef_const[:, None]))


def label_grad(z_label, m, log_s, coef_x, coef_const, grad_label, inv_tau) -> Tensor:
    """`dL/dz_k` at each row's label: `softmax_grad` there plus `grad_label`, all `[c]`.

    Written into the gradient after `fused_chunk_grad` (one rounding to the gradient's dtype).
    """
    x = (z_label.to(m.dtype) - m) * inv_tau
    return softmax_grad(x, log_s, coef_x, coef_const) + grad_label


def chunk_grad(
    z: Tensor,
    start: int,
    labels: Tensor,
    m: Tensor,
    log_s: Tensor,
    coef_x: Tensor,
    coef_const: Tensor,
    grad_label: Tensor,
    out: Tensor,
    work: Workspace,
    inv_tau: float,
) -> None:
    """Write `dL/dz` for the rows `start : start + c` into `out [c, V]` from logits `z [c, V]`.

    With `g_lp`, `g_H` the incoming gradients of a row's log-prob and entropy,
    `d log p_k / dz_j = (delta_jk - p_j) / tau` and
    `dH / dz_j = -p_j (log p_j + H) / tau = -p_j (x_j - mean_x) / tau`, so

        dL/dz_j = p_j (coef_x * x_j + coef_const) + delta_jk grad_label

    with `coef_x = -g_H / tau`, `coef_const = (g_H mean_x - g_lp) / tau`, `grad_label = g_lp / tau`.
    `m` (the unscaled row max) and `log_s` come from the forward pass; all per-row inputs are
    `[n]` and sliced here. `out` may be `z` itself (every read of `z` happens before the write).
    """
    c = z.shape[0]
    rows = slice(start, start + c)
    x, p, ex = work.views(c)
    torch.sub(z, m[rows, None], out=x)  # upcasts bf16/fp16 on the fly
    if inv_tau != 1.0:
        x.mul_(inv_tau)
    torch.sub(x, log_s[rows, None], out=p)
    p.exp_()
    torch.mul(x, coef_x[rows, None], out=ex)
    ex.add_(coef_const[rows, None])
    target = out if out.dtype == ex.dtype else ex
    torch.mul(ex, p, out=target)
    target.scatter_add_(1, labels[rows, None], grad_label[rows, None])
    if target is not out:
        out.copy_(target)


class Chunk(NamedTuple):
    """One row chunk: rows `local : local + rows` of row block `block`, which are rows
    `flat : flat + rows` of the flattened `[B * T, V]` logits and rows `packed : packed + rows`
    of the packed list of valid rows."""

    block: int
    local: int
    flat: int
    packed: int
    rows: int


def row_blocks(logits: Tensor) -> list[tuple[int, Tensor]]:
    """`(first flat row, [rows, V] view)` pieces covering `logits [..., V]` without a copy.

    One piece when the leading dims flatten as a view; a sliced tensor such as `logits[:, :-1]`
    (shifted for next-token prediction) cannot, and becomes one piece per leading index.
    """
    vocab = logits.shape[-1]
    try:
        return [(0, logits.view(-1, vocab))]
    except RuntimeError:
        rows_each = logits[0].numel() // max(vocab, 1)
        return [
            (i * rows_each + first, view)
            for i in range(logits.shape[0])
            for first, view in row_blocks(logits[i])
        ]


def valid_runs(valid: Tensor) -> list[tuple[int, int]]:
    """`[start, end)` ranges of consecutive True entries of the 1-D bool tensor `valid`."""
    edges = torch.diff(
        valid.to(torch.int8),
        prepend=valid.new_zeros(1, dtype=torch.int8),
        append=valid.new_zeros(1, dtype=torch.int8),
    )
    starts = (edges == 1).nonzero().flatten().tolist()
    ends = (edges == -1).nonzero().flatten().tolist()
    return list(zip(starts, ends, strict=True))


def plan_chunks(
    blocks: list[tuple[int, Tensor]], runs: list[tuple[int, int]], chunk_rows: int
) -> list[Chunk]:
    """Split the valid runs into chunks of at most `chunk_rows` rows inside single row blocks."""
    chunks: list[Chunk] = []
    packed = 0
    for index, (first, view) in enumerate(blocks):
        last = first + view.shape[0]
        for start, end in runs:
            lo, hi = max(start, first), min(end, last)
            for row in range(lo, hi, chunk_rows):
                rows = min(chunk_rows, hi - row)
                chunks.append(Chunk(index, row - first, row, packed, rows))
                packed += rows
    return chunks


def run_chunks(
    chunks: list[Chunk],
    body: Callable[[Chunk, Workspace], None],
    *,
    rows: int,
    vocab_size: int,
    dtype: torch.dtype,
    device: torch.device,
    split: bool = True,
) -> None:
    """Call `body(chunk, workspace)` for every chunk (each writes only its own rows' results).

    On CPU with `torch.get_num_threads() = n > 1`, `n` worker threads take chunks from a shared
    queue and run their ops single-threaded, each with its own workspace. Small-chunk ops
    parallelised inside (OpenMP) would synchronise all threads about ten times per chunk, which
    on a busy machine (a descheduled thread stalls the others) made the pass 4x slower than one
    thread; whole chunks per thread need no synchronisation. torch's thread count is set to 1
    for the duration and restored afterwards. `split=False` keeps every chunk in the calling
    thread (compiled kernels hold the GIL while they run, and parallelise inside instead).
    """
    workers = min(torch.get_num_threads(), len(chunks)) if device.type == "cpu" and split else 1
    if workers <= 1 or len(chunks) * rows * vocab_size < PARALLEL_MIN_ELEMENTS:
        work = Workspace(vocab_size, dtype, device)
        for chunk in chunks:
            body(chunk, work)
        return
    queue, lock = iter(chunks), threading.Lock()

    def drain() -> None:
        work = Workspace(vocab_size, dtype, device)
        with torch.no_grad():  # grad mode is per thread; the kernels never build a graph
            while True:
                with lock:
                    chunk = next(queue, None)
                if chunk is None:
                    return
                body(chunk, work)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(drain) for _ in range(workers)]:
                future.result()
    finally:
        torch.set_num_threads(threads)
