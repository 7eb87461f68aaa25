"""Run logging: crash-safe JSONL (whole records, flushed and fsynced), TensorBoard, warnings.

A `kill -9` can at worst lose the line being written; it never leaves half a line behind
because each record is one `os.write` of a complete line followed by `fsync`. A write that
fails part-way (a full disk, a file size limit) is cut back to the record boundary it started
from and raises `JsonlWriteError`; a torn tail left by anything else is cut off before the next
append. On resume, `truncate_jsonl` drops records beyond the checkpoint's step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from entropy_dynamics._jsonl import read_jsonl


def _plain(value: Any) -> Any:
    """Tensors / numpy scalars -> Python floats; non-finite floats -> None (JSON has no NaN)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriteError(OSError):
    """A record could not be appended; the file was left at its last whole record."""


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON record as a single line, whole or not at all, then fsync.

    Raises JsonlWriteError (an OSError naming the file and the cause) when the line cannot be
    written completely; the file then ends at the record boundary it had before the call.
    """
    line = (json.dumps(_plain(record), allow_nan=False) + "\n").encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise JsonlWriteError(err.errno, f"cannot open {path} to append a record: "
                              f"{err.strerror or err}") from None  # fmt: skip
    try:
        start = _record_boundary(fd)
        written = 0
        try:
            while written < len(line):  # os.write may write only part of the line
                count = os.write(fd, line[written:])
                if count <= 0:
                    raise OSError(28, "the disk accepted no more bytes")
                written += count
            os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # back to the last whole record
            raise JsonlWriteError(
                err.errno, f"cannot append a record to {path}: {err.strerror or err}; the file "
                "was left at its last whole record (free some space, then resume)",
            ) from None  # fmt: skip
    finally:
        os.close(fd)


def _record_boundary(fd: int) -> int:
    """The file's size after cutting off a torn last line (one not ending in a newline)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:  # search backwards for the last newline
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        end = start
    os.ftruncate(fd, end)
    return end


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Keep only whole records with step <= max_step (rewritten atomically)."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= max_step]
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


EVAL_KEY = ("step", "k", "checkpoint")
"""What identifies an evaluation in eval.jsonl: re-evaluating it replaces its record."""


def eval_key(record: dict) -> tuple:
    """(step, k, checkpoint) of an eval.jsonl record; `checkpoint` defaults to 'step-<step>'
    (the weights the trainer evaluated at that step; records written before the field)."""
    step = record.get("step")
    return step, record.get("k"), record.get("checkpoint") or f"step-{step}"


def eval_headline(record: dict) -> dict:
    """An eval.jsonl record's headline numbers at its own k: ``{"avg@k", "pass@k", "greedy"}``."""
    k = str(record["k"])
    return {
        "avg@k": float(record["avg@k"][k]),
        "pass@k": float(record["pass@k"][k]),
        "greedy": float(record["greedy_acc"]),
    }


def put_eval_record(path: str | Path, record: dict) -> None:
    """Write `record` into eval.jsonl, replacing any record with the same `eval_key`.

    Appends when the key is new (crash-safe, as `append_jsonl`); otherwise rewrites the file
    atomically (a temporary file, fsynced, renamed over it), so a failed write leaves the old
    file whole.
    """
    path = Path(path)
    records = read_jsonl(path)
    key = eval_key(record)
    if all(eval_key(r) != key for r in records):
        append_jsonl(path, record)
        return
    kept = [r if eval_key(r) != key else record for r in records]
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.writelines(json.dumps(_plain(r), allow_nan=False) + "\n" for r in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise JsonlWriteError(
            err.errno, f"cannot rewrite {path} to replace the evaluation {key}: "
            f"{err.strerror or err}; the file was left as it was",
        ) from None  # fmt: skip


class RunLogger:
    """Writes step metrics to metrics.jsonl (+ TensorBoard) and evaluations to eval.jsonl."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self.writer = None
            else:
                self.writer = SummaryWriter(str(self.run_dir / "tb"))

    def log_step(self, step: int, metrics: dict) -> None:
        append_jsonl(self.run_dir / "metrics.jsonl", {"step": step, **metrics})
        if self.writer is not None:
            for name, value in _plain(metrics).items():
                if isinstance(value, int | float):
                    self.writer.add_scalar(name, value, step)

    def log_eval(self, step: int, result: dict) -> None:
        record = {"step": step, "checkpoint": f"step-{step}", **result}
        put_eval_record(self.run_dir / "eval.jsonl", record)
        if self.writer is not None:
            for key in ("avg@k", "pass@k"):
                for k, value in result.get(key, {}).items():
                    self.writer.add_scalar(f"eval/{key[:-2]}{k}", value, step)
            if "greedy_acc" in result:
                self.writer.add_scalar("eval/greedy_acc", result["greedy_acc"], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


WARNING_PREFIX = "[entropy-dynamics] warning: "


def warn(message: str) -> None:
    """A warning on stderr that stays readable beside a progress bar."""
    print(f"{WARNING_PREFIX}{message}", file=sys.stderr, flush=True)
