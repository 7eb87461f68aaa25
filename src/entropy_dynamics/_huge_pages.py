"""Large fresh CPU tensors backed by transparent huge pages (Linux), for gradients written once.

A fresh tensor's memory is mapped lazily: the first write to each 4 KiB page faults into the
kernel, which zeroes the page. For the `[B, T, V]` gradient of the logits that fault costs about
twice as much as computing the gradient itself (docs/performance.md). Advising the kernel to
back the range with 2 MiB pages (`madvise(MADV_HUGEPAGE)`, what PyTorch's own
`THP_MEM_ALLOC_ENABLE=1` does for every allocation) faults 512 times less often. Where the
advice is unavailable (another OS, huge pages switched off) the tensor is the same, only
slower to fill.
"""

from __future__ import annotations

import ctypes
import sys

import torch
from torch import Tensor

HUGE_PAGE_BYTES = 1 << 21
MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux
# glibc serves allocations of 32 MiB and more with a fresh mmap (its largest mmap threshold),
# so the advised pages are untouched; smaller tensors may reuse heap memory already faulted.
MIN_BYTES = 1 << 25


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_MADVISE = _load_madvise()


def empty(shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """`torch.empty(shape)`; on Linux CPU, from 32 MiB on, with its whole 2 MiB pages advised
    as huge pages before anything touches them."""
    tensor = torch.empty(shape, dtype=dtype, device=device)
    nbytes = tensor.numel() * tensor.element_size()
    if _MADVISE is None or tensor.device.type != "cpu" or nbytes < MIN_BYTES:
        return tensor
    start = -(-tensor.data_ptr() // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    length = (tensor.data_ptr() + nbytes - start) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if length > 0:
        _MADVISE(start, length, MADV_HUGEPAGE)  # advice only: a refusal leaves 4 KiB pages
    return tensor
