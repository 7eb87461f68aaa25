"""Report figures of distributions: per-token S_* split by advantage sign, and pass-rate histograms."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import LogLocator, NullFormatter, PercentFormatter

from entropy_dynamics.report.figures import Colors, Drawn
from entropy_dynamics.report.plotting import identical_notes, new_figure
from entropy_dynamics.report.runs import RunRecord

# (short name for the x-axis and legend, title, function of the dist arrays, arrays it needs)
_QUANTITIES = (
    ("S*", "S* = p_k (H + log p_k)", lambda d: d["discriminator"], {"discriminator"}),
    (
        "S* − N",
        "S* − N, the Thm 3.3 deviation",
        lambda d: d["discriminator"] - d["baseline"],
        {"discriminator", "baseline"},
    ),
)


def draw_discriminator(runs: list[RunRecord], colors: Colors) -> Drawn:
    """Histograms of S_* (and S_* - N) over a batch's tokens, split by the sign of the advantage.

    Columns: tokens with A > 0 and A < 0 (A = 0 tokens carry no gradient and are left out).
    Rows: S_*, then S_* - N when a run saved the baseline N. Bins are shared by all runs and
    both columns of a row; the y-axis is the density on a log scale (at least three decades),
    since S_* is concentrated near 0 with long tails. Legends give each run's token count, the
    share of tokens above 0 (S_* > 0: relatively confident; S_* > N: entropy-lowering when
    rewarded) and, when the file has the plan's `keep`, how many of them the method dropped.
    """
    notes: list[str] = []
    with_dist = [run for run in runs if run.dist is not None]
    notes += [
        f"{run.name}: no dist/step-N.npz (per-token S_* not saved)"
        for run in runs
        if run.dist is None
    ]
    if not with_dist:
        return None, notes
    rows = [q for q in _QUANTITIES if any(q[3] <= run.dist.keys() for run in with_dist)]
    fig, axes = new_figure(len(rows), 2, panel_width=5.4, panel_height=3.5)
    for row_index, (short, title, compute, needs) in enumerate(rows):
        per_run = {
            run.name: (
                compute(run.dist),
                run.dist["advantages"],
                run.dist_step,
                run.dist.get("keep"),
            )
            for run in with_dist
            if needs <= run.dist.keys()
        }
        notes += identical_notes(
            f"{short} and advantages",
            {name: np.concatenate([values, adv]) for name, (values, adv, _, _) in per_run.items()},
        )
        pooled = np.concatenate([values for values, *_ in per_run.values()])
        low, high = float(pooled.min()), float(pooled.max())
        if high <= low:
            low, high = low - 0.5, high + 0.5
        typical = np.median([values.size for values, *_ in per_run.values()]) / 2
        bins = np.linspace(low, high, int(np.clip(np.sqrt(typical), 15, 50)) + 1)
        for col, (sign, side) in enumerate(((1.0, "A > 0"), (-1.0, "A < 0"))):
            ax = axes[row_index, col]
            for name, (values, advantages, step, keep) in per_run.items():
                side_mask = np.sign(advantages) == sign
                chosen = values[side_mask]
                if chosen.size == 0:
                    continue
                label = (
                    f"{name} (step {step}): {chosen.size} tokens, "
                    f"{100.0 * float((chosen > 0).mean()):.0f}% > 0"
                )
                if keep is not None:
                    label += f", {int((keep[side_mask] == 0).sum())} dropped"
                ax.hist(
                    chosen,
                    bins=bins,
                    density=True,
                    histtype="step",
                    linewidth=1.6,
                    color=colors[name],
                    label=label,
                )
            ax.axvline(0.0, color="0.4", linewidth=0.8, linestyle=":")
            _log_density_axis(ax)
            ax.set_title(f"{title}; tokens with {side}")
            ax.set_xlabel(f"{short} (nats)")
            ax.set_ylabel("density (log scale)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    for run in with_dist:
        zero = int((run.dist["advantages"] == 0).sum())
        if zero:
            notes.append(f"{run.name}: {zero} token(s) with A = 0 left out of the split")
    return fig, notes


def _log_density_axis(ax) -> None:
    """Log y-axis showing at least three decades below the top, labelled at decades only."""
    ax.set_yscale("log")
    bottom, top = ax.get_ylim()
    ax.set_ylim(min(bottom, top * 1e-3), top)
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_minor_formatter(NullFormatter())


def draw_pass_rate_hist(runs: list[RunRecord], colors: Colors) -> Drawn:
    """Share of held-out prompts with c of n samples correct (last evaluation), grouped bars."""
    notes: list[str] = []
    hists = {}
    for run in runs:
        row = next((e for e in reversed(run.evals) if "pass_rate_hist" in e), None)
        if row is None:
            notes.append(f"{run.name}: no 'pass_rate_hist' in eval.jsonl")
            continue
        counts = np.array(row["pass_rate_hist"], dtype=np.float64)
        if counts.sum() <= 0:
            notes.append(f"{run.name}: 'pass_rate_hist' sums to 0; skipped")
            continue
        hists[run.name] = (counts / counts.sum(), row["step"], int(counts.sum()))
    if not hists:
        return None, notes
    length = len(next(iter(hists.values()))[0])
    for name in [n for n, (h, _, _) in hists.items() if len(h) != length]:
        notes.append(
            f"{name}: {len(hists[name][0]) - 1} samples per prompt, not {length - 1} "
            "as the first run; left out of the histogram"
        )
        del hists[name]
    fig, axes = new_figure(
        panel_width=min(10.0, 4.0 + 0.25 * length * len(hists)), panel_height=3.8
    )
    ax = axes[0, 0]
    width = 0.8 / len(hists)
    positions = np.arange(length, dtype=np.float64)
    for index, (name, (shares, step, total)) in enumerate(hists.items()):
        offset = (index - (len(hists) - 1) / 2) * width
        ax.bar(
            positions + offset,
            shares,
            width=width,
            color=colors[name],
            label=f"{name} (step {step}, {total} prompts)",
        )
    ax.set_xticks(positions, [str(c) for c in range(length)])
    ax.set_xlabel(f"samples correct out of n = {length - 1}")
    ax.set_ylabel("share of held-out prompts")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_title("Pass-rate histogram (last evaluation)")
    ax.grid(axis="x", visible=False)
    ax.legend()
    return fig, notes
