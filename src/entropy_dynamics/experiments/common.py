"""What every experiment shares: claims, the result.json writer, figures, and report sections.

An experiment writes, under ``OUT/NAME/``: ``result.json`` (its claims, measurements and
settings), its PNG figures, and ``section.md`` (its part of the report). ``OUT/report.md`` is
rebuilt after each run from every ``section.md`` present, in registry order, so running one
experiment updates its own section and keeps the others.

``result.json`` schema::

    {"name": str, "quick": bool, "duration_s": float, "settings": {...},
     "claims": [{"claim": str, "holds": bool, "measured": ..., "threshold": ..., "note": str}],
     "metrics": {...}, "figures": [file names], "notes": str}

Non-finite floats are written as ``null`` (strict JSON), never as ``NaN``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._correlation import pearson

__all__ = [
    "Claim",
    "ExperimentResult",
    "Timer",
    "bootstrap_difference",
    "check_entropy_above",
    "correlations",
    "fit_loglog_slope",
    "jsonable",
    "markdown_table",
    "per_problem",
    "save_figure",
    "seed_interval",
    "sign_agreement",
    "write_report",
    "write_result",
]


@dataclass
class Claim:
    """One checked statement: ``holds`` is decided by comparing ``measured`` with ``threshold``.

    ``measured`` and ``threshold`` are numbers, lists or small dicts (JSON); ``note`` says in words
    how the comparison is made (for example "slope within threshold of 2").
    """

    claim: str
    holds: bool
    measured: Any
    threshold: Any
    note: str = ""


@dataclass
class ExperimentResult:
    """Everything one experiment reports; ``write_result`` turns it into ``result.json``."""

    name: str
    quick: bool
    claims: list[Claim] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    notes: str = ""
    duration_s: float = 0.0

    def check(self, claim: str, holds: bool, measured: Any, threshold: Any, note: str = "") -> bool:
        """Record a claim and return whether it holds."""
        self.claims.append(Claim(claim, bool(holds), measured, threshold, note))
        return bool(holds)


class Timer:
    """Context manager measuring wall time in seconds (``.elapsed``)."""

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        self.elapsed = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.elapsed = time.perf_counter() - self._start


def jsonable(value: Any) -> Any:
    """Convert tensors, numpy values, dataclasses and tuples to JSON types; NaN/inf become None."""
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch.Tensor
        value = value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_result(result: ExperimentResult, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/<name>/result.json`` and return its path."""
    path = Path(out_dir) / result.name / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(jsonable(result), indent=2, allow_nan=False)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats get 4 significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "**no**"
        if isinstance(v, float):
            return "n/a" if not math.isfinite(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")  # a pipe would end the cell

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _short(value: Any) -> str:
    """A compact one-line rendering of a measured value or threshold for the claims table."""
    value = jsonable(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list) and len(value) <= 8:
        return "[" + ", ".join(_short(v) for v in value) + "]"
    if isinstance(value, dict) and len(value) <= 8:
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, dict)):
        return f"({len(value)} values, see result.json)"
    return str(value)


def section_markdown(result: ExperimentResult) -> str:
    """The report section of one experiment: claims table, notes, figures."""
    size = "quick" if result.quick else "default"
    held = sum(c.holds for c in result.claims)
    lines = [
        f"## {result.name}",
        "",
        f"Size: {size}; {result.duration_s:.1f} s; claims holding: {held}/{len(result.claims)}.",
        "",
        markdown_table(
            ["claim", "holds", "measured", "threshold"],
            [(c.claim, c.holds, _short(c.measured), _short(c.threshold)) for c in result.claims],
        ),
        "",
    ]
    if result.notes:
        lines += [result.notes.strip(), ""]
    lines += [f"![{f}]({result.name}/{f})" for f in result.figures]
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    result: ExperimentResult, out_dir: str | os.PathLike, order: Sequence[str]
) -> Path:
    """Write ``out_dir/<name>/section.md`` and rebuild ``out_dir/report.md`` from all sections.

    Sections appear in ``order`` (the registry's), each only if its ``section.md`` exists.
    """
    out = Path(out_dir)
    section = out / result.name / "section.md"
    section.parent.mkdir(parents=True, exist_ok=True)
    section.write_text(section_markdown(result))
    parts = ["# entropy-dynamics: the paper's claims at small scale", ""]
    parts.append(
        "Built by `entropy-dynamics reproduce`; each section comes from its `result.json`.\n"
    )
    for name in order:
        path = out / name / "section.md"
        if path.exists():
            parts.append(path.read_text())
    report = out / "report.md"
    report.write_text("\n".join(parts))
    return report


def save_figure(fig, result: ExperimentResult, out_dir: str | os.PathLike, filename: str) -> Path:
    """Save ``fig`` (from ``report.plotting.new_figure``) as ``out_dir/<name>/<filename>`` and
    list it in the result."""
    path = Path(out_dir) / result.name / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    result.figures.append(filename)
    return path


def fit_loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (the order of an error term).

    Points with ``y <= 0`` are skipped; fewer than two points give NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = (x > 0) & (y > 0) & np.isfinite(y)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[keep]), np.log(y[keep]), 1)[0])


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's coefficient needs."""
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = np.arange(len(a), dtype=np.float64)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of two equal-length samples (NaN if either is constant)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": pearson(x, y), "spearman": pearson(_ranks(x), _ranks(y))}


def sign_agreement(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Fraction of entries where ``sign(predicted) == sign(measured)`` (NaN for no entries)."""
    p = np.sign(np.asarray(predicted, dtype=np.float64).ravel())
    m = np.sign(np.asarray(measured, dtype=np.float64).ravel())
    return float((p == m).mean()) if len(p) else float("nan")


# Two-sided 95 % quantiles of Student's t by degrees of freedom (no scipy dependency).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def seed_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean and 95 % Student-t interval of per-seed values (e.g. a paired difference per seed).

    ``{"mean", "lo", "hi", "n"}``; one value gives ``lo = hi = None`` (no interval from one seed).
    A claim "A above B" holds when the interval of the per-seed differences A - B has ``lo > 0``.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": len(x)}
    half = _T975.get(len(x) - 1, 1.96) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(x)}


def check_entropy_above(
    result: ExperimentResult,
    label: str,
    runs: Sequence[dict],
    baseline: Sequence[dict],
    baseline_label: str = "GRPO",
    key: str = "final_entropy",
) -> bool:
    """Claim "``label`` keeps entropy higher than ``baseline_label``": holds when the Student-t
    interval over seeds of the paired per-seed gap ``run[key] - baseline_run[key]`` has
    ``lo > 0`` (runs paired by seed, in the same order). Records it and returns whether it holds."""
    gap = seed_interval([r[key] - b[key] for r, b in zip(runs, baseline, strict=True)])
    return result.check(
        f"{label} keeps entropy higher than {baseline_label} (95 % interval of the per-seed "
        "gap > 0)",
        gap["lo"] is not None and gap["lo"] > 0,
        {f"{label} - {baseline_label} final entropy": gap},
        "lo > 0",
        "Student-t interval over seeds of the paired difference",
    )


def per_problem(hist: Sequence[int], metric: str) -> np.ndarray:
    """Per-problem values from an evaluation's pass-count histogram (``hist[j]`` problems had j of
    k samples right): ``"avg"`` gives j / k per problem, ``"pass"`` gives 1 where j > 0 (pass@k
    at the full k)."""
    hist = np.asarray(hist, dtype=np.int64)
    k = len(hist) - 1
    correct = np.repeat(np.arange(k + 1), hist)
    if metric == "avg":
        return correct / k
    if metric == "pass":
        return (correct > 0).astype(np.float64)
    raise ValueError(f"metric must be 'avg' or 'pass', got {metric!r}")


def bootstrap_difference(
    before: Sequence[np.ndarray], after: Sequence[np.ndarray], *, n_boot: int = 4000, seed: int = 0
) -> dict[str, float]:
    """Mean over seeds of ``mean(after[s]) - mean(before[s])`` with a 95 % percentile interval,
    resampling each seed's problems with replacement (before and after independently).

    ``before[s]`` / ``after[s]``: per-problem values ``[P]`` of seed s (``per_problem``). The
    resampling is unpaired, which is conservative when a problem's before and after are
    positively correlated (they are: easy problems stay easy). Seeded: the same inputs give the
    same interval. ``{"mean", "lo", "hi"}``; a change is called real when the interval excludes 0.
    """
    if len(before) != len(after) or not before:
        raise ValueError(
            f"need one before and one after per seed, got {len(before)} / {len(after)}"
        )
    rng = np.random.default_rng(seed)

    def resampled_means(groups: Sequence[np.ndarray]) -> np.ndarray:  # [n_boot]
        total = np.zeros(n_boot)
        for values in groups:
            values = np.asarray(values, dtype=np.float64)
            total += values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
        return total / len(groups)

    point = float(np.mean([np.mean(a) - np.mean(b) for b, a in zip(before, after, strict=True)]))
    draws = resampled_means(after) - resampled_means(before)
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return {"mean": point, "lo": float(lo), "hi": float(hi)}
