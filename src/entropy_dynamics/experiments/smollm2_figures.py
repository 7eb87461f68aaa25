"""The ``smollm2`` experiment's figures: training curves with seed bands, held-out changes from
the start with their bootstrap intervals, and the pass-rate histograms (the paper's Fig. 6)."""

from __future__ import annotations

import numpy as np

from .common import ExperimentResult, save_figure

__all__ = ["draw_figures"]


def draw_figures(
    result: ExperimentResult, out_dir, runs: dict, changes: dict, *, k: int, target: float
) -> None:
    """``runs``: label -> per-seed run dicts (``smollm2._run``); ``changes``: label ->
    {"avg" | "pass": the bootstrap interval of final - start}. Three PNGs under out_dir."""
    from ..report.plotting import new_figure, run_colors

    colors = run_colors(list(runs))
    _curves(result, out_dir, runs, colors, target, new_figure)
    _held_out(result, out_dir, runs, changes, colors, k, new_figure)
    _histograms(result, out_dir, runs, colors, k, new_figure)


def _curves(result, out_dir, runs, colors, target, new_figure) -> None:
    fig, axes = new_figure(1, 3, panel_width=4.6, panel_height=3.8)
    panels = (
        ("entropy", "entropy of fresh rollouts"),
        ("reward", "training reward"),
        ("dropped", "share of tokens dropped"),
    )
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for label, rs in runs.items():
            curves = np.array([r[key] for r in rs])  # [seeds, steps]
            steps = np.arange(1, curves.shape[1] + 1)
            wide = label == "GRPO" or label.startswith("target")
            ax.plot(
                steps, curves.mean(0), color=colors[label], label=label, lw=2.4 if wide else 1.2
            )
            if len(rs) > 1:
                ax.fill_between(
                    steps, curves.min(0), curves.max(0), color=colors[label], alpha=0.12
                )
        ax.set(xlabel="step", title=f"{title} (mean, seed min-max)")
    axes[0, 0].axhline(target, color="k", ls="--", lw=0.8, label="controller's target")
    axes[0, 0].legend(fontsize=6)
    save_figure(fig, result, out_dir, "smollm2_curves.png")


def _held_out(result, out_dir, runs, changes, colors, k, new_figure) -> None:
    """avg@k and pass@k: final - start per method with its 95 % bootstrap interval (over
    problems, pooled over seeds); greedy accuracy: start and each method, seeds as dots."""
    fig, axes = new_figure(1, 3, panel_width=4.6, panel_height=3.8)
    labels = list(runs)
    x = np.arange(len(labels))
    for ax, kind in zip(axes[0, :2], ("avg", "pass"), strict=True):
        mean = np.array([changes[label][kind]["mean"] for label in labels])
        lo = np.array([changes[label][kind]["lo"] for label in labels])
        hi = np.array([changes[label][kind]["hi"] for label in labels])
        ax.bar(x, mean, color=[colors[label] for label in labels])
        ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt="none", ecolor="k", capsize=3)
        ax.axhline(0.0, color="k", lw=0.8)
        start = np.mean([r["start"][f"{kind}@k"] for r in runs["GRPO"]])
        ax.set(title=f"held-out {kind}@{k}: final - start ({start:.3f}), 95 % CI")
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=6)
    ax = axes[0, 2]
    names = ["start", *labels]
    values = [
        [r["start"]["greedy"] for r in runs["GRPO"]],
        *([r["final"]["greedy"] for r in rs] for rs in runs.values()),
    ]
    ax.bar(
        np.arange(len(names)),
        [np.mean(v) for v in values],
        color=["0.6", *(colors[label] for label in labels)],
    )
    for i, v in enumerate(values):
        ax.plot([i] * len(v), v, "k.", ms=4)
    ax.set(title="held-out greedy accuracy (dots: seeds)")
    ax.set_xticks(np.arange(len(names)), names, rotation=60, ha="right", fontsize=6)
    save_figure(fig, result, out_dir, "smollm2_held_out.png")


def _histograms(result, out_dir, runs, colors, k, new_figure) -> None:
    """Share of held-out problems by pass rate (j of k samples right), pooled over seeds."""
    names = ["start", *runs]
    ncols = (len(names) + 1) // 2
    fig, axes = new_figure(2, ncols, panel_width=2.6, panel_height=2.4)
    for ax, label in zip(axes.ravel(), names, strict=False):
        when, rs = ("start", runs["GRPO"]) if label == "start" else ("final", runs[label])
        hist = np.array([r[when]["pass_rate_hist"] for r in rs]).sum(0)
        ax.bar(
            np.arange(len(hist)) / k,
            hist / hist.sum(),
            width=0.8 / k,
            color="0.6" if label == "start" else colors[label],
        )
        ax.set(title=label, xlabel="pass rate", ylim=(0, 1))
        ax.title.set_fontsize(7)
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of problems")
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    save_figure(fig, result, out_dir, "smollm2_pass_rate_hist.png")
