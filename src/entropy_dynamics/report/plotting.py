"""Shared matplotlib helpers for the report: style, figure factory, run colours, small statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from entropy_dynamics._correlation import pearson

# Readable at 100 % zoom in a browser; applied with matplotlib.rc_context around each figure.
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 120,
    "savefig.bbox": "tight",
    "figure.facecolor": "white",
}


def run_colors(names: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """One colour per run, in the given order: tab10, then tab20 beyond ten runs (cycled)."""
    palette = colormaps["tab10"] if len(names) <= 10 else colormaps["tab20"]
    size = palette.N
    return {name: palette(i % size) for i, name in enumerate(names)}


def new_figure(
    nrows: int = 1, ncols: int = 1, *, panel_width: float = 5.2, panel_height: float = 3.6
) -> tuple[Figure, np.ndarray]:
    """A Figure (no pyplot, so no global backend state) and its axes as a 2-D array."""
    fig = Figure(figsize=(panel_width * ncols, panel_height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot_kwargs(num_points: int) -> dict[str, object]:
    """Line style for a series of `num_points`: markers when there are few points to see."""
    if num_points <= 1:
        return {"marker": "o", "markersize": 5}
    if num_points <= 40:
        return {"marker": "o", "markersize": 3, "linewidth": 1.6}
    return {"linewidth": 1.6}


def pearson_or_none(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson r (``_correlation.pearson``) for a figure label; None (shown "undefined") below
    three points, where r = +-1 says nothing, or where it is undefined."""
    if np.asarray(x).size < 3:
        return None
    r = pearson(x, y)
    return None if math.isnan(r) else r


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each full window of `window` consecutive values: length `len(values) - window + 1`."""
    if window <= 1 or values.size < window:
        return values.copy()
    kernel = np.full(window, 1.0 / window)
    return np.convolve(values, kernel, mode="valid")


def empty_note(ax: Axes, text: str) -> None:
    """Write `text` in the middle of an axes that has nothing to show."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def format_ratio(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def identical_notes(what: str, data: dict[str, np.ndarray]) -> list[str]:
    """Notes naming runs whose arrays in `data` are exactly equal: their marks hide each other."""
    groups: list[list[str]] = []
    for name, values in data.items():
        for group in groups:
            if np.array_equal(data[group[0]], values):
                group.append(name)
                break
        else:
            groups.append([name])
    return [
        f"{', '.join(group)} have identical {what}; their marks overlap and only "
        f"{group[-1]} is visible"
        for group in groups
        if len(group) > 1
    ]
