"""The one dtype rule of the core: statistics are fp32 whatever the input, and fp64 stays fp64."""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 input; fp32 for every other floating dtype (fp16, bf16, fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
