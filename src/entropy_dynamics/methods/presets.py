"""Named methods (presets): each spec, its paper and the defaults it uses."""

from __future__ import annotations

from .registry import register_preset

__all__ = ["PRESETS"]

PRESETS = {
    "grpo": (
        "ppo(eps_low=0.2, eps_high=0.2)",
        "GRPO (Shao et al. 2024, arXiv 2402.03300) with the PPO clipped surrogate, "
        "eps_low = eps_high = 0.2, no KL term (as in the paper's runs, PAPER.md sec. 6).",
    ),
    "clip_higher": (
        "ppo(eps_low=0.2, eps_high=0.28)",
        "Clip-higher from DAPO (Yu et al. 2025, arXiv 2503.14476): eps_low 0.2, eps_high 0.28; "
        "keeps more entropy-raising updates of unlikely tokens on positive samples.",
    ),
    "clip_b": (
        "ppo + clip_b(mu=2.5, variant='released')",
        "Clip_B (Wang et al. 2026, arXiv 2602.03392, sec. 3) on the default PPO clip: the "
        "released form, mu 2.5 (reported sweep 2.0-3.0); variant='paper' gives the two-sided "
        "band with mu_low / mu_high.",
    ),
    "clip_v": (
        "ppo + clip_v(mu=8.5, max_frac=0.0001, variant='released')",
        "Clip_V (Wang et al. 2026, arXiv 2602.03392, sec. 3) on the default PPO clip: the "
        "released form, mu 8.5 (the config default; the released constructor's 2.0 is a "
        "known defect not copied), max_frac 1e-4 (reported sweep mu 7.5-8.5).",
    ),
    "clip_cov": (
        "ppo(eps_low=1.0, eps_high=1.0) + clip_cov(ratio=0.0002, lb=1.0, ub=5.0)",
        "Clip-Cov (Cui et al. 2025, arXiv 2505.22617): ratio 2e-4, lb 1, ub 5, and the "
        "paper's recipe's PPO clip range of 1 (eps_low = eps_high = 1).",
    ),
    "kl_cov": (
        "pg + kl_cov(ratio=0.002, coef=1.0)",
        "KL-Cov (Cui et al. 2025, arXiv 2505.22617), following the paper: no ratio clipping "
        "(plain pg), 0.2 % of tokens (ratio 0.002), coef 1. Another common default is "
        "ratio 2e-4, coef 0.1: 'kl_cov(ratio=2e-4, coef=0.1)'.",
    ),
    "entropy_bonus": (
        "ppo + entropy_bonus(coef=0.001)",
        "Entropy bonus loss -= coef * H (classic; e.g. verl's entropy_coeff), coef 0.001, "
        "on the default PPO clip. For the adaptive Skywork-OR1 form use the part "
        "'adaptive_entropy_bonus'.",
    ),
    "top_entropy": (
        "ppo + top_entropy(rho=0.2)",
        "High-entropy minority tokens (Wang et al. 2025, arXiv 2506.01939, '80/20'): policy "
        "gradient on the top 20 % entropy tokens of the batch (rho 0.2), default PPO clip "
        "(that paper trains with DAPO; add 'ppo(eps_high=0.28)' for its setting).",
    ),
    "ce_gppo": (
        "ce_gppo(eps_low=0.2, eps_high=0.2, beta1=0.75, beta2=1.0)",
        "CE-GPPO (Su et al. 2025, arXiv 2509.20712): clipped tokens keep a bounded gradient, "
        "beta1 0.75 (A < 0 side), beta2 1.0 (A > 0 side), eps 0.2.",
    ),
    "w_reinforce": (
        "pg + adv_weight(pos_weight=0.1, neg_weight=1.0)",
        "W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347): plain policy gradient with "
        "positive-advantage tokens scaled by lambda 0.1.",
    ),
}

for _name, (_spec, _doc) in PRESETS.items():
    register_preset(_name, _spec, _doc)
