"""Loading torch files that a user or a run directory supplies, without ever running code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any


def short_error(err: BaseException, limit: int = 200) -> str:
    """An exception as one line of at most ``limit`` characters, for a user-facing message."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def load_tensors(path: str | Path, *, what: str, error: type[Exception] = ValueError) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain values only, never code.

    A file holding other Python objects (perhaps crafted) raises ``error`` saying it was refused
    and that nothing ran; any other failure (a damaged or foreign file: the unpickler raises
    KeyError, IndexError, ... depending on the bytes) raises ``error`` naming ``what`` it should
    have been. Either way the user gets one line.
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise error(
            f"{path}: refused to load: it holds Python objects other than tensors and plain "
            "values (it may have been crafted); nothing from it was run"
        ) from None
    except Exception as err:  # whatever the bytes make the unpickler raise: one line
        raise error(f"{path}: not a readable {what} ({short_error(err)})") from None
