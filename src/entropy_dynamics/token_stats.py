"""Per-token statistics of sampled tokens (log p_k, H, S_*, N), streamed in row chunks.

For every position of a batch, with `p = softmax(z / temperature)` over the vocabulary and the
sampled (label) token `k` (PAPER.md section 2):

    logprobs       log p_k
    entropy        H   = -sum_i p_i log p_i
    discriminator  S_* = p_k (H + log p_k)                      (Thm 3.2)
    baseline       N   = sum_i p_i^2 (H + log p_i)
                       = H sum_i p_i^2 + sum_i p_i^2 log p_i    (Thm 3.3)

The logits are read in chunks of rows and every statistic comes out of ONE pass of `exp` per
chunk (all four row sums at once), so the extra memory is O(chunk x V), never O(B x T x V).
From hidden states, each chunk's logits are computed, used and dropped, in the forward and again
in the backward pass. Gradients flow to the inputs through `logprobs` and `entropy`;
`discriminator` and `baseline` are statistics for masks and diagnostics and carry none.

Example:
    >>> z = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))      # [B=1, T=1, V=3]
    >>> stats = token_stats(z, torch.tensor([[0]]))
    >>> stats.entropy                                           # 1.5 ln 2
    tensor([[1.0397]])
    >>> stats.discriminator                                     # 0.5 (1.5 ln 2 - ln 2)
    tensor([[0.1733]])
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from . import _token_stats_compiled as compiled
from ._token_stats_autograd import HiddenStats, LogitsStats
from ._token_stats_backends import COMPILED, TORCH, TritonBackend
from ._token_stats_kernels import compute_dtype_for, default_block_rows, valid_runs

__all__ = ["TokenStats", "discriminator_from_logprobs", "token_stats", "token_stats_from_hidden"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class TokenStats(NamedTuple):
    """Per-token statistics, each `[B, T]` (fp32; fp64 for fp64 input), 0 at ignored positions."""

    logprobs: Tensor  # log p_k under softmax(z / temperature); gradient flows
    entropy: Tensor  # H; gradient flows
    discriminator: Tensor  # S_* = p_k (H + log p_k); no gradient
    baseline: Tensor  # N = sum_i p_i^2 (H + log p_i); no gradient


def token_stats(
    logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
) -> TokenStats:
    """Log-prob, entropy, discriminator `S_*` and baseline `N` of each labelled token.

    Args:
        logits: `[B, T, V]` (any leading dims `[..., V]`), fp16 / bf16 / fp32 / fp64. Read in
            place, never copied whole; a sliced view such as `logits[:, :-1]` is fine.
        labels: `[B, T]` integer token ids `k` in `[0, V)` at counted positions.
        temperature: `p = softmax(logits / temperature)`; must be > 0.
        chunk_size: rows of `[V]` logits per chunk (default: about 0.5 M logits on CPU, 3 rows
            at V = 151936, or 64 M compiled; 16 M on an accelerator). Results do not depend on
            it beyond float rounding.
        mask: optional `[B, T]` bool (or 0/1 integer): True for counted positions.
        ignore_index: positions whose label equals it are ignored as well.
        backend: `"auto"` (Triton on CUDA tensors when triton is importable; on CPU
            `"inductor"` for passes of at least 16 M logits, `"torch"` otherwise, see
            `ENTROPY_DYNAMICS_COMPILE` in docs/token_stats.md), `"torch"` (row chunks of
            eager torch ops; `chunk_size` applies), `"inductor"` (the same row chunks, each
            reduced by loops compiled by `torch.compile`, cached across processes) or `"triton"`
            (fused kernels, one read of the logits forward and one more backward; on CPU
            tensors only under Triton's interpreter, `TRITON_INTERPRET=1`). Same results up
            to float rounding.

    Returns:
        `TokenStats(logprobs, entropy, discriminator, baseline)`, each `[B, T]`, fp32 (fp64 for
        fp64 logits): `log p_k`, `H = -sum_i p_i log p_i`, `S_* = p_k (H + log p_k)` (Thm 3.2),
        `N = H sum_i p_i^2 + sum_i p_i^2 log p_i` (Thm 3.3). Ignored positions hold 0 in every
        field and pass no gradient; their labels and logits are never read.

    Raises:
        ValueError: on a wrong type, dtype or shape, labels outside `[0, V)` at counted
            positions, NaN or +-inf logits in a counted row, `temperature <= 0`, `chunk_size <= 0`,
            an unknown `backend`, `backend="triton"` where Triton cannot run, or
            `backend="inductor"` where `torch.compile` cannot build its kernels.

    Differs from the paper: not in value. `N` and `S_*` are evaluated in forms algebraically
    equal to Thm 3.3 / 3.2 that avoid `log sum exp` rounding (see `_token_stats_kernels`), and
    the sampling temperature is explicit (the paper's `p` is the sampler's `softmax(z / T)`).
    """
    return logits_stats(logits, labels, temperature, chunk_size, mask, ignore_index, backend)


def logits_stats(logits, labels, temperature, chunk_size, mask, ignore_index, backend, split=None):
    """`token_stats`; with `split` (a `VocabRange`) the logits are one rank's vocabulary slice."""
    _check_tensor("logits", logits, "[B, T, V]", min_dim=2)
    vocab = logits.shape[-1]
    if split is not None:
        split.check(vocab, labels)
    valid, packed_labels = _check_labels(
        labels,
        logits.shape[:-1],
        vocab if split is None else split.vocab_size,
        mask,
        ignore_index,
        logits.device,
    )
    inv_tau = _inverse_temperature(temperature)
    kernels = resolve_backend(
        backend, logits.device, logits.dtype, elements=packed_labels.shape[0] * vocab
    )
    chunk_rows = _chunk_rows(chunk_size, kernels, logits.device, vocab)
    cdtype = compute_dtype_for(logits.dtype)
    part = None
    if split is not None:
        part, packed_labels = split.bind(packed_labels)
    outputs = LogitsStats.apply(
        logits, packed_labels, valid, valid_runs(valid), inv_tau, chunk_rows, cdtype, kernels, part
    )
    return TokenStats(*outputs)


def token_stats_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
) -> TokenStats:
    """`token_stats(hidden @ weight.T + bias, labels, ...)` without ever holding `[B, T, V]` logits.

    The counted positions are processed `chunk_size` rows at a time: a block's logits
    `[chunk_size, V]` are computed, reduced to the four statistics and dropped. The backward pass
    recomputes each block's logits and accumulates the gradients of `hidden`, `weight` and
    `bias` (in fp32 at least), so peak extra memory is about one block of logits plus, when
    `weight` needs a gradient, an fp32 `[V, D]` accumulator.

    Args:
        hidden: `[B, T, D]` final hidden states (any leading dims), fp16 / bf16 / fp32 / fp64.
        weight: `[V, D]` output layer (the `lm_head` weight), same dtype and device as `hidden`.
        labels: `[B, T]` integer token ids in `[0, V)` at counted positions.
        bias: optional `[V]` output bias, same dtype as `weight`.
        temperature: `p = softmax(logits / temperature)`; must be > 0.
        chunk_size: rows per logits block (default: about 64 M logits, 441 rows at V = 151936);
            the statistics inside a block use the `token_stats` chunking.
        mask, ignore_index: as in `token_stats`.
        backend: as in `token_stats`. With `"triton"` the forward pass computes `BLOCK_M x
            128` tiles of logits inside the kernel (`tl.dot`) and never stores a block; the
            backward pass recomputes `chunk_size` rows of logits at a time (cuBLAS), writes
            their gradient over them (in the weights' dtype) and multiplies it out.

    Returns:
        `TokenStats`, each `[B, T]`, equal to `token_stats` of the full logits up to rounding.

    Raises:
        ValueError: as `token_stats`, plus mismatched `D`, `V` or dtypes between the inputs.
    """
    return hidden_stats(
        hidden, weight, labels, bias, temperature, chunk_size, mask, ignore_index, backend
    )


def hidden_stats(
    hidden, weight, labels, bias, temperature, chunk_size, mask, ignore_index, backend, split=None
):
    """`token_stats_from_hidden`; with `split` (a `VocabRange`) `weight` holds one rank's rows."""
    _check_tensor("hidden", hidden, "[B, T, D]", min_dim=2)
    _check_tensor("weight", weight, "[V, D]", min_dim=2)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must have shape [V, D] with D = hidden.shape[-1] = "
            f"{hidden.shape[-1]}, got {tuple(weight.shape)}"
        )
    _check_same("weight", weight, hidden, "hidden")
    vocab = weight.shape[0]
    if split is not None:
        split.check(vocab, labels)
    if bias is not None:
        _check_tensor("bias", bias, "[V]", min_dim=1)
        if tuple(bias.shape) != (vocab,):
            raise ValueError(f"bias must have shape [V] = ({vocab},), got {tuple(bias.shape)}")
        _check_same("bias", bias, weight, "weight")
    valid, packed_labels = _check_labels(
        labels,
        hidden.shape[:-1],
        vocab if split is None else split.vocab_size,
        mask,
        ignore_index,
        hidden.device,
    )
    part = None
    if split is not None:
        part, packed_labels = split.bind(packed_labels)
    inv_tau = _inverse_temperature(temperature)
    kernels = resolve_backend(
        backend, hidden.device, weight.dtype, elements=packed_labels.shape[0] * vocab
    )
    inner_rows = kernels.chunk_rows(hidden.device, vocab)
    block_rows = (
        max(default_block_rows(hidden.device, vocab), inner_rows)
        if chunk_size is None
        else _chunk_rows(chunk_size, kernels, hidden.device, vocab)
    )
    rows = hidden.reshape(-1, hidden.shape[-1])  # [B*T, D]
    if packed_labels.shape[0] < valid.numel():
        rows = rows[valid]  # [n, D]: only counted positions reach the output layer
    stats = HiddenStats.apply(
        rows,
        weight,
        bias,
        packed_labels,
        valid,
        inv_tau,
        block_rows,
        min(inner_rows, block_rows),
        compute_dtype_for(weight.dtype),
        kernels,
        part,
    )
    shape = hidden.shape[:-1]
    return TokenStats(*(_unpack(valid, t, shape) for t in stats))


BACKENDS = ("auto", "torch", "inductor", "triton")


def resolve_backend(
    backend: str, device: torch.device, dtype: torch.dtype = torch.float32, *, elements: int = 0
):
    """The backend object for `backend` on `dtype` tensors of `device` (see `token_stats`);
    `elements` is the number of logits the pass reads, which decides `"auto"` on CPU."""
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
        )
    if backend == "inductor":
        return _compiled_backend(device, dtype)
    if backend == "auto" and device.type == "cpu":
        wanted = compiled.policy()
        big = elements >= compiled.COMPILE_MIN_ELEMENTS
        if wanted == "1" or (wanted == "auto" and big):
            return COMPILED if compiled.FUSED.ready(dtype, device, warn=True) else TORCH
        return TORCH
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return TORCH
    try:
        from . import _token_stats_triton as kernels
    except ImportError as err:
        if backend == "auto":
            return TORCH
        raise ValueError(
            f"backend='triton' needs the triton package (pip install 'triton>=3.6'): {err}"
        ) from err
    if device.type == "cpu" and not kernels.INTERPRETED:
        raise ValueError(
            "backend='triton' got CPU tensors, which Triton runs only in its interpreter: set "
            "TRITON_INTERPRET=1 in the environment before entropy_dynamics' Triton kernels are "
            "first imported (e.g. `TRITON_INTERPRET=1 python ...`), move the tensors to CUDA, "
            "or use backend='auto' / 'torch'"
        )
    return TritonBackend(kernels)


def _compiled_backend(device: torch.device, dtype: torch.dtype):
    if compiled.policy() == "0":
        raise ValueError(
            f"backend='inductor' asks for compiled kernels, but {compiled.ENV}=0 in the "
            "environment disables them: unset it, or use backend='torch' / 'auto'"
        )
    if not compiled.FUSED.ready(dtype, device, warn=False):
        raise ValueError(
            f"backend='inductor' needs torch.compile to build its kernels, which failed here "
            f"({compiled.FUSED.failure}); on CPU inductor needs a C++ compiler (the CXX "
            "environment variable, else g++); use backend='torch' or 'auto' meanwhile"
        )
    return COMPILED


def _unpack(valid: Tensor, packed: Tensor, shape: torch.Size) -> Tensor:
    """`[n]` values of the counted rows -> `shape`, 0 elsewhere (differentiable)."""
    if packed.shape[0] == valid.numel():
        return packed.view(shape)
    return packed.new_zeros(valid.shape).masked_scatter(valid, packed).view(shape)


def _check_tensor(name: str, value: object, shape: str, *, min_dim: int) -> None:
    if not isinstance(value, Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of shape {shape}, got {type(value).__name__}"
        )
    if value.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {value.dtype}")
    if value.dim() < min_dim or value.shape[-1] == 0:
        raise ValueError(
            f"{name} must have shape {shape} with a non-empty last dim, got {tuple(value.shape)}"
        )


def _check_same(name: str, value: Tensor, other: Tensor, other_name: str) -> None:
    if value.dtype != other.dtype or value.device != other.device:
        raise ValueError(
            f"{name} ({value.dtype}, {value.device}) must have the dtype and device "
            f"of {other_name} ({other.dtype}, {other.device})"
        )


def _check_labels(labels, shape, vocab, mask, ignore_index, device) -> tuple[Tensor, Tensor]:
    """Return `valid [B*T]` (bool) and the counted labels `[n]` (int64), row-major."""
    if (
        not isinstance(labels, Tensor)
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        got = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer torch.Tensor of shape [B, T], got {got}")
    if labels.shape != shape:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal the leading shape "
            f"{tuple(shape)} of the logits / hidden states"
        )
    if labels.device != device:
        raise ValueError(
            f"labels are on {labels.device} but the logits / hidden states on {device}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    valid = labels != ignore_index
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"mask must be a bool (or 0/1 integer) tensor of shape [B, T], got {got}"
            )
        if mask.shape != shape or mask.device != device:
            raise ValueError(
                f"mask must have shape {tuple(shape)} on {device}, got "
                f"{tuple(mask.shape)} on {mask.device}"
            )
        if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError(
                "mask must hold only 0 and 1 (or be bool), got other values, e.g. "
                f"{int(mask[(mask != 0) & (mask != 1)][0])}"
            )
        valid = valid & (mask != 0)
    valid = valid.reshape(-1)
    packed = labels.reshape(-1)[valid].long()
    if packed.numel() and (int(packed.min()) < 0 or int(packed.max()) >= vocab):
        raise ValueError(
            f"labels at counted positions must lie in [0, V) = [0, {vocab}), got "
            f"values in [{int(packed.min())}, {int(packed.max())}]; mark positions "
            f"to skip with ignore_index={ignore_index} or the mask"
        )
    return valid, packed


def _inverse_temperature(temperature: float) -> float:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return 1.0 / float(temperature)


def _chunk_rows(chunk_size: int | None, kernels, device: torch.device, vocab: int) -> int:
    if chunk_size is None:
        return kernels.chunk_rows(device, vocab)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(
            f"chunk_size must be a positive int (rows per chunk) or None, got {chunk_size!r}"
        )
    return chunk_size


def discriminator_from_logprobs(logprobs: Tensor, entropy: Tensor) -> Tensor:
    """`S_* = p_k (H + log p_k)` (PAPER.md sec. 2) from statistics an engine already has.

    For engines (verl) that hand over `log p_k` and `H` but not the logits.
    Args: logprobs `[B, T]`, entropy `[B, T]`. Returns `[B, T]` in their dtype.
    Differs from `token_stats`: no near-one-hot care (`p_k` comes from `exp(log p_k)`), so on
    rows with `p_k -> 1` the result carries fp32 rounding of `H + log p_k` (about 1e-7).
    """
    if logprobs.shape != entropy.shape:
        raise ValueError(
            f"logprobs shape {tuple(logprobs.shape)} must equal entropy shape {tuple(entropy.shape)}"
        )
    return logprobs.exp() * (entropy + logprobs)
