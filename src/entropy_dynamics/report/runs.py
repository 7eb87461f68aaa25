"""Reading run directories (config.yaml, metrics.jsonl, eval.jsonl, dist/step-N.npz) for the report."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from entropy_dynamics._jsonl import read_jsonl
from entropy_dynamics.report.external import read_external

_DIST_FILE = re.compile(r"^step-(\d+)\.(npz|pt)$")


@dataclass
class RunRecord:
    """Everything the report reads from one run directory.

    `metrics` is one flat dict per training step (`{"step": int, key: float}`, non-finite values
    removed), `evals` one dict per evaluation with `avg@k` / `pass@k` keyed by int k, `dist` the
    per-token arrays of the latest `dist/step-N` file (`dist_step` its N), `notes` what was
    skipped while reading.
    """

    name: str
    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, float]]
    evals: list[dict[str, Any]]
    dist: dict[str, np.ndarray] | None = None
    dist_step: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        value = _first(self.config, ("method",), ("method", "spec"), ("method", "name"))
        return value if isinstance(value, str) else "?"

    @property
    def seed(self) -> int | None:
        value = _first(self.config, ("seed",), ("train", "seed"), ("run", "seed"))
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """`(steps, values)` of every training step that logged `key` (possibly empty)."""
        rows = [(row["step"], row[key]) for row in self.metrics if key in row and "step" in row]
        steps = np.array([s for s, _ in rows], dtype=np.float64)
        values = np.array([v for _, v in rows], dtype=np.float64)
        return steps, values

    def last(self, key: str) -> float | None:
        """The value of `key` in the last training step that logged it, or None."""
        for row in reversed(self.metrics):
            if key in row:
                return row[key]
        return None

    def metric_keys(self) -> set[str]:
        return {key for row in self.metrics for key in row}


def _first(config: dict[str, Any], *paths: tuple[str, ...]) -> Any:
    """The value at the first of `paths` (tuples of nested keys) present in `config`, else None."""
    for path in paths:
        node: Any = config
        for key in path:
            if not isinstance(node, dict) or key not in node:
                node = None
                break
            node = node[key]
        if node is not None and not isinstance(node, dict):
            return node
    return None


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def _as_float(value: Any) -> float | None:
    """`value` as a finite float, or None for null / NaN / inf / non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _clean_metrics(rows: list[dict[str, Any]], notes: list[str]) -> list[dict[str, float]]:
    """Flatten each row, keep finite numbers only, drop rows without an integer `step`."""
    cleaned: list[dict[str, float]] = []
    dropped_values = 0
    no_step = 0
    for row in rows:
        flat = _flatten(row)
        step = flat.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            no_step += 1
            continue
        out: dict[str, float] = {"step": step}
        for key, value in flat.items():
            if key == "step":
                continue
            number = _as_float(value)
            if number is None:
                if isinstance(value, int | float | type(None)) and not isinstance(value, bool):
                    dropped_values += 1
                continue
            out[key] = number
        cleaned.append(out)
    if no_step:
        notes.append(f"skipped {no_step} training log row(s) without an integer 'step'")
    if dropped_values:
        notes.append(f"ignored {dropped_values} null/NaN/infinite value(s) in the training log")
    return cleaned


def _by_k(value: Any) -> dict[int, float]:
    """`{"1": 0.4, "8": 0.7}` -> `{1: 0.4, 8: 0.7}`; entries that are not (int k, finite) dropped."""
    if not isinstance(value, dict):
        return {}
    out: dict[int, float] = {}
    for key, val in value.items():
        number = _as_float(val)
        try:
            k = int(key)
        except (TypeError, ValueError):
            continue
        if number is not None and k >= 1:
            out[k] = number
    return dict(sorted(out.items()))


def _clean_evals(rows: list[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    evals: list[dict[str, Any]] = []
    for row in rows:
        step = row.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            notes.append("eval.jsonl: skipped a line without an integer 'step'")
            continue
        clean: dict[str, Any] = {
            "step": step,
            "avg@k": _by_k(row.get("avg@k")),
            "pass@k": _by_k(row.get("pass@k")),
        }
        for key in ("greedy_acc", "k", "num_prompts"):
            number = _as_float(row.get(key))
            if number is not None:
                clean[key] = number
        hist = row.get("pass_rate_hist")
        if isinstance(hist, list) and hist and all(_as_float(c) is not None for c in hist):
            clean["pass_rate_hist"] = [float(c) for c in hist]
        evals.append(clean)
    evals.sort(key=lambda e: e["step"])
    return evals


def _read_dist(run_dir: Path, notes: list[str]) -> tuple[dict[str, np.ndarray] | None, int | None]:
    """The arrays of the `dist/step-N.{npz,pt}` file with the largest N (npz preferred)."""
    folder = run_dir / "dist"
    if not folder.is_dir():
        return None, None
    found: dict[int, Path] = {}
    for path in folder.iterdir():
        match = _DIST_FILE.match(path.name)
        if match and (int(match[1]) not in found or match[2] == "npz"):
            found[int(match[1])] = path
    if not found:
        return None, None
    step = max(found)
    path = found[step]
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                arrays = {key: np.asarray(data[key], dtype=np.float64).ravel() for key in data}
        else:
            import torch

            loaded = torch.load(path, map_location="cpu", weights_only=True)
            arrays = {key: value.double().numpy().ravel() for key, value in loaded.items()}
    except Exception as error:  # a corrupt file must not stop the report
        notes.append(f"dist/{path.name}: could not be read ({type(error).__name__}: {error})")
        return None, None
    missing = {"discriminator", "advantages"} - arrays.keys()
    if missing:
        notes.append(f"dist/{path.name}: lacks {sorted(missing)}; S_* distribution skipped")
        return None, None
    lengths = {key: len(value) for key, value in arrays.items()}
    if len(set(lengths.values())) != 1:
        notes.append(f"dist/{path.name}: arrays of different lengths {lengths}; skipped")
        return None, None
    finite = np.logical_and.reduce([np.isfinite(values) for values in arrays.values()])
    if not finite.all():
        notes.append(
            f"dist/{path.name}: left out {int((~finite).sum())} token(s) with a non-finite value"
        )
        arrays = {key: values[finite] for key, values in arrays.items()}
    if not finite.any():
        return None, None
    return arrays, step


_WHAT_IS_READ = (
    "pass run directories written by our trainer (metrics.jsonl and/or eval.jsonl), a TRL "
    "output directory (trainer_state.json, checkpoint-N/trainer_state.json or TensorBoard "
    "events), or verl's tracker output (its file logger's .jsonl or TensorBoard events)"
)


def _load_external(path: Path) -> RunRecord:
    """A TRL or verl log (`report.external`) as a RunRecord without evaluations or distributions."""
    found = read_external(path)
    if found is None:
        what = "is not a directory" if not path.is_dir() else "holds no log the report reads"
        raise ValueError(f"run_dirs: {str(path)!r} {what}; {_WHAT_IS_READ}")
    rows, notes = found
    metrics = _clean_metrics(rows, notes)
    name = path.stem if path.is_file() else path.name
    return RunRecord(name=name, path=path, config={}, metrics=metrics, evals=[], notes=notes)


def load_run(run_dir: Path) -> RunRecord:
    """Read one run directory, or a TRL / verl log (see docs/report.md for what is read)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or (
        not (run_dir / "metrics.jsonl").is_file() and not (run_dir / "eval.jsonl").is_file()
    ):
        if not run_dir.exists():
            raise ValueError(f"run_dirs: {str(run_dir)!r} does not exist; {_WHAT_IS_READ}")
        return _load_external(run_dir)
    notes: list[str] = []
    config: dict[str, Any] = {}
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        try:
            loaded = yaml.safe_load(config_path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError as error:
            notes.append(f"config.yaml: could not be parsed ({error}); name/method/seed unknown")
    metrics = _clean_metrics(read_jsonl(run_dir / "metrics.jsonl", notes=notes), notes)
    metrics.sort(key=lambda row: row["step"])
    evals = _clean_evals(read_jsonl(run_dir / "eval.jsonl", notes=notes), notes)
    dist, dist_step = _read_dist(run_dir, notes)
    name = _first(config, ("name",), ("run", "name"), ("logging", "name"))
    return RunRecord(
        name=str(name) if name is not None else run_dir.name,
        path=run_dir,
        config=config,
        metrics=metrics,
        evals=evals,
        dist=dist,
        dist_step=dist_step,
        notes=notes,
    )


def load_runs(run_dirs: list[Path]) -> list[RunRecord]:
    """Read every run directory; names made unique by prefixing the parent directory."""
    if not run_dirs:
        raise ValueError("run_dirs: empty; pass at least one run directory")
    runs = [load_run(Path(d)) for d in run_dirs]
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    for run in runs:
        if counts[run.name] > 1:
            run.name = f"{run.path.resolve().parent.name}/{run.name}"
    seen: dict[str, int] = {}
    for run in runs:  # still equal (same parent name): number them
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name}#{seen[run.name]}"
    return runs
