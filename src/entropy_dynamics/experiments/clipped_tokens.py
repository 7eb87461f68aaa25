"""Experiment ``clipped-tokens``: which tokens PPO's ratio clip removes (paper sec. 4.2, item 1).

``entropy-dynamics reproduce clipped-tokens [--quick]``. Strictly on-policy GRPO has ratio
r = 1 at its only update, so nothing is ever clipped. To get r != 1 we run the trainer's own step
(``train.loop.train_step``) with ``ppo_epochs = 4``: epochs 2-4 reuse the batch and are
off-policy. An observer around the method records, at every off-policy epoch, the tokens whose
clipped branch is active: upper side (A > 0, r > 1 + eps_high) and lower side (A < 0,
r < 1 - eps_low), with their probability under the sampler (``exp(old log p)``), and S_* and N
at plan time. The paper: clipped tokens are unlikely (max probability about 0.15), so below the
baseline N; on positive samples the upper clip removes entropy-RAISING updates.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch

from ._setup import base_config
from .common import ExperimentResult, save_figure

SIZES = {
    "quick": {"steps": 2, "overrides": ["rollout.prompts_per_step=4"]},
    "default": {"steps": 25, "overrides": []},
}
EPOCHS = 4
PAPER_MAX_P = 0.15


class ClipObserver:
    """Wraps a Method; records the tokens the PPO clip cuts at off-policy epochs (r != 1)."""

    def __init__(self, method):
        self.inner = method
        self.batch = None
        self.records: list[dict[str, np.ndarray]] = []
        self.all_p: list[np.ndarray] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def plan(self, batch, **kw):
        self.batch = batch
        self.all_p.append(batch.old_logprobs[batch.mask].exp().double().numpy())
        return self.inner.plan(batch, **kw)

    def token_loss(self, *, logprobs, old_logprobs, advantages, plan, **kw):
        _, diag = self.inner.surrogate.loss(logprobs.detach(), old_logprobs, advantages)
        if not torch.equal(diag["ratio"], torch.ones_like(diag["ratio"])):
            b = self.batch
            for side in ("high", "low"):
                cut = diag[f"clipped_{side}"] & plan.keep
                self.records.append(
                    {
                        "side": side,
                        "p_old": old_logprobs[cut].exp().double().numpy(),
                        "ratio": diag["ratio"][cut].double().numpy(),
                        "S": b.discriminator[cut].double().numpy(),
                        "N": b.baseline[cut].double().numpy(),
                        "n_kept": int(plan.keep.sum()),
                    }
                )
        return self.inner.token_loss(
            logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, plan=plan, **kw
        )


def _collect(cfg) -> ClipObserver:
    """Build the trainer's run, swap its method for the observer, and take ``cfg.steps`` steps
    with the trainer's own ``train_step``."""
    from ..train.loop import train_step
    from ..train.setup import build_run, problem_order

    run = build_run(cfg)
    observer = ClipObserver(run.method)
    run.method = observer
    try:
        while run.step < cfg.steps:
            order = problem_order(len(run.train_problems), cfg, run.step)
            train_step(run, [run.train_problems[i] for i in order])
            run.step += 1
    finally:
        if hasattr(run.task, "close"):
            run.task.close()
    return observer


def run(out_dir, *, quick: bool = False) -> ExperimentResult:
    """Collect the clipped tokens of an off-policy (ppo_epochs = 4) GRPO run and summarise them."""
    size = SIZES["quick" if quick else "default"]
    result = ExperimentResult("clipped-tokens", quick)
    result.settings = {
        "steps": size["steps"],
        "ppo_epochs": EPOCHS,
        "method": "grpo (ppo clip 0.2)",
        "overrides": size["overrides"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        cfg = base_config(
            tmp,
            *size["overrides"],
            f"steps={size['steps']}",
            f"method.ppo_epochs={EPOCHS}",
            "method.spec=grpo",
        )
        observer = _collect(cfg)
    sides = {}
    for side in ("high", "low"):
        recs = [r for r in observer.records if r["side"] == side]
        sides[side] = {
            k: np.concatenate([r[k] for r in recs]) if recs else np.zeros(0)
            for k in ("p_old", "ratio", "S", "N")
        }
    all_p = np.concatenate(observer.all_p)
    clipped_p = np.concatenate([sides[s]["p_old"] for s in sides])
    below = np.concatenate([sides[s]["S"] < sides[s]["N"] for s in sides])
    high_below = sides["high"]["S"] < sides["high"]["N"]
    summary = {
        side: {
            "count": len(v["p_old"]),
            "max_p": float(v["p_old"].max()) if len(v["p_old"]) else None,
            "median_p": float(np.median(v["p_old"])) if len(v["p_old"]) else None,
            "frac_below_baseline": float((v["S"] < v["N"]).mean()) if len(v["p_old"]) else None,
        }
        for side, v in sides.items()
    }
    result.metrics = {
        "by_side": summary,
        "clipped_total": len(clipped_p),
        "off_policy_token_passes": int(sum(r["n_kept"] for r in observer.records) // 2),
        "all_tokens_median_p": float(np.median(all_p)),
        "clipped_p_quantiles": {
            q: float(np.quantile(clipped_p, q)) if len(clipped_p) else None
            for q in (0.5, 0.9, 0.99, 1.0)
        },
    }
    if len(clipped_p) == 0:
        result.check("PPO's clip removes some tokens when the batch is reused", False, 0, ">0")
        return result
    result.check(
        f"Clipped tokens are unlikely: max probability about {PAPER_MAX_P} (within 2x)",
        float(clipped_p.max()) <= 2 * PAPER_MAX_P,
        float(clipped_p.max()),
        2 * PAPER_MAX_P,
        "probability under the sampler; both sides pooled",
    )
    result.check(
        "Most clipped tokens lie below the baseline (S_* < N)",
        float(below.mean()) >= 0.5,
        float(below.mean()),
        0.5,
        "fraction of clipped tokens",
    )
    if len(high_below):
        result.check(
            "Upper clip on positive samples removes entropy-raising updates (A > 0, S_* < N)",
            float(high_below.mean()) >= 0.5,
            float(high_below.mean()),
            0.5,
            "fraction of upper-clipped tokens",
        )
    _figure(result, out_dir, sides, all_p)
    return result


def _figure(result, out_dir, sides, all_p) -> None:
    from ..report.plotting import new_figure

    fig, axes = new_figure(1, 2, panel_width=5.0, panel_height=4.0)
    ax = axes[0, 0]
    bins = np.linspace(0, 1, 41)
    ax.hist(all_p, bins=bins, density=True, alpha=0.4, color="gray", label="all sampled tokens")
    for side, color in (("high", "C3"), ("low", "C0")):
        if len(sides[side]["p_old"]):
            ax.hist(
                sides[side]["p_old"],
                bins=bins,
                density=True,
                histtype="step",
                lw=2,
                color=color,
                label=f"clipped, {side} side ({len(sides[side]['p_old'])})",
            )
    ax.axvline(PAPER_MAX_P, color="k", ls="--", lw=1, label=f"paper's max ({PAPER_MAX_P})")
    ax.set(
        xlabel="probability of the sampled token",
        ylabel="density",
        yscale="log",
        title="Tokens PPO's clip removes (ppo_epochs=4)",
    )
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for side, color in (("high", "C3"), ("low", "C0")):
        v = sides[side]
        if len(v["p_old"]):
            ax.scatter(v["p_old"], v["S"] - v["N"], s=6, alpha=0.5, color=color, label=side)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(
        xlabel="probability of the sampled token",
        ylabel="S_* - N",
        title="clipped tokens vs the baseline",
    )
    ax.legend(fontsize=7)
    save_figure(fig, result, out_dir, "clipped_tokens.png")
