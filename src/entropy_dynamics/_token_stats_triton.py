"""Triton kernels behind `token_stats(..., backend="triton")`: the row sums and the logits gradient.

The kernels only stream the logits; every formula that turns the sums into statistics, and the
per-row gradient coefficients, lives in `_token_stats_kernels` (module docstring there). Each
row yields, with `m = max_i z_i` and `x_i = (z_i - m) / tau`, the sums
`s = sum e^x, t = sum e^x x, u = sum e^2x, w = sum e^2x x` and the label's logit, read in ONE
pass: the accumulators are rescaled whenever the running max grows (`m -> m'`, `d = (m - m') /
tau`, `a = e^d`): `s -> a s`, `t -> a (t + d s)`, `u -> a^2 u`, `w -> a^2 (w + d u)`.

Accumulation is fp32 for fp16 / bf16 / fp32 input and fp64 for fp64 input (`ACC`). Only the
counted rows are launched (one program per row, or per `BLOCK_M` rows from hidden states), at
element offsets the caller computes, so a strided view such as `logits[:, :-1]` is read in
place and ignored rows are never touched. Written for triton >= 3.6 (no newer API).

On CPU tensors the kernels run only under Triton's interpreter (`TRITON_INTERPRET=1` in the
environment before this module is imported); `INTERPRETED` says which mode they were built in.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _rescale(m, s, t, u, w, new_m, inv_tau):
    """The accumulators of max `m` re-expressed at max `new_m >= m` (see the module docstring)."""
    # While nothing has been read (m = -inf) the sums are 0 and any finite d keeps them 0.
    d = tl.where(m == float("-inf"), 0.0, (m - new_m) * inv_tau)
    a = tl.exp(d)
    return a * s, a * (t + d * s), a * a * u, a * a * (w + d * u)


@triton.jit
def _round_to(x, dtype: tl.constexpr, BF16_RTNE: tl.constexpr):
    """`x.to(dtype)`, rounding to nearest. `BF16_RTNE` rounds fp32 -> bf16 by hand first: the
    interpreter (triton 3.6-3.9) truncates that cast where the GPU rounds to nearest even."""
    if BF16_RTNE:
        bits = x.to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        x = (bits & 0xFFFF0000).to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def logits_sums_kernel(
    z_ptr,
    row_offset_ptr,
    label_ptr,
    m_ptr,
    s_ptr,
    t_ptr,
    u_ptr,
    w_ptr,
    label_logit_ptr,
    vocab,
    stride_v,
    inv_tau,
    ACC: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Row sums of one counted row of logits (program `i` reads row `row_offset[i]`)."""
    row = tl.program_id(0)
    base = z_ptr + tl.load(row_offset_ptr + row)
    label = tl.load(label_ptr + row)
    zero = tl.zeros((), dtype=ACC)
    m, s, t, u, w = zero + float("-inf"), zero, zero, zero, zero
    for start in range(0, vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        ok = cols < vocab
        z = tl.load(base + cols * stride_v, mask=ok, other=float("-inf")).to(ACC)
        new_m = tl.maximum(m, tl.max(z, axis=0))
        s, t, u, w = _rescale(m, s, t, u, w, new_m, inv_tau)
        x = tl.where(ok, (z - new_m) * inv_tau, 0.0)
        e = tl.where(ok, tl.exp(x), 0.0)
        ee = e * e
        s += tl.sum(e, axis=0)
        t += tl.sum(e * x, axis=0)
        u += tl.sum(ee, axis=0)
        w += tl.sum(ee * x, axis=0)
        m = new_m
    tl.store(m_ptr + row, m)
    tl.store(s_ptr + row, s)
    tl.store(t_ptr + row, t)
    tl.store(u_ptr + row, u)
    tl.store(w_ptr + row, w)
    tl.store(label_logit_ptr + row, tl.load(base + label * stride_v).to(ACC))


@triton.jit
def logits_grad_kernel(
    z_ptr,
    z_row_offset_ptr,
    grad_ptr,
    grad_row_offset_ptr,
    label_ptr,
    m_ptr,
    log_s_ptr,
    coef_x_ptr,
    coef_const_ptr,
    grad_label_ptr,
    vocab,
    stride_v,
    inv_tau,
    ACC: tl.constexpr,
    BF16_RTNE: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """`dL/dz_j = p_j (coef_x x_j + coef_const) + [j = k] grad_label` for one counted row.

    `grad` may be `z` itself (each element is read before it is written, by the same program).
    """
    row = tl.program_id(0)
    z_base = z_ptr + tl.load(z_row_offset_ptr + row)
    g_base = grad_ptr + tl.load(grad_row_offset_ptr + row)
    label = tl.load(label_ptr + row)
    m = tl.load(m_ptr + row)
    log_s = tl.load(log_s_ptr + row)
    coef_x = tl.load(coef_x_ptr + row)
    coef_const = tl.load(coef_const_ptr + row)
    grad_label = tl.load(grad_label_ptr + row)
    for start in range(0, vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        ok = cols < vocab
        z = tl.load(z_base + cols * stride_v, mask=ok, other=0.0).to(ACC)
        x = (z - m) * inv_tau
        p = tl.exp(x - log_s)
        g = p * (coef_x * x + coef_const) + tl.where(cols == label, grad_label, 0.0)
        tl.store(g_base + cols, _round_to(g, grad_ptr.dtype.element_ty, BF16_RTNE), mask=ok)


@triton.jit
def hidden_sums_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    label_ptr,
    m_ptr,
    s_ptr,
    t_ptr,
    u_ptr,
    w_out_ptr,
    label_logit_ptr,
    rows,
    vocab,
    dim,
    stride_h,
    stride_w,
    inv_tau,
    HAS_BIAS: tl.constexpr,
    ROUND: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BF16_RTNE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Row sums of `BLOCK_M` rows of `hidden @ weight.T (+ bias)`, tiles computed and dropped.

    `ROUND` rounds each logits tile to the weights' dtype first, so the statistics are those
    of the logits the output layer returns (`torch.addmm` in that dtype), as on the torch path.
    """
    block = tl.program_id(0)
    row = block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = row < rows
    # Element offsets in int64: rows x D (or V x D) reaches 2^31 at 262,144 rows of D = 8192,
    # where int32 `row * stride_h` would wrap to another address.
    h_rows = h_ptr + row.to(tl.int64)[:, None] * stride_h
    label = tl.load(label_ptr + row, mask=row_ok, other=0)
    zero = tl.zeros((BLOCK_M,), dtype=ACC)
    m, s, t, u, w = zero + float("-inf"), zero, zero, zero, zero
    label_logit = zero
    for start in range(0, vocab, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < vocab
        w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_w
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        for k0 in range(0, dim, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < dim
            h = tl.load(
                h_rows + ks[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            wt = tl.load(
                w_cols + ks[:, None],
                mask=col_ok[None, :] & k_ok[:, None],
                other=0.0,
            )
            if UPCAST:  # exact; the interpreter's dot multiplies bf16 as raw 16-bit integers
                h, wt = h.to(ACC), wt.to(ACC)
            acc = tl.dot(h, wt, acc, input_precision=PRECISION, out_dtype=ACC)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
        if ROUND:
            acc = _round_to(acc, w_ptr.dtype.element_ty, BF16_RTNE).to(ACC)
        z = tl.where(col_ok[None, :], acc, float("-inf"))
        label_logit += tl.sum(tl.where(cols[None, :] == label[:, None], acc, 0.0), axis=1)
        new_m = tl.maximum(m, tl.max(z, axis=1))
        s, t, u, w = _rescale(m, s, t, u, w, new_m, inv_tau)
        x = tl.where(col_ok[None, :], (z - new_m[:, None]) * inv_tau, 0.0)
        e = tl.where(col_ok[None, :], tl.exp(x), 0.0)
        ee = e * e
        s += tl.sum(e, axis=1)
        t += tl.sum(e * x, axis=1)
        u += tl.sum(ee, axis=1)
        w += tl.sum(ee * x, axis=1)
        m = new_m
    tl.store(m_ptr + row, m, mask=row_ok)
    tl.store(s_ptr + row, s, mask=row_ok)
    tl.store(t_ptr + row, t, mask=row_ok)
    tl.store(u_ptr + row, u, mask=row_ok)
    tl.store(w_out_ptr + row, w, mask=row_ok)
    tl.store(label_logit_ptr + row, label_logit, mask=row_ok)


# The interpreter replaces `triton.jit` functions at decoration time, so this is fixed at import.
INTERPRETED = type(logits_sums_kernel).__name__ == "InterpretedFunction"
