"""The one way tests build a ``TokenBatch``: name the fields a case is about, the rest are filled.

    batch = token_batch([[True, True, False]], advantages=[1.0], discriminator=S)

``mask``: bool ``[B, T]`` (a tensor or nested lists). Every other field may be a tensor of the
mask's shape, nested lists, or a number (filled over ``[B, T]``); ``advantages`` may also be one
value per row (``[B]``, broadcast over T). Defaults: ``advantages``, ``logprobs``, ``entropy``,
``discriminator`` zeros; ``old_logprobs`` = ``logprobs`` (on-policy); ``baseline`` (N) and
``ref_logprobs`` absent unless given. The dtype is that of the first float tensor given, else
``dtype`` (float32).
"""

from __future__ import annotations

import torch

from entropy_dynamics.methods import TokenBatch

_FIELDS = ("advantages", "logprobs", "old_logprobs", "entropy", "discriminator", "baseline",
           "ref_logprobs")  # fmt: skip


def token_batch(mask, advantages=None, logprobs=None, *, dtype=torch.float32, **fields):
    """A ``TokenBatch`` [B, T] from ``mask`` and the named fields (see the module docstring)."""
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise TypeError(f"token_batch: unknown fields {sorted(unknown)}; valid: {_FIELDS}")
    mask = torch.as_tensor(mask, dtype=torch.bool)
    given = {"advantages": advantages, "logprobs": logprobs, **fields}
    for value in given.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            dtype = value.dtype
            break

    B, T = mask.shape

    def full(name: str, value) -> torch.Tensor:
        if isinstance(value, int | float):
            return torch.full((B, T), float(value), dtype=dtype)
        value = torch.as_tensor(value, dtype=dtype)
        if value.shape == (B, T):
            return value
        if name == "advantages" and value.shape == (B,):  # one advantage per row
            return value[:, None].expand(B, T).clone()
        if value.shape == (T,) and B == 1:
            return value[None]
        raise ValueError(f"token_batch: {name} has shape {tuple(value.shape)}, mask {(B, T)}")

    values = {name: None if v is None else full(name, v) for name, v in given.items()}
    for name in ("advantages", "logprobs", "entropy", "discriminator"):
        if values.get(name) is None:
            values[name] = torch.zeros(mask.shape, dtype=dtype)
    if values.get("old_logprobs") is None:
        values["old_logprobs"] = values["logprobs"]
    return TokenBatch(mask=mask, **values)
