"""Checkpoints: safetensors weights, optimiser and scheduler, RNG states, step and data position.

Layout: RUN_DIR/checkpoints/step-N/{model.safetensors, optimizer.pt, rng.pt, state.json}.
A checkpoint is written into a temporary folder and renamed into place, so a crash never
leaves a half-written `step-N`; `latest_checkpoint` only returns folders with `state.json`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def rng_state(generator: torch.Generator | None = None) -> dict:
    """The python, numpy and torch RNG states (and the sampler's generator when given)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def save_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    model,
    optimizer,
    scheduler=None,
    state: dict | None = None,
    generator: torch.Generator | None = None,
    keep_last: int = 3,
) -> Path:
    """Write checkpoints/step-{step}; keep the newest `keep_last` (0 = keep all). Returns its path."""
    from safetensors.torch import save_model

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
        },
        tmp / "optimizer.pt",
    )
    torch.save(rng_state(generator), tmp / "rng.pt")
    with open(tmp / "state.json", "w") as f:
        json.dump({"step": step, **(state or {})}, f)
        f.flush()
        os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    found = [p for p in root.glob("step-*") if (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(
    path: str | Path,
    *,
    model,
    optimizer=None,
    scheduler=None,
    generator: torch.Generator | None = None,
    restore_rng: bool = True,
) -> dict:
    """Load weights (and optimiser, scheduler, RNG states when given); returns state.json."""
    from safetensors.torch import load_model

    path = Path(path)
    load_model(model, str(path / "model.safetensors"))
    if optimizer is not None:
        saved = torch.load(path / "optimizer.pt", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved["scheduler"] is not None:
            scheduler.load_state_dict(saved["scheduler"])
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", weights_only=False), generator)
    return json.loads((path / "state.json").read_text())
