"""Argument checks shared by the method parts: each raises ValueError naming the argument."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import DENOMINATORS


def check_number(
    owner: str, name: str, value, *, low=None, high=None, low_open=False, high_open=False
) -> float:
    """``value`` as a float, checked to lie in the interval given by low/high (open or closed)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = (
            f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        )
        raise ValueError(f"{owner}: {name} must lie in {interval}, got {value!r}")
    return float(value)


def check_choice(owner: str, name: str, value, choices: tuple[str, ...]) -> str:
    """``value`` checked to be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")
    return value


def check_denominator(owner: str, value) -> str:
    """A filter's ``denominator`` choice (see ``base.DENOMINATORS``)."""
    return check_choice(owner, "denominator", value, DENOMINATORS)


def check_same_shape(owner: str, **tensors: Tensor | None) -> None:
    """Every given tensor has the same shape; ``mask`` (if given) is bool."""
    shapes = {}
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{owner}: {name} must be a tensor, got {type(tensor).__name__}")
        shapes[name] = tuple(tensor.shape)
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"{owner}: tensors must share one shape [B, T], got {listed}")
    mask = tensors.get("mask")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"{owner}: mask must be a bool tensor (True = valid), got {mask.dtype}")
