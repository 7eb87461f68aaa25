"""_huge_pages.empty: a plain tensor, whose memory the kernel backs with 2 MiB pages on Linux."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from entropy_dynamics import _huge_pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _anon_huge_kib(tensor: torch.Tensor) -> int:
    """AnonHugePages of this process's mappings that overlap `tensor`'s memory (/proc/self/smaps;
    madvise splits a mapping where the advised range starts and ends)."""
    low = tensor.data_ptr()
    high = low + tensor.numel() * tensor.element_size()
    total, overlaps = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(part, 16) for part in head.split("-"))
            overlaps = start < high and low < end
        elif overlaps and head == "AnonHugePages:":
            total += int(line.split()[1])
    return total


def test_small_and_accelerator_free_tensors_are_plain_empty():
    small = _huge_pages.empty((3, 5), torch.bfloat16, torch.device("cpu"))
    assert small.shape == (3, 5) and small.dtype == torch.bfloat16 and small.is_contiguous()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise is Linux's")
def test_a_large_gradient_buffer_is_backed_by_huge_pages():
    if not THP.exists() or "[never]" in THP.read_text():
        pytest.skip("transparent huge pages are switched off on this machine")
    shape = (64, 1 << 18)  # 64 MiB of fp32
    plain = torch.empty(shape)
    plain.fill_(1.0)
    advised = _huge_pages.empty(shape, torch.float32, torch.device("cpu"))
    advised.fill_(1.0)  # the first touch maps the pages
    assert advised.shape == shape and advised.is_contiguous()
    assert _anon_huge_kib(advised) >= 32 * 1024  # most of the 64 MiB
    if "[always]" not in THP.read_text():  # with "madvise" only the advised range gets them
        assert _anon_huge_kib(plain) < 4 * 1024
