"""Experiment ``network``: one optimiser step on a real network, measured vs predicted entropy change.

``entropy-dynamics reproduce network [--quick]``. The paper reasons about free logits; a network
moves every position's logits through shared parameters. For the tiny char model (SFT warm
start, fp64) and, at default size only, SmolLM2-135M-Instruct (fp64), we sample responses
on-policy, take ONE optimiser step (SGD and Adam, fresh optimiser state) on the surrogate
``A * log p_k`` (token-mean), either on one token (random position, A = +-1) or on the whole
batch (A ~ N(0, 1) per response), and compare the measured entropy change at every response
position with
  (a) the paper's Thm 3.3, ``-alpha_t (S_t - N_t)`` with the nominal step ``alpha_t = lr A_t / n``
      (zero at untrained positions), and
  (b) the logit-space first order ``-sum_j S_j dz_j`` with the measured logit change ``dz``,
as the learning rate shrinks: Pearson, Spearman, sign agreement, and for (b) the residual's
order in lr. All predictions come from ``entropy_dynamics.theory``.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import theory
from ..aggregation import aggregate
from ..tasks import get as get_task
from ..token_stats import token_stats
from ._setup import base_config
from .common import (
    ExperimentResult,
    correlations,
    fit_loglog_slope,
    save_figure,
    sign_agreement,
)

SIZES = {
    "quick": {"models": ["tiny"], "prompts": 4, "group": 2, "max_new_tokens": 6, "token_trials": 6},
    "default": {
        "models": ["tiny", "smollm2"],
        "prompts": 8,
        "group": 4,
        "max_new_tokens": 8,
        "token_trials": 24,
    },
}
SMOLLM2_SIZE = {"prompts": 2, "group": 2, "max_new_tokens": 8, "token_trials": 4}
LRS = {  # per optimiser, largest first; the smallest is where first-order claims are checked
    "tiny": {"sgd": [1e-1, 1e-2, 1e-3, 1e-4], "adam": [1e-3, 1e-4, 1e-5, 1e-6]},
    "smollm2": {"sgd": [1e-3, 1e-5], "adam": [1e-5, 1e-7]},
}
QUICK_LRS = {"sgd": [1e-1, 1e-3, 1e-4], "adam": [1e-3, 1e-5, 1e-6]}
# The residual's order is a small-step statement: its slope is fitted over the two smallest lrs
# (the largest show where the first order breaks down, in the figure, not in the fit).
ORDER_FIT_LRS = 2


def _load(name: str, tmp_dir):
    """(model in fp64, tokenizer, prompts) for "tiny" (SFT warm start, cached) or "smollm2"."""
    from ..train.setup import build_policy

    extra = [] if name == "tiny" else ["model.sft_steps=0", "model.tiny={}"]
    cfg = base_config(tmp_dir, f"model.name={name}", *extra)
    task = get_task(cfg.task.name, **cfg.task.options)
    model, tokenizer = build_policy(cfg, task=task)
    prompts = [task.format_prompt(p) for p in task.problems("train", 64, seed=1)]
    return model.double().eval(), tokenizer, prompts


def _response_logits(model, rollout) -> torch.Tensor:
    """Teacher-forced logits ``[B, T, V]`` in the model's dtype (fp64 here).

    Same positions as ``train.rollout.response_logits``, which casts to fp32; fp32 would put a
    roundoff floor of about 1e-7 under the small entropy changes this experiment measures.
    """
    T = rollout.response_ids.shape[1]
    mask = rollout.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=rollout.input_ids[:, :-1],
        attention_mask=mask[:, :-1],
        position_ids=positions[:, :-1],
        use_cache=False,
    )
    return out.logits[:, -T:]


def _step(model, state, rollout, advantages, train_mask, *, optimizer: str, lr: float):
    """Restore ``state``, take one step on ``token-mean(-A log p_k)`` over ``train_mask``;
    return the new logits ``[B, T, V]`` (no grad)."""
    model.load_state_dict(state)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else torch.optim.Adam(params, lr=lr)
    logits = _response_logits(model, rollout)
    stats = token_stats(logits, rollout.response_ids, mask=train_mask)
    loss = aggregate(-advantages * stats.logprobs, train_mask, "token-mean")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        return _response_logits(model, rollout)


def _compare(z0, z1, labels, alpha) -> dict[str, torch.Tensor]:
    """Measured dH and predictions (a), (b), each ``[B, T]``."""
    return {
        "measured": theory.entropy(z1) - theory.entropy(z0),
        "paper": theory.predict_grpo_step_change(z0, labels, alpha),
        "logit": theory.predict_entropy_change(z0, z1 - z0),
    }


def _batch_step(model, state, rollout, z0, gen, *, optimizer, lr) -> tuple[dict, dict]:
    """One step on the whole batch: (agreement of (a) and (b) with the measurement over the valid
    positions, the per-position arrays for the scatter plot)."""
    mask = rollout.response_mask
    B = mask.shape[0]
    advantages = torch.randn(B, 1, generator=gen, dtype=z0.dtype).expand_as(mask)
    z1 = _step(model, state, rollout, advantages, mask, optimizer=optimizer, lr=lr)
    alpha = lr * advantages * mask / mask.sum()
    out = {k: v[mask].numpy() for k, v in _compare(z0, z1, rollout.response_ids, alpha).items()}
    m = out["measured"]
    row = {
        "n": len(m),
        "mean_abs_measured": float(np.abs(m).mean()),
        "residual_logit": float(np.median(np.abs(m - out["logit"]))),
    }
    for kind in ("paper", "logit"):
        row[kind] = {**correlations(out[kind], m), "sign": sign_agreement(out[kind], m)}
    return row, out


def _token_steps(model, state, rollout, z0, gen, trials, *, optimizer, lr) -> dict:
    """``trials`` one-token steps: signs at the trained position and the spill-over elsewhere."""
    mask = rollout.response_mask
    valid = mask.nonzero()
    picks = valid[torch.randperm(len(valid), generator=gen)[:trials]]
    at, spill = {"measured": [], "paper": [], "logit": []}, []
    for i, (b, t) in enumerate(picks.tolist()):
        one = torch.zeros_like(mask)
        one[b, t] = True
        advantages = torch.full(mask.shape, 1.0 if i % 2 == 0 else -1.0, dtype=z0.dtype)
        z1 = _step(model, state, rollout, advantages, one, optimizer=optimizer, lr=lr)
        res = _compare(z0, z1, rollout.response_ids, lr * advantages * one)
        for key in at:
            at[key].append(float(res[key][b, t]))
        others = mask & ~one
        spill.append(float(res["measured"][others].abs().median() / res["measured"][b, t].abs()))
    m = np.array(at["measured"])
    return {
        "paper_sign": sign_agreement(at["paper"], m),
        "logit_sign": sign_agreement(at["logit"], m),
        "paper_pearson": correlations(at["paper"], m)["pearson"],
        "spillover_median": float(np.median(spill)),
        "trials": len(m),
    }


def _run_model(name: str, size: dict, quick: bool, tmp_dir) -> tuple[dict, dict]:
    """Sample on-policy responses, then every (optimiser, lr) step; returns (metrics, scatter)."""
    model, tokenizer, prompts = _load(name, tmp_dir)
    from ..train.rollout import sample

    gen = torch.Generator().manual_seed(0)
    rollout = sample(
        model,
        tokenizer,
        prompts[: size["prompts"]],
        group_size=size["group"],
        temperature=1.0,
        max_new_tokens=size["max_new_tokens"],
        generator=gen,
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        z0 = _response_logits(model, rollout)
    H = theory.entropy(z0)[rollout.response_mask]
    info = {
        "tokens": int(rollout.response_mask.sum()),
        "entropy_mean": float(H.mean()),
        "params": sum(p.numel() for p in model.parameters()),
        "by_optimizer": {},
    }
    scatter = {}
    for optimizer, lrs in (QUICK_LRS if quick else LRS[name]).items():
        rows = []
        for lr in lrs:
            # the same advantages and trained tokens at every lr: only the step size changes,
            # so the residual's slope against lr measures its order, not a new direction
            step_gen = torch.Generator().manual_seed(1)
            batch, points = _batch_step(
                model, state, rollout, z0, step_gen, optimizer=optimizer, lr=lr
            )
            token = _token_steps(
                model, state, rollout, z0, step_gen, size["token_trials"], optimizer=optimizer,
                lr=lr,
            )  # fmt: skip
            rows.append({"lr": lr, "batch": batch, "token": token})
        scatter[optimizer] = points  # the smallest lr's batch step
        info["by_optimizer"][optimizer] = rows
    model.load_state_dict(state)
    return info, scatter


def run(out_dir, *, quick: bool = False) -> ExperimentResult:
    """Run the one-step comparisons for each model; see the module docstring."""
    import tempfile

    size = SIZES["quick" if quick else "default"]
    result = ExperimentResult("network", quick)
    result.settings = {
        **size,
        "lrs": QUICK_LRS if quick else LRS,
        "dtype": "float64",
        "smollm2_size": SMOLLM2_SIZE,
        "seed": 0,
    }
    scatters = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        for name in size["models"]:
            model_size = size if name == "tiny" else {**size, **SMOLLM2_SIZE}
            info, scatters[name] = _run_model(name, model_size, quick, tmp_dir)
            result.metrics[name] = info
    _claims(result)
    _figures(result, out_dir, scatters)
    return result


def _claims(result: ExperimentResult) -> None:
    logit_r, residual_slopes, paper_token, paper_batch, spill = {}, {}, {}, {}, {}
    for name, info in result.metrics.items():
        for optimizer, rows in info["by_optimizer"].items():
            key, last = f"{name}/{optimizer}", rows[-1]
            logit_r[key] = last["batch"]["logit"]["pearson"]
            small = rows[-ORDER_FIT_LRS:]
            residual_slopes[key] = fit_loglog_slope(
                [r["lr"] for r in small], [r["batch"]["residual_logit"] for r in small]
            )
            paper_token[key] = last["token"]["paper_sign"]
            paper_batch[key] = last["batch"]["paper"]["pearson"]
            spill[key] = last["token"]["spillover_median"]
    result.check(
        "(b) logit-space first order -sum_j S_j dz_j matches the measured per-position "
        "dH at the smallest lr (Pearson)",
        min(logit_r.values()) >= 0.99,
        logit_r,
        0.99,
        "every model x optimiser, batch step",
    )
    result.check(
        "(b) its residual is second order in the step (log-log slope vs lr, two smallest lrs)",
        min(residual_slopes.values()) >= 1.5,
        residual_slopes,
        1.5,
        "median |measured - (b)| over positions",
    )
    result.check(
        "(a) paper's -alpha (S_* - N) has the measured sign at the trained token "
        "(one-token step, smallest lr)",
        min(paper_token.values()) >= 0.9,
        paper_token,
        0.9,
        "fraction of one-token trials",
    )
    result.check(
        "(a) -alpha_t (S_t - N_t) predicts per-position dH of a batch step (Pearson, smallest lr)",
        min(paper_batch.values()) >= 0.5,
        paper_batch,
        0.5,
        "the paper's free-logit step vs a network with shared parameters",
    )
    result.check(
        "(a) assumes a one-token step leaves other positions alone: median |dH| "
        "elsewhere / |dH| at the trained token",
        max(spill.values()) <= 0.1,
        spill,
        0.1,
        "smallest lr; > threshold means the update is not local",
    )


def _figures(result: ExperimentResult, out_dir, scatters) -> None:
    from ..report.plotting import new_figure

    fig, axes = new_figure(1, 2, panel_width=5.0, panel_height=4.0)
    for ax, setting, field in ((axes[0, 0], "batch", "pearson"), (axes[0, 1], "token", "sign")):
        for name, info in result.metrics.items():
            for optimizer, rows in info["by_optimizer"].items():
                lrs = [r["lr"] for r in rows]
                if setting == "batch":
                    ys = {k: [r["batch"][k]["pearson"] for r in rows] for k in ("paper", "logit")}
                else:
                    ys = {k: [r["token"][f"{k}_sign"] for r in rows] for k in ("paper", "logit")}
                for kind, style in (("paper", "o--"), ("logit", "s-")):
                    ax.semilogx(lrs, ys[kind], style, label=f"{name} {optimizer} ({kind})")
        ax.set(
            xlabel="learning rate",
            ylabel="Pearson r" if field == "pearson" else "sign agreement",
            title="batch step: Pearson(pred, measured)"
            if setting == "batch"
            else "one-token step: sign at the trained token",
        )
        ax.axhline(1.0, color="k", lw=0.5)
        ax.legend(fontsize=6)
    save_figure(fig, result, out_dir, "network_agreement_vs_lr.png")

    panels = [(n, o) for n, s in scatters.items() for o in s]
    fig, axes = new_figure(2, len(panels), panel_width=3.6, panel_height=3.4)
    for col, (name, optimizer) in enumerate(panels):
        points = scatters[name][optimizer]
        for row, kind in enumerate(("paper", "logit")):
            ax = axes[row, col]
            ax.scatter(points[kind], points["measured"], s=5, alpha=0.6)
            ax.axhline(0, color="k", lw=0.5)
            ax.axvline(0, color="k", lw=0.5)
            if kind == "logit":
                lim = np.abs(points["measured"]).max()
                ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
            ax.set(
                title=f"{name} {optimizer}, smallest lr",
                ylabel="measured dH",
                xlabel="(a) -alpha (S - N)" if kind == "paper" else "(b) -sum S dz",
            )
            ax.ticklabel_format(style="sci", scilimits=(-2, 2))
    save_figure(fig, result, out_dir, "network_scatter.png")
