"""The report's figures: each draws from loaded runs and returns (Figure or None, notes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from entropy_dynamics.report import keys
from entropy_dynamics.report.plotting import (
    empty_note,
    format_ratio,
    identical_notes,
    new_figure,
    pearson_or_none,
    plot_kwargs,
    trailing_mean,
)
from entropy_dynamics.report.runs import RunRecord

Colors = dict[str, tuple[float, float, float, float]]
Drawn = tuple[Figure | None, list[str]]


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: its file name, heading, caption and drawing function."""

    filename: str
    title: str
    caption: str
    draw: Callable[[list[RunRecord], Colors], Drawn]


def _series_or_note(run: RunRecord, key: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    steps, values = run.series(key)
    if steps.size == 0:
        notes.append(f"{run.name}: no '{key}' in its training log")
    return steps, values


def draw_entropy(runs: list[RunRecord], colors: Colors) -> Drawn:
    """Token-mean policy entropy per training step, one line per run."""
    notes: list[str] = []
    fig, axes = new_figure(panel_width=7.0, panel_height=4.0)
    ax = axes[0, 0]
    drawn = {}
    for run in runs:
        steps, values = _series_or_note(run, keys.ENTROPY, notes)
        if steps.size:
            ax.plot(
                steps, values, color=colors[run.name], label=run.name, **plot_kwargs(steps.size)
            )
            drawn[run.name] = np.concatenate([steps, values])
    if not drawn:
        return None, notes
    notes += identical_notes(f"'{keys.ENTROPY}'", drawn)
    ax.set_xlabel("training step")
    ax.set_ylabel("token-mean entropy (nats)")
    ax.set_title("Policy entropy of the sampled responses")
    ax.legend()
    return fig, notes


def _last_eval_with(run: RunRecord, key: str) -> dict | None:
    """The last evaluated step's record that has `key`; of several (one per k), the most k."""
    rows = [row for row in run.evals if row.get(key)]
    if not rows:
        return None
    step = rows[-1]["step"]  # evals are sorted by step
    return max((row for row in rows if row["step"] == step), key=lambda row: max(row[key]))


def draw_reward_accuracy(runs: list[RunRecord], colors: Colors) -> Drawn:
    """Training reward per step (raw and trailing mean) and held-out accuracy per evaluation."""
    notes: list[str] = []
    rewards = {run.name: _series_or_note(run, keys.REWARD, notes) for run in runs}
    with_eval = [run for run in runs if any("greedy_acc" in e or e["avg@k"] for e in run.evals)]
    for run in runs:
        if run not in with_eval:
            notes.append(f"{run.name}: no held-out accuracy in eval.jsonl")
    have_reward = any(steps.size for steps, _ in rewards.values())
    if not have_reward and not with_eval:
        return None, notes
    fig, axes = new_figure(1, 2)
    ax_reward, ax_acc = axes[0]
    longest = max(steps.size for steps, _ in rewards.values())
    window = max(1, min(25, longest // 10))
    for run in runs:
        steps, values = rewards[run.name]
        if not steps.size:
            continue
        color = colors[run.name]
        if window > 1 and steps.size >= window:
            ax_reward.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax_reward.plot(
                steps[window - 1 :],
                trailing_mean(values, window),
                color=color,
                label=run.name,
                linewidth=1.8,
            )
        else:
            ax_reward.plot(steps, values, color=color, label=run.name, **plot_kwargs(steps.size))
    notes += identical_notes(
        f"'{keys.REWARD}'",
        {name: np.concatenate(series) for name, series in rewards.items() if series[0].size},
    )
    if have_reward:
        smooth = f"\nthin: per step; thick: mean of the last {window} steps" if window > 1 else ""
        ax_reward.set_title("Training reward" + smooth)
        ax_reward.set_xlabel("training step")
        ax_reward.set_ylabel("mean reward per response")
        ax_reward.legend()
    else:
        empty_note(ax_reward, f"no '{keys.REWARD}' in any run")
    if with_eval:
        _draw_heldout(ax_acc, with_eval, colors)
    else:
        empty_note(ax_acc, "no held-out evaluation in any run")
    return fig, notes


def _draw_heldout(ax, runs: list[RunRecord], colors: Colors) -> None:
    """Greedy accuracy (solid) and avg@k at each evaluation's largest k (dashed), per run."""
    handles, ks = [], set()
    for run in runs:
        # one point per step: of several records (one per k), the one with the most samples
        evals = list(
            {e["step"]: e for e in sorted(run.evals, key=lambda e: e.get("k", 0))}.values()
        )
        evals.sort(key=lambda e: e["step"])
        greedy = [(e["step"], e["greedy_acc"]) for e in evals if "greedy_acc" in e]
        avg = [(e["step"], e["avg@k"][max(e["avg@k"])]) for e in evals if e["avg@k"]]
        ks.update(max(e["avg@k"]) for e in evals if e["avg@k"])
        for points, style in ((greedy, "-"), (avg, "--")):
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(
                    steps,
                    values,
                    linestyle=style,
                    color=colors[run.name],
                    **plot_kwargs(len(steps)),
                )
        handles.append(Line2D([], [], color=colors[run.name], label=run.name))
    if any("greedy_acc" in e for run in runs for e in run.evals):
        handles.append(Line2D([], [], color="0.3", linestyle="-", label="greedy accuracy"))
    if ks:
        k_text = f"k = {ks.pop()}" if len(ks) == 1 else "largest k"
        handles.append(Line2D([], [], color="0.3", linestyle="--", label=f"avg@k ({k_text})"))
    ax.legend(handles=handles)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Held-out accuracy")
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (fraction of held-out prompts)")


def draw_at_k(runs: list[RunRecord], colors: Colors) -> Drawn:
    """avg@k and pass@k against k, from each run's last evaluation that has them."""
    notes: list[str] = []
    fig, axes = new_figure(1, 2)
    all_k: set[int] = set()
    plotted = 0
    for ax, key in zip(axes[0], ("avg@k", "pass@k"), strict=True):
        drawn = {}
        for run in runs:
            row = _last_eval_with(run, key)
            if row is None:
                notes.append(f"{run.name}: no '{key}' in eval.jsonl")
                continue
            ks = np.array(list(row[key]), dtype=float)
            ax.plot(
                ks,
                list(row[key].values()),
                color=colors[run.name],
                marker="o",
                markersize=4,
                label=f"{run.name} (step {row['step']})",
            )
            all_k.update(row[key])
            drawn[run.name] = np.array([*row[key].items()], dtype=float)
            plotted += 1
        notes += identical_notes(key, drawn)
        ax.set_xlabel("k (samples per prompt)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{key} on held-out prompts (last evaluation)")
        ax.set_ylabel(
            "share of prompts solved within k samples"
            if key == "pass@k"
            else "mean accuracy of k samples"
        )
    if not plotted:
        return None, notes
    ticks = sorted(all_k)
    for ax in axes[0]:
        if len(ticks) > 1 and ticks[-1] / ticks[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return fig, notes


def _probe_pairs(runs: list[RunRecord], key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per run, (predicted, measured) over the probe steps that logged both."""
    pairs = {}
    for run in runs:
        rows = [r for r in run.metrics if key in r and keys.MEASURED_DELTA in r]
        if rows:
            pairs[run.name] = (
                np.array([r[key] for r in rows]),
                np.array([r[keys.MEASURED_DELTA] for r in rows]),
            )
    return pairs


def draw_prediction(runs: list[RunRecord], colors: Colors) -> Drawn:
    """Predicted vs measured batch-mean entropy change at probe steps, with Pearson correlations.

    Left, the paper's Theorem 3.3 prediction with the nominal step alpha = lr * r * A: under Adam
    on a network its magnitude is not the logits' real step, so the panel has its own scale per
    axis and reports the correlation and sign agreement. Right, the logit-space prediction with
    the measured logit change: a quantitative check, drawn on equal axes with the identity line.
    """
    notes: list[str] = []
    panels = []
    for key, quantitative in ((keys.PRED_DELTA_PAPER, False), (keys.PRED_DELTA_LOGIT, True)):
        pairs = _probe_pairs(runs, key)
        if pairs:
            panels.append((key, quantitative, pairs))
        else:
            notes.append(f"no run logs both '{key}' and '{keys.MEASURED_DELTA}'")
    if not panels:
        return None, notes
    fig, axes = new_figure(1, len(panels), panel_width=5.0, panel_height=4.8)
    for ax, (key, quantitative, pairs) in zip(axes[0], panels, strict=True):
        pred_all = np.concatenate([p for p, _ in pairs.values()])
        meas_all = np.concatenate([m for _, m in pairs.values()])
        ex = _exponent(np.concatenate([pred_all, meas_all]) if quantitative else pred_all)
        ey = ex if quantitative else _exponent(meas_all)
        notes += identical_notes(
            f"'{key}' and '{keys.MEASURED_DELTA}'",
            {name: np.concatenate(pair) for name, pair in pairs.items()},
        )
        for name, (pred, meas) in pairs.items():
            ax.scatter(
                pred / 10.0**ex,
                meas / 10.0**ey,
                s=20,
                alpha=0.8,
                color=colors[name],
                label=f"{name}: r = {format_ratio(pearson_or_none(pred, meas))}, n = {pred.size}",
            )
        ax.axhline(0, color="0.6", linewidth=0.7)
        ax.axvline(0, color="0.6", linewidth=0.7)
        r_text = f"Pearson r = {format_ratio(pearson_or_none(pred_all, meas_all))} over {pred_all.size} probes"
        if quantitative:
            low = min(pred_all.min(), meas_all.min()) / 10.0**ex
            high = max(pred_all.max(), meas_all.max()) / 10.0**ex
            pad = 0.06 * (high - low) if high > low else 1.0
            limits = (low - pad, high + pad)
            ax.plot(
                limits,
                limits,
                color="0.4",
                linestyle="--",
                linewidth=1,
                label="measured = predicted",
            )
            ax.set_xlim(limits)
            ax.set_ylim(limits)
            ax.set_title(f"Logit-space prediction  −Σ_j S_j Δz_j\n{r_text}")
        else:
            moving = pred_all != 0
            agree = int((np.sign(pred_all) == np.sign(meas_all))[moving].sum())
            ax.set_title(
                f"Paper's prediction  −α (S* − N)  (Thm 3.3)\n{r_text}; "
                f"sign agrees at {agree}/{int(moving.sum())}"
            )
        ax.set_xlabel(f"predicted ΔH ({_unit(ex)})  [{key}]")
        ax.set_ylabel(f"measured ΔH ({_unit(ey)})  [{keys.MEASURED_DELTA}]")
        ax.legend(loc="upper left")
    return fig, notes


def _exponent(values: np.ndarray) -> int:
    """A multiple of 3 to scale `values` by so that tick labels stay short (0 for 0.1 .. 100)."""
    top = float(np.abs(values).max()) if values.size else 0.0
    if top == 0.0 or not np.isfinite(top):
        return 0
    power = int(np.floor(np.log10(top)))
    return 0 if -1 <= power <= 2 else 3 * (power // 3)


def _unit(exponent: int) -> str:
    return "nats" if exponent == 0 else f"$10^{{{exponent}}}$ nats"


def draw_drop_fractions(runs: list[RunRecord], colors: Colors) -> Drawn:
    """Every `*/frac_dropped` and PPO clip-fraction metric per step: one panel per metric.

    A metric that is 0 at every step of every run (e.g. PPO clipping when strictly on-policy)
    gets a note instead of an empty panel.
    """
    found = sorted({k for run in runs for k in run.metric_keys() if keys.is_drop_fraction(k)})
    if not found:
        return None, ["no '*/frac_dropped' or PPO clip-fraction metric in any run"]
    drop_keys = [k for k in found if any(np.any(run.series(k)[1] != 0) for run in runs)]
    notes = [
        f"'{k}' is 0 at every step of every run; not drawn" for k in found if k not in drop_keys
    ]
    if not drop_keys:
        return None, notes
    ncols = min(3, len(drop_keys))
    nrows = -(-len(drop_keys) // ncols)
    fig, axes = new_figure(nrows, ncols, panel_width=4.6, panel_height=3.4)
    for ax, key in zip(axes.flat, drop_keys, strict=False):
        drawn = {}
        for run in runs:
            steps, values = run.series(key)
            if steps.size:
                ax.plot(
                    steps, values, color=colors[run.name], label=run.name, **plot_kwargs(steps.size)
                )
                drawn[run.name] = np.concatenate([steps, values])
        notes += identical_notes(f"'{key}'", drawn)
        ax.set_title(key)
        ax.set_xlabel("training step")
        ax.set_ylabel("tokens dropped (% of valid tokens)")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{100 * value:.3g}%"))
        ax.set_ylim(bottom=0)
        ax.legend()
    for ax in list(axes.flat)[len(drop_keys) :]:
        ax.set_visible(False)
    return fig, notes
