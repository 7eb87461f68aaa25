"""Archer against a float64 loop written from the authors' code (wizard-III/ArcherCodeR,
``dp_actor.py`` update_policy + ``core_algos.py`` compute_policy_loss), never by calling ours."""

from __future__ import annotations

import math

import pytest
import torch

from _batches import token_batch
from entropy_dynamics import diagnostics as dg
from entropy_dynamics import lens
from entropy_dynamics.aggregation import aggregate
from entropy_dynamics.methods import build
from entropy_dynamics.methods.archer import response_entropy_split


def _batch(seed: int, B: int = 4, T: int = 9):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) > 0.2
    mask[:, :3] = True
    logprobs = -3 * torch.rand(B, T, generator=g, dtype=torch.float64)
    old = logprobs + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = logprobs + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.5, -0.7, 0.4, -1.2], dtype=torch.float64)[:B, None].expand(B, T)
    entropy = 3 * torch.rand(B, T, generator=g, dtype=torch.float64)
    return mask, logprobs, old, ref, adv.clone(), entropy


def _reference(mask, logprobs, old, ref, adv, entropy, *, q=0.8, kl_coef=0.001, high_kl=0.0):
    """The anchor, token by token: per-row nanquantile split, per-token clip range, dual clip
    c = 10, token-mean PG, plus kl_coef * mean_low(low_var_kl) + high_kl * mean_high(...)."""
    masked = torch.where(mask, entropy, torch.nan)
    q_row = torch.nanquantile(masked, q=q, dim=-1, keepdim=True)
    pg, n, kl_low, n_low, kl_high, n_high = 0.0, 0, 0.0, 0, 0.0, 0
    for b, t in mask.nonzero().tolist():
        high = bool(entropy[b, t] > q_row[b, 0])
        lo, hi = (0.5, 0.5) if high else (0.2, 0.2)
        r = torch.exp((logprobs[b, t] - old[b, t]).clamp(-20, 20))
        a = adv[b, t]
        loss = torch.maximum(-a * r, -a * r.clamp(1 - lo, 1 + hi))
        if a < 0:
            loss = torch.minimum(loss, -a * 10.0)
        pg, n = pg + loss, n + 1
        kl = (ref[b, t] - logprobs[b, t]).clamp(-20, 20)  # verl low_var_kl
        kld = (torch.exp(kl) - kl - 1).clamp(-10, 10)
        if high:
            kl_high, n_high = kl_high + kld, n_high + 1
        else:
            kl_low, n_low = kl_low + kld, n_low + 1
    return pg / n + kl_coef * kl_low / max(n_low, 1) + high_kl * kl_high / max(n_high, 1)


@pytest.mark.parametrize(("spec", "high_kl"), [("archer", 0.0), ("archer(high_coef=0.01)", 0.01)])
def test_archer_matches_the_authors_loss(spec, high_kl):
    method = build(spec)
    seen_high = seen_low = False
    for seed in range(3):
        mask, logprobs, old, ref, adv, entropy = _batch(seed)
        batch = token_batch(mask, adv, logprobs, old_logprobs=old, entropy=entropy,
                            ref_logprobs=ref)  # fmt: skip
        plan = method.plan(batch)
        lp = logprobs.clone().requires_grad_(True)
        loss, sums = method.token_loss(logprobs=lp, old_logprobs=old, advantages=adv, plan=plan,
                                       ref_logprobs=ref)  # fmt: skip
        ours = aggregate(loss, plan.keep, "token-mean", num_tokens=plan.num_tokens)
        ours.backward()
        lp_ref = logprobs.clone().requires_grad_(True)
        expected = _reference(mask, lp_ref, old, ref, adv, entropy, high_kl=high_kl)
        expected.backward()
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(lp.grad, lp_ref.grad, rtol=1e-12, atol=1e-15)
        # the two clip ranges both matter on this batch: a token with 0.5 < r < 0.8 or
        # 1.2 < r < 1.5 is clipped iff low-entropy
        r = torch.exp(logprobs - old)
        between = mask & (((r > 0.5) & (r < 0.8)) | ((r > 1.2) & (r < 1.5)))
        high = plan.selected["archer_ppo"]
        seen_high |= bool((between & high).any())
        seen_low |= bool((between & ~high).any())
        n_high = int(plan.metrics[dg.ARCHER_NUM_HIGH])
        assert n_high == int(high.sum()) and n_high + int(plan.metrics[dg.ARCHER_NUM_LOW]) == int(
            mask.sum()
        )
        assert dg.ARCHER_KL in sums
    assert seen_high and seen_low


def test_split_is_the_per_response_linear_quantile():
    entropy = torch.tensor([[0.0, 1, 2, 3, 4], [5.0, 5, 5, 5, 5], [3.0, 1, 0, 0, 0]])
    mask = torch.tensor([[True] * 5, [True] * 5, [True, True, False, False, False]])
    high = response_entropy_split(entropy, mask, quantile=0.8)  # Q = 3.2, 5, 1 + 0.8 * 2 = 2.6
    assert high.tolist() == [[False, False, False, False, True], [False] * 5,
                             [True, False, False, False, False]]  # fmt: skip
    assert not response_entropy_split(entropy, torch.zeros_like(mask)).any()
    g = torch.Generator().manual_seed(0)
    h = torch.rand(6, 40, generator=g, dtype=torch.float64)
    m = torch.rand(6, 40, generator=g) > 0.3
    q = torch.nanquantile(torch.where(m, h, math.nan), 0.8, dim=-1, keepdim=True)
    assert torch.equal(response_entropy_split(h, m), m & (h > q))


def test_archer_needs_its_split_and_the_reference():
    mask, logprobs, old, ref, adv, entropy = _batch(0)
    batch = token_batch(mask, adv, logprobs, old_logprobs=old, entropy=entropy)
    with pytest.raises(ValueError, match="selected"):
        build("archer").surrogate.loss(logprobs, old, adv)
    plan = build("archer").plan(batch)
    with pytest.raises(ValueError, match="ref_logprobs"):
        build("archer").token_loss(logprobs=logprobs, old_logprobs=old, advantages=adv, plan=plan)
    bare = build("ppo + archer_kl")
    with pytest.raises(ValueError, match="'archer_ppo' surrogate"):
        bare.token_loss(logprobs=logprobs, old_logprobs=old, advantages=adv,
                        plan=bare.plan(batch), ref_logprobs=ref)  # fmt: skip
    with pytest.raises(ValueError, match="quantile"):
        build("archer(quantile=1.5)")
    # the lens reads the preset without failing (clipped there uses the narrow range)
    assert (
        "archer"
        in lens.entropy_lens(
            batch.__class__(**{**batch.__dict__, "baseline": torch.zeros_like(entropy)}),
            lr=1e-3,
            methods=["archer"],
        ).format_table()
    )
