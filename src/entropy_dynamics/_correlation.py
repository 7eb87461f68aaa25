"""Pearson's correlation of two samples in float64: the one numpy definition of the project."""

from __future__ import annotations

import math

import numpy as np


def pearson(x, y) -> float:
    """``sum(dx dy) / sqrt(sum(dx^2) sum(dy^2))`` of two equal-length 1-D samples (float64).

    NaN when fewer than two points or either sample is constant (no correlation is defined).
    The trainer's probe has its own tensor version (`train/probe.py`), on the device.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape} and {y.shape}")
    if x.size < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
    return float((dx * dy).sum() / denom) if denom > 0 and math.isfinite(denom) else float("nan")
