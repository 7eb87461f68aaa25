"""Experiment ``theory``: Thm 3.2 / 3.3 first-order predictions against exact entropy changes.

``entropy-dynamics reproduce theory [--quick]``. Random softmax distributions (fp64 logits
``scale * N(0, 1)``, V from 10 to 151936, scale from 0.1 (flat) to 10 (peaked)); half of the
updated tokens are drawn from ``p`` (on-policy), half uniformly (to reach both signs of S_* and of
S_* - N). Checked: the error of each prediction falls like the step squared (log-log slope about 2);
prediction and exact change agree in sign at small steps; Cor. 3.4 (on-policy expectation of
S_* - N is 0, so the expected exact change of a GRPO step is second order, while an off-policy
sampler leaves a first-order term); ``S_j = -dH/dz_j`` by autograd; an entropy bonus raises
entropy. All math comes from ``entropy_dynamics.theory``.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import theory
from .common import ExperimentResult, fit_loglog_slope, save_figure, sign_agreement

VOCABS = {"quick": [10, 100, 151936], "default": [10, 100, 1000, 10000, 151936]}
SCALES = [0.1, 1.0, 3.0, 10.0]  # logit std: flat -> peaked
STEPS = np.logspace(-3, -1, 5)  # eps (Thm 3.2) and alpha (Thm 3.3)
SLOPE_BAND = (1.8, 2.2)
# fp64 resolution of an exact change H(z + dz) - H(z): two sums of up to 151936 terms of size
# ~H <= 12 differ by roundoff of about 1e-13. Changes below this floor are not resolvable, so a
# row enters a sign check only if |predicted| >= FLOOR, and a slope fit uses errors >= FLOOR.
FLOOR = 1e-11


def _rows(V: int, quick: bool) -> int:
    if V >= 100_000:
        return 4 if quick else 16
    return 12 if quick else 64


def _distributions(V: int, scale: float, rows: int, gen: torch.Generator):
    """fp64 logits ``[R, V]`` and tokens ``[R]`` (first half sampled from p, second half uniform)."""
    z = scale * torch.randn(rows, V, generator=gen, dtype=torch.float64)
    on_policy = torch.multinomial(torch.softmax(z, -1), 1, generator=gen).squeeze(-1)
    uniform = torch.randint(0, V, (rows,), generator=gen)
    token = torch.where(torch.arange(rows) < rows // 2, on_policy, uniform)
    return z, token


def _error_curves(z, token) -> dict[str, np.ndarray]:
    """Predicted and exact changes ``[steps, R]`` for both theorems."""
    out = {}
    for kind, predict, exact in (
        ("single", theory.predict_single_logit_change, theory.exact_single_logit_change),
        ("grpo", theory.predict_grpo_step_change, theory.exact_grpo_step_change),
    ):
        out[f"{kind}_pred"] = np.stack([predict(z, token, float(s)).numpy() for s in STEPS])
        out[f"{kind}_exact"] = np.stack([exact(z, token, float(s)).numpy() for s in STEPS])
    return out


def _median_slope(err: np.ndarray) -> float:
    """Median over rows of the log-log slope of error vs step, fitted on errors >= FLOOR;
    rows with fewer than 3 resolvable points are left out. err: ``[steps, R]``."""
    slopes = []
    for e in err.T:
        keep = e >= FLOOR
        if keep.sum() >= 3:
            slopes.append(fit_loglog_slope(STEPS[keep], e[keep]))
    return float(np.median(slopes)) if slopes else float("nan")


def _resolvable_sign_agreement(pred: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """Sign agreement over entries with |pred| >= FLOOR, and the fraction of entries used."""
    keep = np.abs(pred) >= FLOOR
    return sign_agreement(pred[keep], exact[keep]), float(keep.mean())


def _on_policy_expectation(z: torch.Tensor, alphas: np.ndarray) -> dict[str, np.ndarray]:
    """Over every token k: ``E_{k~p}[S_k - N]``, ``E_{k~q}[S_k - N]`` (q = softmax(z / 1.5)), and
    ``|E_{k~p}[exact dH]|`` vs ``E_{k~p}[|exact dH|]`` of one GRPO step, per alpha. z: ``[R, V]``."""
    R, V = z.shape
    p = torch.softmax(z, -1)
    q = torch.softmax(z / 1.5, -1)
    deviation = theory.discriminator(z) - theory.vocab_baseline(z).unsqueeze(-1)  # [R, V]
    every = z.unsqueeze(1).expand(R, V, V)  # [R, k, V]
    tokens = torch.arange(V).expand(R, V)  # [R, k]
    signed, absolute = [], []
    for a in alphas:
        dH = theory.exact_grpo_step_change(every, tokens, float(a))  # [R, k]
        signed.append((p * dH).sum(-1).abs().mean().item())
        absolute.append((p * dH.abs()).sum(-1).mean().item())
    return {
        "on_policy": (p * deviation).sum(-1).abs().numpy(),
        "off_policy": (q * deviation).sum(-1).abs().numpy(),
        # the size of the terms that cancel in sum_k p_k S_k - N: the roundoff scale. (E|S_k - N|
        # itself can be 1e-13 for a nearly one-hot p, which would make any roundoff look large.)
        "scale": (
            (p * theory.discriminator(z).abs()).sum(-1) + theory.vocab_baseline(z).abs()
        ).numpy(),
        "signed": np.array(signed),
        "absolute": np.array(absolute),
    }


def _autograd_identity(z: torch.Tensor) -> float:
    """max |dH/dz_j + S_j| / max |S_j| over a batch of fp64 logits."""
    z = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(theory.entropy(z).sum(), z)
    S = theory.discriminator(z.detach())
    return float((grad + S).abs().max() / S.abs().max())


def _entropy_bonus(z: torch.Tensor, beta: float = 1e-2) -> tuple[float, float]:
    """Fraction of rows where the bonus step dz = -beta S raises entropy exactly, and where the
    prediction ``beta |S|^2`` is positive."""
    dz = -beta * theory.discriminator(z)
    exact = theory.exact_entropy_change(z, dz)
    pred = theory.predict_entropy_change(z, dz)
    return float((exact > 0).double().mean()), float((pred > 0).double().mean())


def run(out_dir, *, quick: bool = False) -> ExperimentResult:
    """Run the theory checks and draw their figures; see the module docstring."""
    size = "quick" if quick else "default"
    result = ExperimentResult("theory", quick)
    result.settings = {
        "vocab_sizes": VOCABS[size],
        "scales": SCALES,
        "steps": STEPS.tolist(),
        "dtype": "float64",
        "seed": 0,
    }
    gen = torch.Generator().manual_seed(0)
    configs, slopes = [], {"single": [], "grpo": []}
    pooled = {k: [] for k in ("single_pred", "single_exact", "grpo_pred", "grpo_exact")}
    expectation, autograd_err, bonus = [], 0.0, []
    for V in VOCABS[size]:
        for scale in SCALES:
            z, token = _distributions(V, scale, _rows(V, quick), gen)
            curves = _error_curves(z, token)
            row = {"V": V, "scale": scale, "entropy_mean": float(theory.entropy(z).mean())}
            for kind in ("single", "grpo"):
                err = np.abs(curves[f"{kind}_exact"] - curves[f"{kind}_pred"])  # [steps, R]
                row[f"{kind}_median_error"] = np.median(err, axis=1).tolist()
                row[f"{kind}_slope"] = _median_slope(err)
                slopes[kind].append(row[f"{kind}_slope"])
            for key in pooled:
                pooled[key].append(curves[key])
            expectation_vmax = 100 if quick else 1000
            if expectation_vmax >= V:
                expectation.append(_on_policy_expectation(z[: 4 if quick else 8], STEPS))
            autograd_err = max(autograd_err, _autograd_identity(z[:4]))
            bonus.append(_entropy_bonus(z))
            configs.append(row)
    pooled = {k: np.concatenate(v, axis=1) for k, v in pooled.items()}  # [steps, all rows]
    result.metrics["configs"] = configs
    _claims(result, slopes, pooled, expectation, autograd_err, bonus)
    _figures(result, out_dir, configs, pooled, expectation)
    return result


def _claims(result, slopes, pooled, expectation, autograd_err, bonus) -> None:
    lo, hi = SLOPE_BAND
    for kind, name in (
        ("single", "Thm 3.2 (single logit, dH = -eps S_*)"),
        ("grpo", "Thm 3.3 (GRPO step, dH = -alpha (S_* - N))"),
    ):
        s = np.array(slopes[kind])
        result.check(
            f"{name}: error is O(step^2) (median log-log slope per config)",
            bool(np.all((s >= lo) & (s <= hi))),
            {"min": float(np.nanmin(s)), "max": float(np.nanmax(s))},
            list(SLOPE_BAND),
            f"every (V, scale) config's median slope inside the band; errors < {FLOOR:g} "
            "(fp64 roundoff) left out",
        )
        by_step = [
            _resolvable_sign_agreement(p, e)
            for p, e in zip(pooled[f"{kind}_pred"], pooled[f"{kind}_exact"], strict=True)
        ]
        result.metrics[f"{kind}_sign_agreement_by_step"] = [a for a, _ in by_step]
        agree, used = by_step[0]
        result.metrics[f"{kind}_sign_rows_resolvable"] = used
        result.check(
            f"{name}: sign of prediction = sign of exact change at step {STEPS[0]:g}",
            agree >= 0.99,
            agree,
            0.99,
            f"fraction of distributions with |predicted| >= {FLOOR:g} ({used:.0%} of all; "
            "smaller changes are below fp64 resolution)",
        )
    on = np.concatenate([e["on_policy"] / e["scale"] for e in expectation])
    off = np.concatenate([e["off_policy"] / e["scale"] for e in expectation])
    result.check(
        "Cor. 3.4: E_{k~p}[S_k - N] = 0 (relative to E_p|S_k| + |N|)",
        float(on.max()) < 1e-10,
        float(on.max()),
        1e-10,
        "max over distributions, fp64",
    )
    result.check(
        "Off-policy sampler q = softmax(z/1.5): E_{k~q}[S_k - N] is not 0",
        float(np.median(off)) > 1e-3,
        float(np.median(off)),
        1e-3,
        "median relative size; derived in PAPER.md, not quoted from the paper",
    )
    signed = np.mean([e["signed"] for e in expectation], axis=0)
    absolute = np.mean([e["absolute"] for e in expectation], axis=0)
    slope_signed, slope_abs = fit_loglog_slope(STEPS, signed), fit_loglog_slope(STEPS, absolute)
    result.metrics["on_policy_expected_dH_slope"] = slope_signed
    result.metrics["on_policy_mean_abs_dH_slope"] = slope_abs
    result.check(
        "Cor. 3.4: expected exact dH of an on-policy GRPO step is second order "
        "(slope of |E_k dH| vs alpha), while E_k|dH| is first order",
        lo <= slope_signed <= hi and 0.8 <= slope_abs <= 1.2,
        {"E dH": slope_signed, "E |dH|": slope_abs},
        {"E dH": [lo, hi], "E |dH|": [0.8, 1.2]},
    )
    result.check(
        "S_j = -dH/dz_j (autograd, fp64)",
        autograd_err < 1e-10,
        autograd_err,
        1e-10,
        "max |dH/dz + S| / max |S|",
    )
    exact_up = min(b[0] for b in bonus)
    result.check(
        "Entropy bonus step dz = -beta S raises entropy (exact, beta = 0.01)",
        exact_up == 1.0,
        exact_up,
        1.0,
        "fraction of distributions, worst config",
    )


def _figures(result, out_dir, configs, pooled, expectation) -> None:
    from matplotlib import colormaps

    from ..report.plotting import new_figure

    fig, axes = new_figure(1, 3, panel_width=4.8, panel_height=4.0)
    vocabs = sorted({c["V"] for c in configs})
    colors = dict(zip(vocabs, colormaps["viridis"](np.linspace(0, 0.9, len(vocabs))), strict=True))
    styles = dict(zip(SCALES, ["-", "--", "-.", ":"], strict=True))
    for ax, kind, title in (
        (axes[0, 0], "single", "Thm 3.2: single logit"),
        (axes[0, 1], "grpo", "Thm 3.3: GRPO step"),
    ):
        for c in configs:
            ax.loglog(
                STEPS,
                c[f"{kind}_median_error"],
                styles[c["scale"]],
                color=colors[c["V"]],
                label=f"V={c['V']}" if c["scale"] == SCALES[1] else None,
            )
        ref = np.array(configs[0][f"{kind}_median_error"])
        ax.loglog(STEPS, ref[-1] * (STEPS / STEPS[-1]) ** 2, "k", lw=3, alpha=0.25, label="slope 2")
        ax.set(title=title, xlabel="step (eps or alpha)", ylabel="median |exact - predicted| dH")
        ax.legend(fontsize=7, title="line style: scale 0.1/1/3/10", title_fontsize=6)
    ax = axes[0, 2]
    signed = np.mean([e["signed"] for e in expectation], axis=0)
    absolute = np.mean([e["absolute"] for e in expectation], axis=0)
    ax.loglog(STEPS, absolute, "o-", label="E_k |dH| (first order)")
    ax.loglog(STEPS, signed, "s-", label="|E_k dH| (Cor. 3.4: second order)")
    ax.set(title="On-policy GRPO step, k ~ p (V <= 1000)", xlabel="alpha", ylabel="entropy change")
    ax.legend(fontsize=7)
    save_figure(fig, result, out_dir, "theory_error_vs_step.png")

    fig, axes = new_figure(1, 2, panel_width=4.5, panel_height=4.2)
    mid = len(STEPS) // 2
    for ax, kind in ((axes[0, 0], "single"), (axes[0, 1], "grpo")):
        pred, exact = pooled[f"{kind}_pred"][mid], pooled[f"{kind}_exact"][mid]
        ax.scatter(pred, exact, s=6, alpha=0.5)
        lim = max(np.abs(pred).max(), np.abs(exact).max())
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
        ax.set_xscale("symlog", linthresh=1e-8)
        ax.set_yscale("symlog", linthresh=1e-8)
        ax.set_xticks([-1e-2, -1e-5, 0, 1e-5, 1e-2])
        ax.set_yticks([-1e-2, -1e-5, -1e-8, 0, 1e-8, 1e-5, 1e-2])
        ax.set(
            title=f"{'Thm 3.2' if kind == 'single' else 'Thm 3.3'}, step {STEPS[mid]:.2g}",
            xlabel="predicted dH",
            ylabel="exact dH",
        )
    save_figure(fig, result, out_dir, "theory_pred_vs_exact.png")
