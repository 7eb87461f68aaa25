"""Checkpoints: safetensors weights, optimiser and scheduler, RNG states, step and data position.

Layout: RUN_DIR/checkpoints/step-N/{model.safetensors, optimizer.pt, rng.json, state.json,
digest.json}, plus reference.safetensors in a run that resets its KL reference
(`kl_ref(reset_every=N)`: the reference is then not the initial policy, so it is saved).
Nothing in a checkpoint is unpickled: `optimizer.pt` holds only tensors and plain values and is
read with `torch.load(weights_only=True)`; the RNG states are JSON (the torch states as base64
bytes). A checkpoint is written into a temporary folder, `digest.json` (the
sha256 of every other file) last, and the folder is renamed into place, so a crash never leaves
a half-written `step-N`. Loading verifies the digest; `latest_checkpoint` skips damaged
checkpoints with a warning and returns the newest intact one. Folders that are not ours
(`step-abc`, notes) are ignored; temporary folders of interrupted writes are removed.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from entropy_dynamics._safe_load import load_tensors, short_error

FILES = ("model.safetensors", "optimizer.pt", "rng.json", "state.json")
REFERENCE = "reference.safetensors"  # only in checkpoints of runs that reset their KL reference
DIGEST = "digest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-step-"


class CheckpointError(ValueError):
    """A checkpoint that is damaged, foreign or not loadable; the message names the file."""


def rng_state(generator: torch.Generator | None = None) -> dict:
    """The python, numpy and torch RNG states (and the sampler's generator) as JSON values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    if generator is not None:
        state["generator"] = _b64(generator.get_state())
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Restore what `rng_state` returned (KeyError / TypeError / ValueError on a malformed one)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((str(kind), np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
    if generator is not None and "generator" in state:
        generator.set_state(_unb64(state["generator"]))


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    model,
    optimizer,
    scheduler=None,
    state: dict | None = None,
    generator: torch.Generator | None = None,
    method=None,
    reference=None,
    keep_last: int = 3,
) -> Path:
    """Write checkpoints/step-{step}; keep the newest `keep_last` (0 = keep all). Returns its path.

    `reference`: the KL reference model, saved as reference.safetensors (pass it only when the
    run resets its reference; otherwise the reference is the initial policy, rebuilt on resume).

    Raises OSError (naming the folder) when the disk fails; no partial folder is left.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    final = root / f"step-{step}"
    tmp = root / f"{_TMP_PREFIX}{step}-{os.getpid()}"
    tmp.mkdir()
    try:
        _write_files(tmp, model, optimizer, scheduler, state={"step": step, **(state or {})},
                     generator=generator, method=method, reference=reference)  # fmt: skip
    except Exception as err:  # a full or failing disk: no partial folder is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        code = getattr(err, "errno", None) or (
            errno.ENOSPC if "No space left" in str(err) else errno.EIO
        )
        raise OSError(
            code, f"cannot write checkpoint step-{step}: {short_error(err)}", str(final)
        ) from None
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_files(tmp: Path, model, optimizer, scheduler, *, state: dict, generator, method,
                 reference=None) -> None:  # fmt: skip
    from safetensors.torch import save_model

    save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
    names = FILES
    if reference is not None:
        save_model(reference, str(tmp / REFERENCE))
        names = (*FILES, REFERENCE)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "method": {} if method is None else method.state_dict(),  # tensors only
        },
        tmp / "optimizer.pt",
    )
    _write_json(tmp / "rng.json", rng_state(generator))
    _write_json(tmp / "state.json", state)
    _write_json(tmp / DIGEST, {name: _sha256(tmp / name) for name in names})  # last


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete checkpoints/.tmp-step-* folders left by interrupted writes; returns them.

    Only one process trains in a run directory at a time (the trainer holds RUN_DIR/.lock), so
    every temporary folder found here belongs to a write that never finished.
    """
    root = Path(run_dir) / "checkpoints"
    stale = sorted(root.glob(f"{_TMP_PREFIX}*")) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def checkpoint_step(path: str | Path) -> int | None:
    """N for a folder named step-N, else None (not one of ours)."""
    match = _STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Folders checkpoints/step-N that hold a digest (written last), oldest first.

    Anything else under checkpoints/ (step-abc, temporary folders, notes) is not ours and ignored.
    """
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if checkpoint_step(p) is not None and p.is_dir() and (p / DIGEST).is_file()
    ]
    return sorted(found, key=checkpoint_step)


def verify_checkpoint(path: str | Path) -> dict:
    """Check the digest and state.json of one checkpoint; returns state.json, raises CheckpointError."""
    path = Path(path)
    step = checkpoint_step(path)
    if step is None or not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder (expected checkpoints/step-N)")
    try:
        expected = json.loads((path / DIGEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {DIGEST} (an incomplete or older checkpoint)") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}/{DIGEST}: unreadable ({err})") from None
    if not isinstance(expected, dict) or sorted(expected) not in (
        sorted(FILES),
        sorted((*FILES, REFERENCE)),
    ):
        raise CheckpointError(
            f"{path}/{DIGEST}: must list exactly {', '.join(FILES)} (and {REFERENCE} for a run "
            "that resets its KL reference)"
        )
    for name in sorted(expected):
        try:
            actual = _sha256(path / name)
        except OSError as err:
            raise CheckpointError(f"{path}/{name}: unreadable ({err.strerror or err})") from None
        if actual != expected[name]:
            raise CheckpointError(f"{path}/{name}: contents do not match {DIGEST} (damaged)")
    return _validated_state(path, step)


def _validated_state(path: Path, step: int) -> dict:
    try:
        state = json.loads((path / "state.json").read_text())
    except ValueError as err:
        raise CheckpointError(f"{path}/state.json: not JSON ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}/state.json: must hold a JSON object")
    for name in ("step", "nonfinite"):
        value = state.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(
                f"{path}/state.json: {name}={value!r} is invalid; valid: an integer >= 0"
            )
    if state.get("step") != step:
        raise CheckpointError(
            f"{path}/state.json: step={state.get('step')!r} does not match the folder step-{step}"
        )
    return state


def latest_checkpoint(run_dir: str | Path, *, warn=None) -> Path | None:
    """The newest checkpoint that verifies; damaged newer ones are skipped with `warn(message)`."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            if warn is not None:
                warn(f"skipping damaged checkpoint: {err}")
            continue
        return path
    return None


def load_checkpoint(
    path: str | Path,
    *,
    model,
    optimizer=None,
    scheduler=None,
    generator: torch.Generator | None = None,
    method=None,
    reference=None,
    restore_rng: bool = True,
) -> dict:
    """Verify, then load weights (and optimiser, scheduler, RNG states when given); returns state.json.

    `reference`: the KL reference model, loaded from reference.safetensors when the checkpoint
    has one (a run that resets its reference); without that file it is left as it is (the
    initial policy, which a run that never reset still has).

    Raises CheckpointError (naming the file) for a damaged checkpoint, one whose files do not
    fit `model` / `optimizer`, or one holding anything but tensors and plain values.
    """
    from safetensors.torch import load_model

    path = Path(path)
    state = verify_checkpoint(path)
    try:
        load_model(model, str(path / "model.safetensors"))
    except Exception as err:  # safetensors raises several types for foreign or mismatched files
        raise CheckpointError(
            f"{path}/model.safetensors: does not fit this model ({short_error(err)}); was the run "
            "trained with another model config?"
        ) from None
    if reference is not None and (path / REFERENCE).is_file():
        try:
            load_model(reference, str(path / REFERENCE))
        except Exception as err:  # as for the policy's weights
            raise CheckpointError(
                f"{path}/{REFERENCE}: does not fit this model ({short_error(err)})"
            ) from None
    if optimizer is not None:
        saved = _load_tensors(path / "optimizer.pt")
        try:
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved["scheduler"] is not None:
                scheduler.load_state_dict(saved["scheduler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{path}/optimizer.pt: does not fit this optimiser ({short_error(err)})"
            ) from None
        if method is not None:
            try:
                method.load_state_dict(saved.get("method", {}))
            except ValueError as err:
                raise CheckpointError(
                    f"{path}/optimizer.pt: the method state does not fit {method.spec} ({err})"
                ) from None
    if restore_rng:
        try:
            set_rng_state(json.loads((path / "rng.json").read_text()), generator)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{path}/rng.json: malformed RNG state ({short_error(err)})"
            ) from None
    return state


def _load_tensors(file: Path) -> dict:
    """torch.load with weights_only=True: tensors and plain values only, never code."""
    saved = load_tensors(file, what="torch file", error=CheckpointError)
    if not isinstance(saved, dict) or "optimizer" not in saved:
        raise CheckpointError(f"{file}: expected a dict with 'optimizer' and 'scheduler'")
    return saved
