"""Clip_B / Clip_V against the authors' released rule (Trinity-RFT ``clipb`` / ``clipv``), on
advantages made from grouped rewards (A = 0 groups, groups of one), caps that bind and do not,
ties and padding. References: plain float64 loops (``tests/test_clip_masks.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entropy_dynamics import advantages as adv
from entropy_dynamics.methods import build, clip_b_mask, clip_v_mask
from test_clip_masks import ref_clip_b, ref_clip_v


def test_issue_minimal_case_4x4():
    """The issue's case: p = 0.5, H = 1, rewards [1, 0 | 1, 1] (G = 2), N = S except
    N[1,0] += 4 (A < 0) and N[2,0] += 5 (A = 0), mu = 1, max_frac = 0.07: the authors drop
    (1,0) and (2,0)."""
    S = torch.full((4, 4), 0.5 * (1.0 + math.log(0.5)), dtype=torch.float64)
    N = S.clone()
    N[1, 0] += 4.0
    N[2, 0] += 5.0
    A = adv.broadcast_to_tokens(
        adv.grpo_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64), 2),
        torch.ones(4, 4, dtype=torch.bool),
    )
    assert A[1, 0] < 0 and A[2, 0] == 0
    mask = torch.ones(4, 4, dtype=torch.bool)
    keep = clip_v_mask(S, N, A, mask, mu=1.0, max_frac=0.07)
    dropped = sorted(map(tuple, (~keep).nonzero().tolist()))
    assert dropped == [(1, 0), (2, 0)]
    assert np.array_equal(keep.numpy(), ref_clip_v(S, N, A, mask, mu=1.0, max_frac=0.07))


def _grouped_batch(seed, *, B=12, T=10, G=3, zero_groups=2, ties=True, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 2, size=B).astype(float)
    rewards[: zero_groups * G] = rng.integers(0, 2)  # all-equal groups: A = 0 on every token
    lengths = rng.integers(1, T + 1, size=B)
    mask = np.arange(T)[None, :] < lengths[:, None]  # right padding
    S = rng.normal(0.0, 0.3, size=(B, T))
    D = np.where(rng.uniform(size=(B, T)) < 0.15, rng.uniform(1, 4, size=(B, T)), 0.0)
    if ties:
        D[1, 0] = D[B - 1, 0] = D[B // 2, 0] = 3.0
    S[~mask] = np.nan  # padding is never read
    N = S + D
    A = adv.broadcast_to_tokens(
        adv.grpo_advantages(torch.tensor(rewards, dtype=dtype), G), torch.tensor(mask)
    )
    return torch.tensor(S, dtype=dtype), torch.tensor(N, dtype=dtype), A, torch.tensor(mask)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mu,max_frac", [(1.0, 0.01), (1.0, 0.3), (0.5, 1e-4), (2.0, 1.0)])
def test_clip_v_released_rule_on_grouped_advantages(seed, mu, max_frac):
    S, N, A, mask = _grouped_batch(seed)
    keep = clip_v_mask(S, N, A, mask, mu=mu, max_frac=max_frac)
    assert np.array_equal(keep.numpy(), ref_clip_v(S, N, A, mask, mu=mu, max_frac=max_frac))
    keep_b = clip_b_mask(S, A, mask, mu=mu)
    assert np.array_equal(keep_b.numpy(), ref_clip_b(S, A, mask, mu=mu))


def test_clip_v_cap_binds_and_not():
    """A cap that binds on A < 0 while A = 0 would-drops stay dropped, and one that does not."""
    S = torch.zeros(1, 20, dtype=torch.float64)
    N = torch.zeros(1, 20, dtype=torch.float64)
    N[0, [2, 5, 9, 13]] = torch.tensor([6.0, 7.0, 8.0, 9.0], dtype=torch.float64)
    A = -torch.ones(1, 20, dtype=torch.float64)
    A[0, 13] = 0.0  # the largest D has A = 0
    mask = torch.ones(1, 20, dtype=torch.bool)
    for max_frac, want in ((0.05, [9, 13]), (0.1, [5, 9, 13]), (0.2, [2, 5, 9, 13])):
        keep = clip_v_mask(S, N, A, mask, mu=1.0, max_frac=max_frac)
        assert (~keep).nonzero()[:, 1].tolist() == want, max_frac
        assert np.array_equal(keep.numpy(), ref_clip_v(S, N, A, mask, mu=1.0, max_frac=max_frac))
    metrics = build("pg + clip_v(mu=1.0, max_frac=0.05)").filters[0]
    assert metrics.max_frac == 0.05


def test_group_of_one_gives_zero_advantage_and_is_kept_by_clip_b():
    S = torch.tensor([[0.0, 0.0, -5.0]], dtype=torch.float64).repeat(3, 1)
    A = adv.broadcast_to_tokens(
        adv.grpo_advantages(torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), 1),
        torch.ones(3, 3, dtype=torch.bool),
    )
    assert (A == 0).all()
    mask = torch.ones(3, 3, dtype=torch.bool)
    assert clip_b_mask(S, A, mask, mu=0.5).all()  # A >= 0: the released Clip_B keeps it
    keep = clip_v_mask(S, torch.zeros_like(S), A, mask, mu=0.5, max_frac=0.01)
    assert np.array_equal(
        keep.numpy(), ref_clip_v(S, torch.zeros_like(S), A, mask, mu=0.5, max_frac=0.01)
    )
    assert not keep[:, 2].any()  # D = 5 > mu s: A = 0 tokens drop, the cap (A < 0 only) aside


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_statistics_are_refused(bad):
    S = torch.zeros(2, 3)
    S[1, 1] = bad
    mask = torch.ones(2, 3, dtype=torch.bool)
    A = -torch.ones(2, 3)
    with pytest.raises(ValueError, match="clip_b: the discriminator S holds NaN or inf"):
        clip_b_mask(S, A, mask)
    with pytest.raises(ValueError, match="clip_v: S - N holds NaN or inf"):
        clip_v_mask(S, torch.zeros(2, 3), A, mask)
    with pytest.raises(ValueError, match="clip_v: S - N holds NaN or inf"):
        clip_v_mask(torch.zeros(2, 3), S, A, mask, variant="paper")
    mask[1, 1] = False  # at padding it is never read
    assert clip_b_mask(S, A, mask).sum() == 5
    assert clip_v_mask(S, torch.zeros(2, 3), A, mask).sum() == 5


def test_arguments_a_variant_ignores_are_refused():
    S, N, A, mask = _grouped_batch(0)
    with pytest.raises(ValueError, match=r"max_frac=0\.5 belongs to variant=.released."):
        clip_v_mask(S, N, A, mask, variant="paper", max_frac=0.5)
    with pytest.raises(ValueError, match=r"max_frac=0\.5 belongs to variant=.released."):
        build("clip_v(variant='paper', max_frac=0.5)")
    with pytest.raises(ValueError, match="both mu_low and mu_high are given, so drop mu"):
        clip_b_mask(S, A, mask, variant="paper", mu=2.0, mu_low=1.0, mu_high=3.0)
    with pytest.raises(ValueError, match="mu_low / mu_high belong to variant='paper'"):
        build("clip_b(mu_low=1.0)")
    # Every accepted argument changes the result somewhere.
    one = clip_b_mask(S, A, mask, variant="paper", mu=0.5)
    assert not torch.equal(one, clip_b_mask(S, A, mask, variant="paper", mu=0.5, mu_low=3.0))
    assert build("clip_v(variant='paper')").spec.endswith(
        "clip_v(mu=8.5, variant='paper', denominator='kept')"
    )
