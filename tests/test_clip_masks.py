"""Clip_B / Clip_V keep masks against an independent float64 reference written from PAPER.md sec. 3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_dynamics.methods import clip_b_mask, clip_v_mask

# ---------------------------------------------------------------------------------------------
# Independent reference: plain Python loops over the valid tokens, float64, from PAPER.md sec. 3.


def ref_clip_b(S, A, mask, *, mu=2.5, variant="released", mu_low=None, mu_high=None):
    S, A, mask = np.asarray(S, np.float64), np.asarray(A, np.float64), np.asarray(mask, bool)
    values = [S[i, j] for i in range(S.shape[0]) for j in range(S.shape[1]) if mask[i, j]]
    n = len(values)
    keep = np.zeros_like(mask)
    if n == 0:
        return keep
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / n)  # population std (denominator n)
    for i in range(S.shape[0]):
        for j in range(S.shape[1]):
            if not mask[i, j]:
                continue
            d = S[i, j] - m
            if s < 1e-12:
                keep[i, j] = True
            elif variant == "released":
                keep[i, j] = A[i, j] >= 0 or d >= -mu * s
            else:
                lo = mu if mu_low is None else mu_low
                hi = mu if mu_high is None else mu_high
                keep[i, j] = -lo * s <= d <= hi * s
    return keep


def ref_clip_v(S, N, A, mask, *, mu=8.5, max_frac=1e-4, variant="released"):
    """The authors' released rule (Trinity-RFT ``clipv``), as a loop over the valid tokens.

    Steps as the anchor takes them: keep A > 0; every other token would drop iff D > mu s_D. If
    the share of would-drop tokens is at most max_frac, all of them drop. Otherwise only the
    A < 0 ones are capped: if more than K = max(int(max_frac n), 1) of them would drop, only the
    K with the largest D drop and the other A < 0 ones are kept; would-drop A = 0 tokens drop
    whatever happens. Ties (equal D): earlier row-major position first (ours; the anchor's
    torch.topk leaves the order unspecified).
    """
    S, N, A = (np.asarray(x, np.float64) for x in (S, N, A))
    mask = np.asarray(mask, bool)
    rows, cols = S.shape
    positions = [(i, j) for i in range(rows) for j in range(cols) if mask[i, j]]
    n = len(positions)
    keep = mask.copy()
    if n == 0:
        return keep
    D = {p: N[p] - S[p] for p in positions}  # D_t = N_t - S_t, no mean subtracted
    mean_d = sum(D.values()) / n
    s_d = math.sqrt(sum((d - mean_d) ** 2 for d in D.values()) / n)
    if s_d < 1e-12:
        return keep
    if variant == "paper":
        for p in positions:
            keep[p] = abs(D[p]) <= mu * s_d
        return keep
    would_drop = [p for p in positions if A[p] <= 0 and D[p] > mu * s_d]
    for p in would_drop:
        keep[p] = False
    if len(would_drop) / n <= max_frac:
        return keep
    k = max(int(max_frac * n), 1)
    negative = [p for p in would_drop if A[p] < 0]
    if len(negative) <= k:
        return keep
    for p in negative:  # every A < 0 candidate back in, then the K largest D out again
        keep[p] = True
    for p in sorted(negative, key=lambda p: -D[p])[:k]:
        keep[p] = False
    return keep


def _t(x, dtype=torch.float64):
    return torch.tensor(np.asarray(x), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Hand-computed cases


def test_clip_b_hand_computed():
    # S = [1, 1, 1, 1, 0]: m = 0.8, s = sqrt((4 * 0.04 + 0.64) / 5) = sqrt(0.16) = 0.4.
    # d = [0.2, 0.2, 0.2, 0.2, -0.8]. mu = 1.5: -mu s = -0.6, so only d = -0.8 fails.
    S = _t([[1.0, 1.0, 1.0, 1.0, 0.0]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    negative = -torch.ones(1, 5, dtype=torch.float64)
    keep = clip_b_mask(S, negative, mask, mu=1.5)
    assert keep.tolist() == [[True, True, True, True, False]]
    # A >= 0 is always kept by the released variant (A = 0 included).
    assert clip_b_mask(S, torch.zeros(1, 5), mask, mu=1.5).all()
    # mu = 2.5: -mu s = -1.0 < -0.8: nothing dropped.
    assert clip_b_mask(S, negative, mask, mu=2.5).all()
    # Paper form, mu_high = 0.4: the upper bound 0.16 drops the four d = 0.2 tokens; the lower
    # bound -mu_low s = -0.6 drops the last one; both whatever the advantage sign.
    keep = clip_b_mask(S, -negative, mask, variant="paper", mu_low=1.5, mu_high=0.4)
    assert not keep.any()


def test_clip_v_hand_computed_and_cap():
    # D = N - S = [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]: mean 1, s_D = sqrt((9 * 1 + 81) / 10) = 3.
    # mu = 2: threshold 6; the token with D = 10 > 6 is dropped when A <= 0, kept when A > 0.
    S = torch.zeros(1, 10, dtype=torch.float64)
    N = _t([[0.0] * 9 + [10.0]])
    mask = torch.ones(1, 10, dtype=torch.bool)
    A = -torch.ones(1, 10, dtype=torch.float64)
    keep = clip_v_mask(S, N, A, mask, mu=2.0, max_frac=0.5)
    assert keep.tolist() == [[True] * 9 + [False]]
    assert clip_v_mask(S, N, -A, mask, mu=2.0, max_frac=0.5).all()  # A > 0 kept
    assert not clip_v_mask(S, N, 0 * A, mask, mu=2.0, max_frac=0.5)[0, 9]  # A = 0 tested
    # max_frac = 0.05: 1 drop > 0.05 * 10 = 0.5, so the cap binds: K = max(floor(0.5), 1) = 1,
    # the same single token.
    assert clip_v_mask(S, N, A, mask, mu=2.0, max_frac=0.05)[0, 9].item() is False
    # Two outliers D = 10, 9 among 20 (s_D = sqrt(...)), mu = 1, max_frac = 0.05: 2 > 1, cap
    # K = floor(0.05 * 20) = 1 keeps the D = 9 token and drops only D = 10.
    N2 = torch.zeros(1, 20, dtype=torch.float64)
    N2[0, 3], N2[0, 7] = 9.0, 10.0
    keep = clip_v_mask(
        torch.zeros_like(N2),
        N2,
        -torch.ones_like(N2),
        torch.ones_like(N2, dtype=torch.bool),
        mu=1.0,
        max_frac=0.05,
    )
    assert (~keep).nonzero().tolist() == [[0, 7]]


def test_flat_batch_keeps_everything():
    S = torch.full((2, 3), 0.25)
    A = -torch.ones(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert clip_b_mask(S, A, mask, mu=1e-3).all()
    assert clip_v_mask(S, S, A, mask, mu=1e-3).all()


def test_all_masked_keeps_nothing_and_drops_nothing():
    S = torch.randn(2, 3)
    A = -torch.ones(2, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    assert not clip_b_mask(S, A, mask).any()
    assert not clip_v_mask(S, S + 1, A, mask).any()


# ---------------------------------------------------------------------------------------------
# Against the reference on random batches (heavy tails so outliers exist)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_against_reference_random(seed, dtype):
    rng = np.random.default_rng(seed)
    B, T = 6, 40
    S = rng.standard_t(2, size=(B, T)) * 0.1
    N = S + rng.standard_t(1.5, size=(B, T)) * 0.01
    A = rng.choice([-1.0, 0.0, 1.0], size=(B, T)) * rng.uniform(0.5, 1.5, size=(B, 1))
    mask = rng.uniform(size=(B, T)) < 0.8
    S[~mask] = np.nan  # padding must never be read
    # The reference sees values rounded to the tested dtype, so both judge the same numbers.
    S_r, N_r = _t(S, dtype).double().numpy(), _t(N, dtype).double().numpy()
    for mu in (0.5, 1.0, 2.5):
        got = clip_b_mask(_t(S, dtype), _t(A, dtype), torch.tensor(mask), mu=mu)
        assert np.array_equal(got.numpy(), ref_clip_b(S_r, A, mask, mu=mu))
        got = clip_b_mask(
            _t(S, dtype), _t(A, dtype), torch.tensor(mask), mu=mu, variant="paper", mu_high=mu * 2
        )
        want = ref_clip_b(S_r, A, mask, mu=mu, variant="paper", mu_high=mu * 2)
        assert np.array_equal(got.numpy(), want)
    for mu, max_frac in ((1.0, 1e-4), (2.0, 0.01), (3.0, 0.2), (0.5, 1.0)):
        got = clip_v_mask(
            _t(S, dtype), _t(N, dtype), _t(A, dtype), torch.tensor(mask), mu=mu, max_frac=max_frac
        )
        assert np.array_equal(got.numpy(), ref_clip_v(S_r, N_r, A, mask, mu=mu, max_frac=max_frac))
        got = clip_v_mask(
            _t(S, dtype), _t(N, dtype), _t(A, dtype), torch.tensor(mask), mu=mu, variant="paper"
        )
        assert np.array_equal(got.numpy(), ref_clip_v(S_r, N_r, A, mask, mu=mu, variant="paper"))


# ---------------------------------------------------------------------------------------------
# Properties


@st.composite
def batches(draw):
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 12))
    floats = st.floats(-1.0, 1.0, allow_nan=False, width=32)
    S = np.array(draw(st.lists(floats, min_size=B * T, max_size=B * T))).reshape(B, T)
    D = np.array(draw(st.lists(floats, min_size=B * T, max_size=B * T))).reshape(B, T)
    A = np.array(
        draw(st.lists(st.sampled_from([-1.0, 0.0, 0.5]), min_size=B * T, max_size=B * T))
    ).reshape(B, T)
    mask = np.array(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).reshape(B, T)
    return _t(S), _t(S + D), _t(A), torch.tensor(mask)


@settings(max_examples=60, deadline=None)
@given(batches(), st.floats(0.05, 4.0), st.floats(1e-3, 1.0))
def test_released_never_drops_positive_and_cap_holds(batch, mu, max_frac):
    S, N, A, mask = batch
    for keep in (
        clip_b_mask(S, A, mask, mu=mu),
        clip_v_mask(S, N, A, mask, mu=mu, max_frac=max_frac),
    ):
        assert not (keep & ~mask).any()
        assert keep[mask & (A > 0)].all()
    keep = clip_v_mask(S, N, A, mask, mu=mu, max_frac=max_frac)
    uncapped = clip_v_mask(S, N, A, mask, mu=mu, max_frac=1.0)  # 1.0: the cap never binds
    n = int(mask.sum())
    would_drop = int((mask & ~uncapped).sum())
    dropped = int((mask & ~keep).sum())
    k = max(math.floor(max_frac * n), 1)
    would_drop_neg = int((mask & ~uncapped & (A < 0)).sum())
    assert not (~keep & uncapped & mask).any()  # only would-be-dropped tokens ever drop
    # would-be-dropped A = 0 tokens drop whatever the cap
    assert not keep[mask & ~uncapped & (A == 0)].any()
    if would_drop > max_frac * n and would_drop_neg > k:  # the cap binds on the A < 0 ones
        assert int((mask & ~keep & (A < 0)).sum()) == k
        assert dropped == k + (would_drop - would_drop_neg)
    else:
        assert torch.equal(keep, uncapped)


@settings(max_examples=40, deadline=None)
@given(batches(), st.integers(1, 3), st.integers(0, 2))
def test_masks_ignore_padding(batch, extra_cols, extra_rows):
    """Padding (extra masked columns and rows, holding garbage) does not change any mask."""
    S, N, A, mask = batch
    B, T = mask.shape

    def pad(x, fill):
        out = torch.full((B + extra_rows, T + extra_cols), fill, dtype=x.dtype)
        out[:B, :T] = x
        return out

    S2, N2, A2, mask2 = pad(S, 1e6), pad(N, -1e6), pad(A, -1.0), pad(mask, False)
    assert torch.equal(clip_b_mask(S2, A2, mask2, mu=1.0)[:B, :T], clip_b_mask(S, A, mask, mu=1.0))
    assert torch.equal(
        clip_v_mask(S2, N2, A2, mask2, mu=1.0, max_frac=0.1)[:B, :T],
        clip_v_mask(S, N, A, mask, mu=1.0, max_frac=0.1),
    )


def test_masks_follow_row_order_and_need_the_whole_batch():
    """Row order does not matter; a micro-batch alone would see other statistics (so the plan
    decides masks on the whole batch, tests/test_methods_plan.py checks micro-batch invariance)."""
    torch.manual_seed(0)
    S = torch.randn(8, 16) ** 3
    A = -torch.ones(8, 16)
    mask = torch.ones(8, 16, dtype=torch.bool)
    whole = clip_b_mask(S, A, mask, mu=1.0)
    halves = torch.cat(
        [clip_b_mask(S[:4], A[:4], mask[:4], mu=1.0), clip_b_mask(S[4:], A[4:], mask[4:], mu=1.0)]
    )
    # Row permutation of the batch permutes the mask (order-free statistics).
    perm = torch.randperm(8)
    assert torch.equal(clip_b_mask(S[perm], A[perm], mask[perm], mu=1.0), whole[perm])
    assert not torch.equal(whole, halves)  # why micro-batches must not decide masks alone


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mu": 0.0}, "mu must lie in"),
        ({"mu": -1.0}, "mu must lie in"),
        ({"mu": float("nan")}, "mu must be a finite number"),
        ({"variant": "both"}, "variant must be one of"),
        ({"mu_low": 1.0}, "belong to variant='paper'"),
        ({"variant": "paper", "mu_high": 0.0}, "mu_high must lie in"),
    ],
)
def test_clip_b_bad_arguments(kwargs, match):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=match):
        clip_b_mask(x, x, x.bool(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mu": 0.0}, "mu must lie in"),
        ({"max_frac": 0.0}, "max_frac must lie in"),
        ({"max_frac": 1.5}, "max_frac must lie in"),
        ({"variant": "x"}, "variant must be one of"),
    ],
)
def test_clip_v_bad_arguments(kwargs, match):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=match):
        clip_v_mask(x, x, x, x.bool(), **kwargs)


def test_mismatched_shapes_and_mask_dtype():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="share one shape"):
        clip_b_mask(x, torch.zeros(2, 4), x.bool())
    with pytest.raises(ValueError, match="share one shape"):
        clip_v_mask(x, x, x, torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a bool"):
        clip_b_mask(x, x, x)
