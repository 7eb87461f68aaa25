"""Token filters from the literature: Clip-Cov (Cui et al. 2025) and top-entropy tokens (80/20)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .. import diagnostics as dg
from ..distributed import global_position_select, global_sum, masked_mean_std, masked_quantile
from ._checks import check_denominator, check_number, check_same_shape
from .base import KEPT, Filter, PlanContext
from .registry import register

__all__ = [
    "ClipCov",
    "SignCondition",
    "TopEntropy",
    "centred_covariance",
    "clip_cov_mask",
    "sign_condition_mask",
    "top_entropy_mask",
]


def centred_covariance(advantages: Tensor, logprobs: Tensor, mask: Tensor, *, group=None):
    """Per-token ``cov_t = (A_t - mean A)(log p_t - mean log p)``, means batch-global.

    ``advantages, logprobs, mask``: ``[B, T]``. Returns (``cov`` ``[B, T]``, fp32 or fp64, 0 at
    padding; the global number of valid tokens, a 0-dim int64 tensor). Cui et al. 2025,
    "The Entropy Mechanism of RL for Reasoning LMs" (Clip-Cov / KL-Cov).
    """
    check_same_shape("covariance", advantages=advantages, logprobs=logprobs, mask=mask)
    adv_mean, _, n_valid = masked_mean_std(advantages, mask, group=group)
    logp_mean, _, _ = masked_mean_std(logprobs, mask, group=group)
    dtype = adv_mean.dtype
    cov = (advantages.detach().to(dtype) - adv_mean) * (logprobs.detach().to(dtype) - logp_mean)
    return torch.where(mask, cov, 0.0), n_valid


def clip_cov_mask(
    advantages: Tensor,
    logprobs: Tensor,
    mask: Tensor,
    clipped: Tensor,
    *,
    ratio: float = 2e-4,
    lb: float = 1.0,
    ub: float = 5.0,
    generator: torch.Generator | None = None,
    group=None,
) -> Tensor:
    """Clip-Cov KEEP mask, bool ``[B, T]`` (PAPER.md sec. 5; Cui et al. 2025).

    ``advantages, logprobs, mask, clipped``: ``[B, T]``; ``clipped`` marks tokens the PPO clip
    already cuts. Candidates: valid, not clipped, ``lb < cov_t < ub`` (``centred_covariance``).
    ``max(int(ratio n_valid), 1)`` candidates (or all, if fewer) drawn uniformly at random are
    dropped. The draw is ``torch.randperm`` over the global candidate count with ``generator``
    (CPU); give every rank a generator seeded alike and the masks agree on all ranks.
    Differs from the reference code (verl's ``clip_cov`` loss), which computes the means, the
    count ``n`` and the draw per micro-batch: here they are batch-global (whole batch, all ranks).
    """
    check_same_shape(
        "clip_cov", advantages=advantages, logprobs=logprobs, mask=mask, clipped=clipped
    )
    cov, n_valid = centred_covariance(advantages, logprobs, mask, group=group)
    candidates = mask & ~clipped & (cov > lb) & (cov < ub)
    n_candidates = int(global_sum(candidates.sum()))  # host sync; identical on every rank
    n_drop = min(max(int(ratio * int(n_valid)), 1), n_candidates)
    chosen = torch.randperm(n_candidates, generator=generator)[:n_drop]
    dropped = global_position_select(candidates, chosen.to(mask.device), group=group)
    return mask & ~dropped


def top_entropy_mask(entropy: Tensor, mask: Tensor, *, rho: float = 0.2, group=None) -> Tensor:
    """Keep only the high-entropy tokens (Wang et al. 2025, arXiv 2506.01939, "80/20").

    ``entropy, mask``: ``[B, T]``. Keep iff ``H_t >= Q(1 - rho)``, the batch-global linear
    ``(1 - rho)``-quantile of H over valid tokens (ties at the threshold are kept, so slightly
    more than ``rho`` may survive). Returns bool ``[B, T]``.
    """
    check_same_shape("top_entropy", entropy=entropy, mask=mask)
    rho = check_number("top_entropy", "rho", rho, low=0.0, high=1.0, low_open=True)
    threshold = masked_quantile(entropy, mask, 1.0 - rho, group=group)
    return mask & (entropy.detach().to(threshold.dtype) >= threshold)


@register
@dataclass(frozen=True, kw_only=True)
class ClipCov(Filter):
    """``clip_cov``: drop a random few high-covariance tokens (``clip_cov_mask``).

    State: ``{"generator": uint8 tensor}``, a CPU generator's state, seeded by ``seed``; each
    plan draws from it and returns the advanced state, so ranks that build the same spec draw
    the same tokens and a resumed run draws what the uninterrupted run would have.
    ``denominator='valid'`` (the preset, as verl's ``clip_cov`` loss) zeroes a dropped token's
    policy-gradient term and keeps it counted.
    """

    name: ClassVar[str] = "clip_cov"
    needs_clipped: ClassVar[bool] = True  # the tokens the surrogate clips are not candidates
    ratio: float = 2e-4
    lb: float = 1.0
    ub: float = 5.0
    seed: int = 0
    denominator: str = KEPT

    def __post_init__(self) -> None:
        check_denominator(self.name, self.denominator)
        check_number("clip_cov", "ratio", self.ratio, low=0.0, high=1.0, low_open=True)
        check_number("clip_cov", "lb", self.lb)
        check_number("clip_cov", "ub", self.ub, low=self.lb, low_open=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"clip_cov: seed must be an int, got {self.seed!r}")

    def init_state(self) -> dict[str, Tensor]:
        return {"generator": torch.Generator().manual_seed(self.seed).get_state()}

    def keep(self, ctx: PlanContext):
        batch, clipped, group, state = ctx.batch, ctx.clipped, ctx.group, ctx.state
        if state is None:
            raise ValueError(
                "clip_cov is stateful: pass its state in PlanContext(state=...) (Method.plan does)"
            )
        generator = torch.Generator()
        generator.set_state(state["generator"])
        keep = clip_cov_mask(
            batch.advantages,
            batch.logprobs,
            batch.mask,
            clipped,
            ratio=self.ratio,
            lb=self.lb,
            ub=self.ub,
            generator=generator,
            group=group,
        )
        metrics = dg.drop_fractions(
            keep,
            batch.mask,
            batch.advantages,
            names=(
                dg.CLIP_COV_FRAC_DROPPED,
                dg.CLIP_COV_FRAC_DROPPED_POS,
                dg.CLIP_COV_FRAC_DROPPED_NEG,
            ),
            group=group,
        )
        return keep, metrics, {"generator": generator.get_state()}


@register
@dataclass(frozen=True, kw_only=True)
class TopEntropy(Filter):
    """``top_entropy``: policy gradient only on the top ``rho`` entropy tokens.

    ``denominator='kept'`` (the 80/20 authors' code) removes the other tokens from the loss;
    ``'valid'`` zeroes their policy-gradient term only, as TRL's ``top_entropy_quantile``.
    """

    name: ClassVar[str] = "top_entropy"
    rho: float = 0.2
    denominator: str = KEPT

    def __post_init__(self) -> None:
        check_number("top_entropy", "rho", self.rho, low=0.0, high=1.0, low_open=True)
        check_denominator(self.name, self.denominator)

    def keep(self, ctx: PlanContext):
        batch, group = ctx.batch, ctx.group
        keep = top_entropy_mask(batch.entropy, batch.mask, rho=self.rho, group=group)
        return keep, dg.drop_fractions(
            keep,
            batch.mask,
            batch.advantages,
            names=(
                dg.TOP_ENTROPY_FRAC_DROPPED,
                dg.TOP_ENTROPY_FRAC_DROPPED_POS,
                dg.TOP_ENTROPY_FRAC_DROPPED_NEG,
            ),
            group=group,
        )


def sign_condition_mask(
    discriminator: Tensor, advantages: Tensor, mask: Tensor, *, sample: int = 1, side: int = 1
) -> Tensor:
    """Four-condition masking (PAPER.md sec. 6, validation 1): keep ``sign(A) == sample`` and
    ``sign(S_*) == side``; bool ``[B, T]``.

    ``discriminator`` S_*, ``advantages``, ``mask``: ``[B, T]``; ``sample``, ``side`` in {1, -1}.
    Thm 3.2 (``dH = -eps S_*``, eps of A's sign) predicts ``sign(dH) = -sample * side`` when
    only the kept tokens are trained. Tokens with ``A = 0`` or ``S_* = 0`` are dropped.
    Example: A = [1, 1, -1], S = [0.2, -0.1, 0.3], sample=1, side=1 keeps only token 0.
    """
    check_same_shape(
        "sign_condition", discriminator=discriminator, advantages=advantages, mask=mask
    )
    for arg, value in (("sample", sample), ("side", side)):
        if value not in (1, -1):
            raise ValueError(f"sign_condition: {arg} must be 1 or -1, got {value!r}")
    return mask & (advantages.sign() == sample) & (discriminator.sign() == side)


@register
@dataclass(frozen=True, kw_only=True)
class SignCondition(Filter):
    """``sign_condition``: train only one of the paper's four (A sign x S_* sign) conditions."""

    name: ClassVar[str] = "sign_condition"
    sample: int = 1
    side: int = 1

    def __post_init__(self) -> None:  # validate now, not at the first batch
        for arg in ("sample", "side"):
            if getattr(self, arg) not in (1, -1):
                raise ValueError(
                    f"sign_condition: {arg} must be 1 or -1, got {getattr(self, arg)!r}"
                )

    def keep(self, ctx: PlanContext):
        batch, group = ctx.batch, ctx.group
        keep = sign_condition_mask(
            batch.discriminator, batch.advantages, batch.mask, sample=self.sample, side=self.side
        )
        metrics = dg.drop_fractions(
            keep,
            batch.mask,
            batch.advantages,
            names=(
                dg.SIGN_CONDITION_FRAC_DROPPED,
                dg.SIGN_CONDITION_FRAC_DROPPED_POS,
                dg.SIGN_CONDITION_FRAC_DROPPED_NEG,
            ),
            group=group,
        )
        return keep, metrics
