"""Claiming a run directory: one trainer at a time, never two runs mixed in one directory.

    with claim_run_dir(cfg, resume=False, overwrite=False, allow_config_change=False):
        ...  # train into cfg.logging.run_dir

A non-empty directory is refused unless `resume` (continue the run in it) or `overwrite` (empty
it first; only a directory that looks like a run). `resume` with a changed field of
`FIXED_ON_RESUME` is refused unless `allow_config_change`. While claimed, RUN_DIR/.lock is held
(`flock`), so a second trainer in the same directory is refused instead of interleaving.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from entropy_dynamics.train.config import TrainConfig, load_config, to_dict

LOCK = ".lock"
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "eval.jsonl", "checkpoints")
FIXED_ON_RESUME = (
    "method.spec", "method.advantage", "method.aggregation", "seed", "optim.lr",
    "rollout.group_size", "rollout.prompts_per_step", "task.name", "task.options", "model.name",
    "model.tiny",
)  # fmt: skip
"""Fields a resumed run must share with the run it continues (else it is another experiment)."""


@contextlib.contextmanager
def claim_run_dir(
    cfg: TrainConfig, *, resume: bool, overwrite: bool, allow_config_change: bool
) -> Iterator[Path]:
    """Create, lock and check cfg.logging.run_dir (see the module docstring); yields it."""
    run_dir = Path(cfg.logging.run_dir)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other; pass one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"logging.run_dir={str(run_dir)!r} is a file; give a directory path")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / LOCK, "a+")  # noqa: SIM115 (held until the context ends)
    except OSError as err:
        raise ValueError(
            f"logging.run_dir={str(run_dir)!r}: cannot write there ({err.strerror or err}); "
            "choose a writable directory"
        ) from None
    try:
        _lock(lock, run_dir)
        entries = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
        if entries and not resume:
            if not overwrite:
                raise ValueError(
                    f"logging.run_dir={str(run_dir)!r} is not empty (holds "
                    f"{_listing(entries)}); pass --resume to continue that run, --overwrite to "
                    "delete its contents and start afresh, or choose another directory"
                )
            _empty(run_dir, entries)
        if resume and not allow_config_change:
            _check_unchanged(cfg, run_dir)
        yield run_dir
    finally:
        lock.close()  # releases the flock


def _lock(lock, run_dir: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the directory checks still apply
        return
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ValueError(
            f"logging.run_dir={str(run_dir)!r} is in use by another training process; wait for "
            "it to finish or choose another directory"
        ) from None


def _listing(entries: list[str], shown: int = 4) -> str:
    more = f" and {len(entries) - shown} more" if len(entries) > shown else ""
    return ", ".join(entries[:shown]) + more


def _empty(run_dir: Path, entries: list[str]) -> None:
    """Delete a run's contents (--overwrite), refusing a directory that is not a run."""
    if not any(name in RUN_MARKERS for name in entries):
        raise ValueError(
            f"refusing --overwrite of logging.run_dir={str(run_dir)!r}: it does not look like a "
            f"run directory (none of {', '.join(RUN_MARKERS)}); empty it yourself or choose "
            "another directory"
        )
    for name in entries:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _check_unchanged(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse a resume whose FIXED_ON_RESUME fields differ from RUN_DIR/config.yaml."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    try:
        saved = to_dict(load_config(saved_path))
    except ValueError as err:
        raise ValueError(
            f"--resume: the run's own {saved_path} does not load ({err}); pass "
            "--allow-config-change to resume with the given configuration anyway"
        ) from None
    new = to_dict(cfg)
    changed = []
    for dotted in FIXED_ON_RESUME:
        old_value, new_value = saved, new
        for key in dotted.split("."):
            old_value, new_value = old_value[key], new_value[key]
        if old_value != new_value:
            changed.append(f"{dotted} {old_value!r} -> {new_value!r}")
    if changed:
        raise ValueError(
            f"--resume: the configuration differs from the run in {run_dir} ({'; '.join(changed)}); "
            "resume with the run's own settings, start another run directory, or pass "
            "--allow-config-change to continue with the new ones"
        )
