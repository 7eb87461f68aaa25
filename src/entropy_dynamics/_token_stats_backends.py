"""The ways to stream the logits behind `token_stats`: torch row chunks (eager or compiled), Triton.

The backends give the same four operations on the `n` counted rows (packed row-major), and the
autograd functions in `_token_stats_autograd` use them without knowing which one runs:

    logits_sums(logits, labels, valid, runs, ...)   -> (RowSums, label logits [n])
    logits_grad(logits, labels, valid, runs, per_row, grad, ...)   writes dL/dz of the rows
    hidden_sums(hidden [n, D], weight, bias, labels, ...)   -> (RowSums, label logits [n])
    block_grad(logits [c, V], start, per_row, ...)   -> dL/dz of the block, `[c, V]`

`per_row = (labels, m, log_s, coef_x, coef_const, grad_label)`, each `[n]`, from the forward
pass and `_grad_coefficients`. The formulas are in `_token_stats_kernels`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._token_stats_compiled import COMPILED_CHUNK_ELEMENTS, FUSED
from ._token_stats_kernels import (
    CPU_CHUNK_ELEMENTS,
    Chunk,
    RowSums,
    Workspace,
    chunk_grad,
    chunk_stats,
    default_chunk_rows,
    label_grad,
    plan_chunks,
    row_blocks,
    run_chunks,
)


def _inner_chunks(start: int, rows: int, chunk_rows: int) -> list[Chunk]:
    """Chunks of a contiguous `[rows, V]` logits block whose first packed row is `start`."""
    return [
        Chunk(0, local, local, start + local, min(chunk_rows, rows - local))
        for local in range(0, rows, chunk_rows)
    ]


def block_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`hidden [c, D] @ weight.T [D, V] (+ bias [V])` -> `[c, V]` in the weights' dtype."""
    if bias is None:
        return hidden @ weight.T
    return torch.addmm(bias, hidden, weight.T)


class TorchBackend:
    """Row chunks of a few `[c, V]` buffers, torch ops, worker threads on CPU."""

    name = "torch"

    def chunk_rows(self, device: torch.device, vocab_size: int) -> int:
        """Default rows per statistics chunk."""
        return default_chunk_rows(device, vocab_size)

    # The two per-chunk kernels; `CompiledBackend` replaces them with fused compiled loops.
    split_threads = True  # worker threads take whole chunks (`run_chunks`)
    chunk_stats = staticmethod(chunk_stats)
    chunk_grad = staticmethod(chunk_grad)

    def logits_sums(self, logits, labels, valid, runs, inv_tau, chunk_rows, cdtype):
        blocks = row_blocks(logits)
        n = labels.shape[0]
        sums = RowSums(n, cdtype, logits.device)
        label_logits = sums.m.new_zeros(n)

        def body(chunk: Chunk, work: Workspace) -> None:
            z = blocks[chunk.block][1].narrow(0, chunk.local, chunk.rows)
            self.chunk_stats(z, chunk.packed, sums, work, inv_tau)
            rows = slice(chunk.packed, chunk.packed + chunk.rows)
            label_logits[rows] = z.gather(1, labels[rows, None]).squeeze(1)

        run_chunks(
            plan_chunks(blocks, runs, chunk_rows),
            body,
            rows=min(chunk_rows, max(n, 1)),
            vocab_size=logits.shape[-1],
            dtype=cdtype,
            device=logits.device,
            split=self.split_threads,
        )
        return sums, label_logits

    def logits_grad(self, logits, labels, valid, runs, per_row, grad, inv_tau, chunk_rows):
        vocab = logits.shape[-1]
        blocks = row_blocks(logits)
        grad_rows = grad.view(-1, vocab)

        def body(chunk: Chunk, work: Workspace) -> None:
            z = blocks[chunk.block][1].narrow(0, chunk.local, chunk.rows)
            out = grad_rows.narrow(0, chunk.flat, chunk.rows)
            self.chunk_grad(z, chunk.packed, *per_row, out, work, inv_tau)

        run_chunks(
            plan_chunks(blocks, runs, chunk_rows),
            body,
            rows=min(chunk_rows, max(labels.shape[0], 1)),
            vocab_size=vocab,
            dtype=per_row[1].dtype,
            device=logits.device,
            split=self.split_threads,
        )

    def hidden_sums(self, hidden, weight, bias, labels, inv_tau, block_rows, chunk_rows, cdtype):
        n = hidden.shape[0]
        sums = RowSums(n, cdtype, hidden.device)
        label_logits = sums.m.new_zeros(n)
        for start in range(0, n, block_rows):
            rows = slice(start, min(start + block_rows, n))
            logits = block_logits(hidden[rows], weight, bias)  # [c, V]
            label_logits[rows] = logits.gather(1, labels[rows, None]).squeeze(1)
            self._block_stats(logits, start, sums, inv_tau, chunk_rows, cdtype)
            del logits
        return sums, label_logits

    # The block helpers keep their chunk views local, so that a block's logits are freed as
    # soon as the caller drops them (a view left in a loop variable would keep two alive).
    def _block_stats(self, logits, start, sums, inv_tau, chunk_rows, dtype) -> None:
        def body(chunk: Chunk, work: Workspace) -> None:
            z = logits.narrow(0, chunk.local, chunk.rows)
            self.chunk_stats(z, chunk.packed, sums, work, inv_tau)

        run_chunks(
            _inner_chunks(start, logits.shape[0], chunk_rows),
            body,
            rows=chunk_rows,
            vocab_size=logits.shape[1],
            dtype=dtype,
            device=logits.device,
            split=self.split_threads,
        )

    def block_grad(self, logits, start, per_row, inv_tau, chunk_rows):
        """fp32 (fp64) gradient of the block: bf16 sums of many blocks would lose bits."""
        dtype = per_row[1].dtype
        grad_logits = logits if logits.dtype == dtype else logits.to(dtype)

        def body(chunk: Chunk, work: Workspace) -> None:
            z = logits.narrow(0, chunk.local, chunk.rows)
            out = grad_logits.narrow(0, chunk.local, chunk.rows)
            self.chunk_grad(z, chunk.packed, *per_row, out, work, inv_tau)

        run_chunks(
            _inner_chunks(start, logits.shape[0], chunk_rows),
            body,
            rows=chunk_rows,
            vocab_size=logits.shape[1],
            dtype=dtype,
            device=logits.device,
            split=self.split_threads,
        )
        return grad_logits


class CompiledBackend(TorchBackend):
    """The same row chunks, each reduced by one fused loop compiled by `torch.compile`.

    `FUSED.ready` has compiled the functions for the dtype before a pass starts (the caller
    falls back to `TORCH` where it cannot). A compiled kernel holds the GIL while it runs, so
    worker threads would take turns: the chunks stay in the calling thread and each kernel
    splits its rows over torch's threads (OpenMP) instead.
    """

    name = "inductor"
    split_threads = False

    def chunk_rows(self, device: torch.device, vocab_size: int) -> int:
        if device.type != "cpu":
            return default_chunk_rows(device, vocab_size)
        return max(1, COMPILED_CHUNK_ELEMENTS // max(vocab_size, 1))

    @staticmethod
    def chunk_stats(z, start, sums, work, inv_tau) -> None:
        sums.stacked[:, start : start + z.shape[0]] = FUSED.sums(z, inv_tau)

    @staticmethod
    def chunk_grad(z, start, labels, m, log_s, coef_x, coef_const, grad_label, out, work, inv_tau):
        c, vocab = z.shape
        rows = slice(start, start + c)
        per_row = (m[rows], log_s[rows], coef_x[rows], coef_const[rows])
        z_label = z.gather(1, labels[rows, None]).squeeze(1)  # read before `out` overwrites `z`
        if out.data_ptr() != z.data_ptr():
            FUSED.grad(z, *per_row, inv_tau, out)
        else:  # from hidden states the gradient overwrites the block's logits: via a buffer
            step = max(1, CPU_CHUNK_ELEMENTS // max(vocab, 1))
            for lo in range(0, c, step):
                part = slice(lo, min(lo + step, c))
                buffer = work.views(part.stop - lo)[0]
                FUSED.grad(z[part], *(t[part] for t in per_row), inv_tau, buffer)
                out[part].copy_(buffer)
        exact = label_grad(z_label, *per_row, grad_label[rows], inv_tau)  # one rounding
        # An indexed write: `scatter_` into bf16 copies the whole chunk to fp32 and back.
        out[torch.arange(c, device=out.device), labels[rows]] = exact.to(out.dtype)


def row_offsets(logits: Tensor, valid: Tensor) -> Tensor:
    """Element offset of each counted row of `logits [..., V]` (any strides), `[n]` int64."""
    offsets = torch.zeros((), dtype=torch.long, device=logits.device)
    for size, stride in zip(logits.shape[:-1], logits.stride()[:-1], strict=True):
        offsets = offsets[..., None] + torch.arange(size, device=logits.device) * stride
    return offsets.reshape(-1)[valid]


def _block_v(vocab: int) -> int:
    return min(triton_next_power_of_2(vocab), 4096)


def triton_next_power_of_2(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


class TritonBackend:
    """One program per counted row (logits) or per 16-64 rows (hidden), see `_token_stats_triton`."""

    name = "triton"

    def __init__(self, kernels):
        self.k = kernels  # the `_token_stats_triton` module (imported only when asked for)

    def chunk_rows(self, device: torch.device, vocab_size: int) -> int:
        """Rows per backward matmul block from hidden states (the kernels take whole rows)."""
        return default_chunk_rows(device, vocab_size)

    def _acc(self, dtype: torch.dtype):
        import triton.language as tl

        return tl.float64 if dtype == torch.float64 else tl.float32

    def logits_sums(self, logits, labels, valid, runs, inv_tau, chunk_rows, cdtype):
        n = labels.shape[0]
        sums = RowSums(n, cdtype, logits.device)
        label_logits = sums.m.new_zeros(n)
        if n == 0:
            return sums, label_logits
        vocab = logits.shape[-1]
        self.k.logits_sums_kernel[(n,)](
            logits,
            row_offsets(logits, valid),
            labels,
            sums.m,
            sums.s,
            sums.t,
            sums.u,
            sums.w,
            label_logits,
            vocab,
            logits.stride(-1),
            inv_tau,
            ACC=self._acc(cdtype),
            BLOCK_V=_block_v(vocab),
            num_warps=8,
        )
        return sums, label_logits

    def _grad(self, z, z_offsets, grad, grad_offsets, per_row, inv_tau) -> None:
        n, vocab = per_row[0].shape[0], z.shape[-1]
        if n == 0:
            return
        self.k.logits_grad_kernel[(n,)](
            z,
            z_offsets,
            grad,
            grad_offsets,
            *per_row,
            vocab,
            z.stride(-1),
            inv_tau,
            ACC=self._acc(per_row[1].dtype),
            BF16_RTNE=self.k.INTERPRETED and grad.dtype == torch.bfloat16,
            BLOCK_V=_block_v(vocab),
            num_warps=8,
        )

    def logits_grad(self, logits, labels, valid, runs, per_row, grad, inv_tau, chunk_rows):
        # `grad` is contiguous: row r of the flattened [B*T, V] starts at r * V.
        grad_offsets = valid.nonzero().squeeze(1) * logits.shape[-1]
        self._grad(logits, row_offsets(logits, valid), grad, grad_offsets, per_row, inv_tau)

    def hidden_sums(self, hidden, weight, bias, labels, inv_tau, block_rows, chunk_rows, cdtype):
        n, dim = hidden.shape
        vocab = weight.shape[0]
        sums = RowSums(n, cdtype, hidden.device)
        label_logits = sums.m.new_zeros(n)
        if n == 0:
            return sums, label_logits
        hidden, weight = hidden.contiguous(), weight.contiguous()
        interpreted = self.k.INTERPRETED
        block_m, block_n, block_k = (16, 128, 32) if interpreted else (64, 128, 64)
        if weight.element_size() == 8:  # fp64 tiles at K = 64 need 192 KiB of shared memory
            block_k = 32  # (A100: 163 KiB at most); scripts/triton_compile_check.py measures it
        if weight.dtype == torch.float32:
            precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
        else:
            precision = "ieee"
        self.k.hidden_sums_kernel[(triton_cdiv(n, block_m),)](
            hidden,
            weight,
            weight if bias is None else bias,  # an unused pointer when there is no bias
            labels,
            sums.m,
            sums.s,
            sums.t,
            sums.u,
            sums.w,
            label_logits,
            n,
            vocab,
            dim,
            hidden.stride(0),
            weight.stride(0),
            inv_tau,
            HAS_BIAS=bias is not None,
            ROUND=weight.dtype in (torch.float16, torch.bfloat16),
            ACC=self._acc(cdtype),
            PRECISION=precision,
            UPCAST=interpreted and weight.dtype == torch.bfloat16,
            BF16_RTNE=interpreted and weight.dtype == torch.bfloat16,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=max(16, min(block_k, triton_next_power_of_2(dim))),
            num_warps=8,
        )
        return sums, label_logits

    def block_grad(self, logits, start, per_row, inv_tau, chunk_rows):
        """The block's gradient written over its logits, in their dtype (as the matmuls take it)."""
        rows = logits.shape[0]
        offsets = torch.arange(rows, device=logits.device) * logits.stride(0)
        block_rows = tuple(t.narrow(0, start, rows) for t in per_row)
        self._grad(logits, offsets, logits, offsets, block_rows, inv_tau)
        return logits


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


TORCH = TorchBackend()
COMPILED = CompiledBackend()
