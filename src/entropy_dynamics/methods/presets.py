"""Named methods (presets): each spec, its paper and the defaults it uses."""

from __future__ import annotations

from .spec import register_preset

__all__ = ["PRESETS"]

# Each spec names only what differs from its parts' defaults (a default lives once, in the
# part's signature); ``methods.build(name).spec`` spells every value (docs/methods.md).
PRESETS = {
    "grpo": (
        "ppo(dual_clip=3.0)",
        "GRPO (Shao et al. 2024, arXiv 2402.03300) with the surrogate of the Clip_B / Clip_V "
        "authors' runs (Trinity-RFT's PPO loss on verl): PPO clip eps 0.2, dual clip c = 3, "
        "log-ratio clamped to +-20, no KL term. 'ppo' alone is PPO without the dual clip.",
    ),
    "clip_higher": (
        "ppo(eps_high=0.28)",
        "Clip-higher from DAPO (Yu et al. 2025, arXiv 2503.14476): eps_high 0.28; keeps more "
        "entropy-raising updates of unlikely tokens on positive samples (DAPO's verl recipe "
        "adds dual_clip=10.0).",
    ),
    "clip_b": (
        "ppo(dual_clip=3.0) + clip_b",
        "Clip_B (Wang et al. 2026, arXiv 2602.03392, sec. 3), the authors' method: their "
        "surrogate (as 'grpo') and the released mask, mu 2.5 (reported sweep 2.0-3.0); "
        "variant='paper' gives the two-sided band with mu_low / mu_high.",
    ),
    "clip_v": (
        "ppo(dual_clip=3.0) + clip_v",
        "Clip_V (Wang et al. 2026, arXiv 2602.03392, sec. 3), the authors' method: their "
        "surrogate (as 'grpo') and the released mask, mu 8.5 (the config default; the released "
        "constructor's 2.0 is a known defect not copied), max_frac 1e-4 (sweep mu 7.5-8.5).",
    ),
    "clip_cov": (
        "ppo(eps_low=1.0, eps_high=1.0) + clip_cov(denominator='valid')",
        "Clip-Cov (Cui et al. 2025, arXiv 2505.22617) as its code (verl's clip_cov loss): "
        "ratio 2e-4, lb 1, ub 5, PPO clip range 1, and a dropped token's loss zeroed but kept "
        "in the denominator.",
    ),
    "kl_cov": (
        "pg + kl_cov",
        "KL-Cov (Cui et al. 2025, arXiv 2505.22617), following the paper: no ratio clipping "
        "(plain pg), 0.2 % of tokens (ratio 0.002), coef 1. Another common default is "
        "ratio 2e-4, coef 0.1: 'kl_cov(ratio=2e-4, coef=0.1)'.",
    ),
    "entropy_bonus": (
        "ppo + entropy_bonus",
        "Entropy bonus loss -= coef * H (classic; e.g. verl's entropy_coeff), coef 0.001, "
        "on the default PPO clip. For the adaptive Skywork-OR1 form use the part "
        "'adaptive_entropy_bonus'.",
    ),
    "top_entropy": (
        "ppo + top_entropy",
        "High-entropy minority tokens (Wang et al. 2025, arXiv 2506.01939, '80/20'): policy "
        "gradient on the top 20 % entropy tokens of the batch (rho 0.2), default PPO clip "
        "(that paper trains with DAPO; add 'ppo(eps_high=0.28)' for its setting). TRL's "
        "top_entropy_quantile is 'top_entropy(denominator='valid')'.",
    ),
    "clip_low": (
        "ppo(eps_low=0.1)",
        "Clip-low (Park et al. 2025, arXiv 2509.26114): the lower clip bound raised to "
        "1 - 0.1 (clip-high left at 1 + 0.2), the 'more aggressive clip-low' the paper uses to "
        "raise entropy. The paper's direction is confirmed (clip-low raises entropy, clip-high "
        "lowers it); the value 0.1 is ours, not read from its experiments (docs/anchors.md).",
    ),
    "entropy_advantage": (
        "ppo + entropy_advantage",
        "Entropy-based advantage shaping (Cheng et al. 2025, arXiv 2506.14758): per token "
        "A + min(alpha H.detach(), |A| / kappa), alpha 0.4, kappa 2, on the default PPO clip "
        "(0.2); applied as the per-token weight A' / A of the surrogate (exact: kappa > 1 keeps "
        "the sign of A).",
    ),
    "archer": (
        "archer_ppo + archer_kl",
        "Archer (Wang et al. 2025, arXiv 2507.15778) as its code (wizard-III/ArcherCodeR run "
        "script): tokens above their response's 0.8 entropy quantile get clip 0.5 / 0.5 and no "
        "KL, the others clip 0.2 / 0.2 and k3 KL (low_var_kl) 0.001; dual clip c = 10.",
    ),
    "ce_gppo": (
        "ce_gppo(dual_clip=10.0)",
        "CE-GPPO (Su et al. 2025, arXiv 2509.20712): clipped tokens keep a bounded gradient, "
        "beta1 0.75 (A < 0 side), beta2 1.0 (A > 0 side), eps 0.2, and the anchor recipe's "
        "dual clip c = 10.",
    ),
    "w_reinforce": (
        "ppo + w_reinforce",
        "W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347) as the authors' code: advantages "
        "+lambda (0.1) for a correct and -1 for a wrong response, no group baseline "
        "(advantages.get('w_reinforce')), on verl's PPO clip (eps 0.2).",
    ),
    "entropic": (
        "ppo(dual_clip=3.0) + entropic",
        "EntroPIC (Yang et al. 2025, arXiv 2511.15248) as its code (yk7333/EntroPIC, loss_mode "
        "'entropic'): verl's PPO loss with dual clip c = 3 plus alpha * mean(-r |A|) over tokens "
        "with p > 0.95, alpha from a PI controller on (H - target): P 1, I 0.01, target 0.1 "
        "(the run script's), alpha clipped to [-1, 1].",
    ),
    "aent": (
        "ppo + aent",
        "AEnt (Shen 2025, arXiv 2509.03493) as its code (AReaL recipe AEnt): PPO clip 0.2 plus "
        "the clamped entropy bonus (lowest 30 % of logits cut) with the adaptive coefficient of "
        "the README config (start 2e-4, band [0.05, 0.23], step 1e-3, box [1e-5, 3e-3], "
        "warm-up 29 steps).",
    ),
    "aepo": (
        "ppo(dual_clip=3.0) + aepo",
        "AEPO (QwenLong-L1.5, Shen et al. 2025, arXiv 2512.12967, sec. 4.4): once the batch "
        "entropy (Eq. 11) rises above high, only A > 0 responses train, until it falls below "
        "low (hysteresis, state across steps); on verl's default PPO loss (clip 0.2, dual clip "
        "c = 3, as 'grpo'; the authors train on verl 0.4). The bounds low 0.1, high 0.3 are "
        "ours (the paper gives none): set them to your model's entropy range.",
    ),
    "qae": (
        "ppo(eps_high=0.28, dual_clip=10.0) + qae",
        "QAE (Wu et al. 2025, arXiv 2509.22611): GRPO's advantage with the group's K-quantile "
        "(K 0.4, torch.quantile as the authors' code) in place of the mean, on the DAPO clip "
        "their verl scripts run (eps_high 0.28, dual clip c = 10); DAPO's dynamic sampling and "
        "overlong shaping are not method parts and are left out.",
    ),
    "target_entropy": (
        "ppo(dual_clip=3.0) + target_entropy",
        "Ours (no anchor): Clip_B's released rule (as the 'clip_b' preset, same surrogate) with "
        "mu chosen each step from {0.5, ..., 3} so that the batch entropy tracks a target "
        "(0.5 by default; set target=), from the error H - target and the paper's first-order "
        "prediction -alpha (S - N) of each candidate's effect, dropping at most 5 % of tokens; "
        "base='clip_v' uses Clip_V's rule. See docs/methods.md for the rule and lr.",
    ),
}

for _name, (_spec, _doc) in PRESETS.items():
    register_preset(_name, _spec, _doc)
