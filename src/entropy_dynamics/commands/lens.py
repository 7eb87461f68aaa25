"""`entropy-dynamics lens RUN_DIR`: the unified lens on a training batch saved by the trainer.

The trainer saves RUN_DIR/batches/step-N.pt every `logging.save_batch_every` steps (the
TokenBatch with S_* and N, and the run's plan). This reads one and prints, for every preset
method, which tokens it would drop, clip, penalise or reweight and their predicted entropy
contribution `-lr r A (S - N)` (`lens.entropy_lens`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from entropy_dynamics._safe_load import load_tensors, short_error
from entropy_dynamics.train.config import load_config

_BATCH_FILE = re.compile(r"^step-(\d+)\.pt$")


def saved_batches(run_dir: Path) -> dict[int, Path]:
    """step -> file of every saved batch of a run."""
    folder = Path(run_dir) / "batches"
    found = {}
    for path in folder.glob("step-*.pt") if folder.exists() else []:
        match = _BATCH_FILE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def load_batch(path: Path):
    """(TokenBatch, saved dict) from a batches/step-N.pt file.

    Read with `torch.load(weights_only=True)`: only tensors and plain values, never code. A file
    that holds anything else, or not the fields the trainer writes, raises ValueError naming it.
    """
    import dataclasses

    import torch

    from entropy_dynamics.methods import TokenBatch

    saved = load_tensors(path, what="batch file")
    names = {f.name for f in dataclasses.fields(TokenBatch)}
    batch = saved.get("batch") if isinstance(saved, dict) else None
    if not isinstance(batch, dict) or not set(batch) <= names:
        raise ValueError(
            f"{path}: not a saved training batch; expected a dict whose 'batch' holds "
            f"{', '.join(sorted(names))}"
        )
    mask = batch.get("mask")
    for name, value in batch.items():
        if value is None and name in ("baseline", "ref_logprobs"):
            continue
        if (
            not isinstance(value, torch.Tensor)
            or value.ndim != 2
            or (isinstance(mask, torch.Tensor) and value.shape != mask.shape)
        ):
            raise ValueError(f"{path}: batch field {name!r} must be a [B, T] tensor like 'mask'")
    try:
        return TokenBatch(**batch), saved
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid training batch ({short_error(err)})") from None


def run_lens(run_dir: Path, *, step: int | None = None, out: str | None = None) -> int:
    """Print the lens table for one saved batch (default: the latest); optionally write JSON."""
    from entropy_dynamics import methods
    from entropy_dynamics.lens import entropy_lens

    batches = saved_batches(run_dir)
    if not batches:
        raise ValueError(
            f"run_dir {run_dir}: no batches/step-N.pt; train with logging.save_batch_every=N"
        )
    if step is None:
        step = max(batches)
    if step not in batches:
        raise ValueError(f"step={step}: no saved batch; saved steps: {sorted(batches)}")
    batch, saved = load_batch(batches[step])
    lr = load_config(Path(run_dir) / "config.yaml").optim.lr
    specs = list(dict.fromkeys([*methods.names("preset"), saved.get("method") or "grpo"]))
    lens = entropy_lens(batch, lr=lr, methods=specs)
    print(f"{run_dir} step {step} (trained with {saved.get('method')!r})")
    print(lens.format_table())
    if out:
        result = {
            "run_dir": str(run_dir),
            "step": step,
            "lr": lr,
            "num_tokens": int(lens.num_tokens),
            "total": float(lens.total),
            "quadrants": {k: [float(c), float(s)] for k, (c, s) in lens.quadrants.items()},
            "methods": {
                spec: {kind: [float(x) for x in values] for kind, values in kinds.items()}
                for spec, kinds in lens.methods.items()
            },
        }
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0
