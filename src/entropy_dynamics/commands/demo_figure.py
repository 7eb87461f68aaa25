"""The demo's seed-band figure: entropy per step and held-out accuracy per evaluation, by method.

`draw_demo({name: [run_dir per seed]}, path)`: the mean over seeds as a line, the min-max over
seeds as a band; the held-out panels start at step 0 (the SFT warm start, before any update).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from entropy_dynamics.train.logging import read_jsonl


def _series(run_dirs: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (steps [S], values [seeds, S]) for entropy and the held-out metrics."""
    from entropy_dynamics import diagnostics as dg

    out = {}
    metrics = [read_jsonl(Path(d) / "metrics.jsonl") for d in run_dirs]
    rows = [[r for r in m if dg.ENTROPY_MEAN in r] for m in metrics]
    length = min(len(r) for r in rows)
    out["entropy"] = (
        np.array([r["step"] for r in rows[0][:length]]),
        np.array([[r[dg.ENTROPY_MEAN] for r in run[:length]] for run in rows]),
    )
    evals = [read_jsonl(Path(d) / "eval.jsonl") for d in run_dirs]
    length = min(len(e) for e in evals)
    k = str(evals[0][0]["k"])
    steps = np.array([e["step"] for e in evals[0][:length]])
    for key, read in (
        (f"held-out avg@{k}", lambda e: e["avg@k"][k]),
        ("held-out greedy accuracy", lambda e: e["greedy_acc"]),
    ):
        out[key] = (steps, np.array([[read(e) for e in run[:length]] for run in evals]))
    return out


def draw_demo(groups: dict[str, list[Path]], path: Path) -> Path:
    """Draw the three panels for every method in `groups` and save them as `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {name: _series(dirs) for name, dirs in groups.items()}
    keys = list(next(iter(series.values())))
    fig, axes = plt.subplots(1, len(keys), figsize=(5.0 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for color, (name, data) in zip(plt.cm.tab10.colors, series.items(), strict=False):
            steps, values = data[key]
            n = values.shape[0]
            ax.plot(steps, values.mean(0), color=color, label=f"{name} (mean of {n})",
                    marker="o" if key != "entropy" else None, ms=3)  # fmt: skip
            ax.fill_between(steps, values.min(0), values.max(0), color=color, alpha=0.18)
        ax.set(xlabel="training step", title=key + " (band: min-max over seeds)")
        ax.set_ylabel("nats" if key == "entropy" else "fraction correct")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
