"""Experiment ``corollary``: Cor. 3.5, the batch mean of S_* - N against the batch mean of S_*.

``entropy-dynamics reproduce corollary [--quick]``. A strictly on-policy GRPO run with the real
trainer (temperature 1, top-p 1, one PPO epoch: the sampler is the policy). Per step, from the
trainer's per-token file ``dist/step-N.npz`` (S_* and N of every valid token): the batch mean of
the deviation ``S_* - N``, its standard error ``std / sqrt(n)``, and the batch mean of S_*.
Cor. 3.4 makes each token's deviation a zero-mean martingale difference given its prefix, so the
batch mean should be zero up to sampling noise of order ``1 / sqrt(n)``; the paper's "about 1e-3
of the mean of S_*" comes from batches of millions of tokens.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ._setup import train_run
from .common import ExperimentResult, save_figure

SIZES = {
    "quick": {"steps": 3, "seeds": [0], "overrides": ["rollout.prompts_per_step=4"]},
    "default": {"steps": 30, "seeds": [0, 1], "overrides": []},
}
PAPER_RATIO = 1e-3


def _per_step(run_dir: Path) -> list[dict]:
    """Per-step batch statistics of the deviation, from the trainer's dist/step-N.npz files."""
    rows = []
    files = sorted((run_dir / "dist").glob("step-*.npz"), key=lambda p: int(p.stem.split("-")[1]))
    for path in files:
        data = np.load(path)
        S, N = data["discriminator"].astype(np.float64), data["baseline"].astype(np.float64)
        deviation = S - N
        n = len(S)
        se = deviation.std() / np.sqrt(n)
        rows.append(
            {
                "step": int(path.stem.split("-")[1]),
                "n": n,
                "mean_S": float(S.mean()),
                "mean_dev": float(deviation.mean()),
                "se_dev": float(se),
                "ratio": float(abs(deviation.mean()) / abs(S.mean())),
                "noise_ratio": float(se / abs(S.mean())),
                "z": float(deviation.mean() / se) if se > 0 else 0.0,
            }
        )
    return rows


def run(out_dir, *, quick: bool = False) -> ExperimentResult:
    """Train GRPO on-policy and compare the deviation's batch mean with S_*'s and with noise."""
    size = SIZES["quick" if quick else "default"]
    result = ExperimentResult("corollary", quick)
    result.settings = {
        "steps": size["steps"],
        "seeds": size["seeds"],
        "overrides": size["overrides"],
        "method": "grpo",
        "temperature": 1.0,
        "top_p": 1.0,
        "ppo_epochs": 1,
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in size["seeds"]:
            run_dir = Path(tmp) / f"seed{seed}"
            train_run(run_dir, size, seed=seed, spec="grpo", extra=["logging.probe_every=1"])
            rows += [{**r, "seed": seed} for r in _per_step(run_dir)]
    ratio = np.array([r["ratio"] for r in rows])
    noise = np.array([r["noise_ratio"] for r in rows])
    z = np.array([r["z"] for r in rows])
    result.metrics = {
        "per_step": rows,
        "median_ratio": float(np.median(ratio)),
        "median_noise_ratio": float(np.median(noise)),
        "median_tokens": float(np.median([r["n"] for r in rows])),
        "frac_within_3se": float(np.mean(np.abs(z) <= 3)),
    }
    result.check(
        "Cor. 3.5 (paper's number): |batch mean of S_* - N| / |batch mean of S_*| is "
        "about 1e-3 (median over steps, within 10x)",
        float(np.median(ratio)) <= 10 * PAPER_RATIO,
        float(np.median(ratio)),
        10 * PAPER_RATIO,
        f"paper: ~{PAPER_RATIO:g} with millions of tokens per batch",
    )
    result.check(
        "Cor. 3.5 (content): the batch mean of S_* - N is zero up to sampling noise "
        "(|mean| <= 3 standard errors)",
        float(np.mean(np.abs(z) <= 3)) >= 0.9,
        float(np.mean(np.abs(z) <= 3)),
        0.9,
        "fraction of steps",
    )
    result.check(
        "The measured ratio sits at the 1/sqrt(n) noise floor (median ratio <= "
        "2 x median SE / |mean S_*|)",
        float(np.median(ratio)) <= 2 * float(np.median(noise)),
        {"ratio": float(np.median(ratio)), "noise floor": float(np.median(noise))},
        "2x",
    )
    result.notes = (
        f"Median batch: {result.metrics['median_tokens']:.0f} tokens, so the noise "
        f"floor SE/|mean S_*| is {np.median(noise):.3g}; a batch of 4M tokens would "
        f"have a floor about {np.sqrt(result.metrics['median_tokens'] / 4e6) * np.median(noise):.2g}."
    )
    _figure(result, out_dir, rows)
    return result


def _figure(result, out_dir, rows) -> None:
    from ..report.plotting import new_figure

    fig, axes = new_figure(1, 2, panel_width=5.0, panel_height=4.0)
    ax = axes[0, 0]
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        steps = [r["step"] for r in mine]
        ax.semilogy(
            steps,
            [abs(r["mean_S"]) for r in mine],
            "o-",
            ms=3,
            color="C0",
            label="|mean S_*|" if seed == rows[0]["seed"] else None,
        )
        ax.semilogy(
            steps,
            [abs(r["mean_dev"]) for r in mine],
            "s-",
            ms=3,
            color="C1",
            label="|mean (S_* - N)|" if seed == rows[0]["seed"] else None,
        )
        ax.semilogy(
            steps,
            [r["se_dev"] for r in mine],
            ":",
            color="C2",
            label="standard error of mean (S_* - N)" if seed == rows[0]["seed"] else None,
        )
    ax.set(xlabel="step", ylabel="batch mean", title="Cor. 3.5 over a GRPO run")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.hist([r["z"] for r in rows], bins=15, color="C1", alpha=0.8)
    ax.set(
        xlabel="mean (S_* - N) / standard error",
        ylabel="steps",
        title="deviation in units of sampling noise",
    )
    save_figure(fig, result, out_dir, "corollary.png")
