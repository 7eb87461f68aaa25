"""Experiment ``sign-test``: the paper's four-condition masking under GRPO (Thm 3.2 in training).

``entropy-dynamics reproduce sign-test [--quick]``. Four conditions: train only on positive- or
only on negative-advantage samples, and within them only on tokens with S_* > 0 or only S_* < 0
(``grpo + sign_condition(sample=+-1, side=+-1)``), with the real trainer, >= 20 steps and 8 seeds
(default size). Thm 3.2 (``dH = -eps S_*``, eps of A's sign) predicts entropy falls for
(A > 0, S_* > 0) and (A < 0, S_* < 0) and rises for the other two. Measured two ways: the
trainer's entropy probe (entropy of the batch's positions re-measured after each update, summed
over the run), and the entropy of fresh rollouts (last steps minus first steps).

The filter is the registered method part ``sign_condition`` (``methods/filters.py``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ._setup import train_run
from .common import ExperimentResult, markdown_table, save_figure, seed_interval

CONDITIONS = [  # (label, sample sign, S_* sign); Thm 3.2 predicts sign(dH) = -sample * side
    ("A>0, S*>0", 1, 1),
    ("A>0, S*<0", 1, -1),
    ("A<0, S*>0", -1, 1),
    ("A<0, S*<0", -1, -1),
]
SIZES = {
    "quick": {"seeds": [0], "steps": 4, "overrides": ["rollout.prompts_per_step=4"]},
    "default": {"seeds": list(range(8)), "steps": 20, "overrides": []},  # cheap: 8 seeds
}
WINDOW = 5  # steps averaged at each end of the fresh-rollout entropy trajectory


def _run(run_dir: Path, sample: int, side: int, seed: int, size: dict) -> dict:
    spec = f"grpo + sign_condition(sample={sample}, side={side})"
    rows = train_run(run_dir, size, seed=seed, spec=spec, extra=["logging.probe_every=1"])
    entropy = np.array([r["entropy/mean"] for r in rows])
    w = max(1, min(WINDOW, len(entropy) // 2))
    return {
        "probe_sum": float(sum(r.get("entropy/measured_delta", 0.0) for r in rows)),
        "trajectory": float(entropy[-w:].mean() - entropy[:w].mean()),
        "entropy": entropy.tolist(),
        "kept_frac": float(np.mean([1 - r.get("sign_condition/frac_dropped", 1.0) for r in rows])),
    }


def run(out_dir, *, quick: bool = False) -> ExperimentResult:
    """Train each condition for each seed and compare the entropy movement with Thm 3.2."""
    size = SIZES["quick" if quick else "default"]
    result = ExperimentResult("sign-test", quick)
    result.settings = {
        "steps": size["steps"],
        "seeds": size["seeds"],
        "overrides": size["overrides"],
        "window": WINDOW,
    }
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, sample, side in CONDITIONS:
            runs[label] = [
                _run(Path(tmp) / f"{sample}_{side}_{seed}", sample, side, seed, size)
                for seed in size["seeds"]
            ]
    table, probe_ok, traj_ok = [], 0, 0
    for label, sample, side in CONDITIONS:
        expected = -sample * side
        probe = np.array([r["probe_sum"] for r in runs[label]])
        traj = np.array([r["trajectory"] for r in runs[label]])
        probe_match, traj_match = _on_side(probe, expected), _on_side(traj, expected)
        probe_ok += probe_match
        traj_ok += traj_match
        table.append(
            (
                label,
                "falls" if expected < 0 else "rises",
                float(probe.mean()),
                float(probe.std()),
                probe_match,
                float(traj.mean()),
                float(traj.std()),
                traj_match,
                float(np.mean([r["kept_frac"] for r in runs[label]])),
            )
        )
        result.metrics[label] = {"expected_sign": expected, "runs": runs[label]}
    result.check(
        "Four-condition masking: the entropy probe (summed per-update change) moves as "
        "Thm 3.2 predicts",
        probe_ok == 4,
        f"{probe_ok}/4",
        "4/4",
        "95 % Student-t interval over seeds on the predicted side of 0; the paper reports 4/4",
    )
    result.check(
        "Four-condition masking: fresh-rollout entropy (last - first steps) moves as "
        "Thm 3.2 predicts",
        traj_ok == 4,
        f"{traj_ok}/4",
        "4/4",
        "95 % Student-t interval over seeds on the predicted side of 0",
    )
    result.notes = markdown_table(
        [
            "condition",
            "theory",
            "probe sum (mean)",
            "std",
            "match",
            "rollout dH (mean)",
            "std",
            "match",
            "tokens kept",
        ],
        table,
    )
    _figure(result, out_dir, runs)
    return result


def _on_side(values: np.ndarray, expected: int) -> bool:
    """Whether the 95 % interval over seeds of `values` lies wholly on the `expected` side of 0
    (one seed: no interval, so no)."""
    interval = seed_interval(values)
    if interval["lo"] is None:
        return False
    return bool(interval["lo"] > 0) if expected > 0 else bool(interval["hi"] < 0)


def _figure(result: ExperimentResult, out_dir, runs) -> None:
    from ..report.plotting import new_figure

    fig, axes = new_figure(1, 1, panel_width=6.0, panel_height=4.2)
    ax = axes[0, 0]
    for (label, sample, side), color in zip(CONDITIONS, ["C0", "C1", "C2", "C3"], strict=True):
        curves = np.array([r["entropy"] for r in runs[label]])
        steps = np.arange(1, curves.shape[1] + 1)
        arrow = "falls" if sample * side > 0 else "rises"
        ax.plot(steps, curves.mean(0), color=color, label=f"{label} (theory: {arrow})")
        if len(curves) > 1:
            ax.fill_between(steps, curves.min(0), curves.max(0), color=color, alpha=0.2)
    ax.set(
        xlabel="step",
        ylabel="mean entropy of fresh rollouts",
        title="Four-condition masking (mean, min-max over seeds)",
    )
    ax.legend(fontsize=7)
    save_figure(fig, result, out_dir, "sign_test_entropy.png")
