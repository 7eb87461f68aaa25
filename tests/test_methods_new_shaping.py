"""Clip-low and entropy-based advantage shaping against float64 loops written from the papers'
rules (never by calling our code for the reference)."""

from __future__ import annotations

import pytest
import torch

from _batches import token_batch
from entropy_dynamics import methods
from entropy_dynamics.aggregation import aggregate
from entropy_dynamics.methods import build


def _batch(seed: int, B: int = 4, T: int = 7):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) > 0.2
    mask[:, 0] = True
    logprobs = -3 * torch.rand(B, T, generator=g, dtype=torch.float64)
    old = logprobs + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.5, -0.7, 0.0, -1.2], dtype=torch.float64)[:B, None].expand(B, T)
    entropy = 3 * torch.rand(B, T, generator=g, dtype=torch.float64)
    return mask, logprobs, old, adv.clone(), entropy


def _tokens(method, mask, logprobs, old, adv, entropy):
    batch = token_batch(mask, adv, logprobs, old_logprobs=old, entropy=entropy)
    plan = method.plan(batch)
    lp = logprobs.clone().requires_grad_(True)
    loss, _ = method.token_loss(logprobs=lp, old_logprobs=old, advantages=adv, plan=plan)
    total = aggregate(loss, plan.keep, "token-mean", num_tokens=plan.num_tokens)
    total.backward()
    return total, lp.grad


def _ppo_reference(mask, logprobs, old, adv, *, eps_low, eps_high, c=None):
    """Token-mean PPO clip (Schulman et al.), one token at a time; dual clip caps A < 0 at -c A."""
    total, n = 0.0, 0
    B, T = mask.shape
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            r = torch.exp((logprobs[b, t] - old[b, t]).clamp(-20, 20))
            a = adv[b, t]
            loss = torch.maximum(-a * r, -a * r.clamp(1 - eps_low, 1 + eps_high))
            if c is not None and a < 0:
                loss = torch.minimum(loss, -a * c)
            total, n = total + loss, n + 1
    return total / n


def test_clip_low_is_ppo_with_the_lower_bound_raised():
    mask, logprobs, old, adv, entropy = _batch(0)
    ours, grad = _tokens(build("clip_low"), mask, logprobs, old, adv, entropy)
    lp = logprobs.clone().requires_grad_(True)
    ref = _ppo_reference(mask, lp, old, adv, eps_low=0.1, eps_high=0.2)
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, lp.grad, rtol=1e-12, atol=1e-15)
    ratio = torch.exp(logprobs - old)
    low = mask & (adv < 0) & (ratio < 0.9)
    newly = low & (ratio >= 0.8)  # clipped by clip_low, not by symmetric 0.2
    assert newly.any() and (grad[low] == 0).all()
    assert (grad[mask & (adv < 0) & (ratio >= 0.9)] != 0).all()


def test_entropy_advantage_matches_the_papers_rule_with_dual_clip_ppo():
    method = build("ppo(dual_clip=3.0) + entropy_advantage")  # alpha 0.4, kappa 2
    for seed in range(3):
        mask, logprobs, old, adv, entropy = _batch(seed)
        ours, grad = _tokens(method, mask, logprobs, old, adv, entropy)
        shaped = adv.clone()
        for b, t in mask.nonzero().tolist():  # A + min(alpha H.detach(), |A| / kappa)
            shaped[b, t] = adv[b, t] + min(0.4 * float(entropy[b, t]), abs(float(adv[b, t])) / 2)
        lp = logprobs.clone().requires_grad_(True)
        ref = _ppo_reference(mask, lp, old, shaped, eps_low=0.2, eps_high=0.2, c=3.0)
        ref.backward()
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(grad, lp.grad, rtol=1e-12, atol=1e-15)
        # both sides of the min occur, and the term changed the loss
        capped = mask & (0.4 * entropy > adv.abs() / 2) & (adv != 0)
        assert capped.any() and (mask & (0.4 * entropy < adv.abs() / 2)).any()
    assert not torch.equal(ours, _tokens(build("ppo(dual_clip=3.0)"), mask, logprobs, old, adv,
                                         entropy)[0])  # fmt: skip


@pytest.mark.parametrize("surrogate", methods.names("surrogate"))
def test_every_surrogate_is_positively_homogeneous_in_the_advantage(surrogate):
    """The reweight is exact only if loss(w A) = w loss(A) for w > 0 with the same clip masks:
    checked for every registered surrogate at its defaults (a new one must pass too)."""
    part = methods.get_part(surrogate)()
    _, logprobs, old, adv, _ = _batch(4)
    weight = 0.5 + torch.rand(adv.shape, dtype=torch.float64)
    # a per-token surrogate (Archer) gets its plan split: here an arbitrary one
    extra = {"selected": torch.rand(adv.shape) > 0.5} if surrogate == "archer_ppo" else {}
    for lp in (logprobs, logprobs + 0.5, logprobs - 0.5):
        a = lp.clone().requires_grad_(True)
        b = lp.clone().requires_grad_(True)
        scaled, diag_scaled = part.loss(a, old, weight * adv, **extra)
        base, diag = part.loss(b, old, adv, **extra)
        torch.testing.assert_close(scaled, weight * base, rtol=1e-12, atol=1e-15)
        (scaled.sum()).backward()
        ((weight * base).sum()).backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-15)
        for key, value in diag.items():
            if value.dtype == torch.bool:
                assert torch.equal(value, diag_scaled[key]), key


def test_entropy_advantage_weight_bounds_and_refusals():
    mask, logprobs, old, adv, entropy = _batch(1)
    batch = token_batch(mask, adv, logprobs, old_logprobs=old, entropy=entropy)
    part = methods.get_part("entropy_advantage")(alpha=1.0, kappa=4.0)
    w = part.weight(batch)
    assert w.dtype == torch.float64
    assert (w[adv > 0] >= 1).all() and (w[adv > 0] <= 1.25 + 1e-12).all()
    assert (w[adv < 0] <= 1).all() and (w[adv < 0] >= 0.75 - 1e-12).all()
    assert (w[adv == 0] == 1).all()
    assert (methods.get_part("entropy_advantage")(alpha=0.0).weight(batch) == 1).all()
    with pytest.raises(ValueError, match="kappa"):
        build("entropy_advantage(kappa=1.0)")
    with pytest.raises(ValueError, match="alpha"):
        build("entropy_advantage(alpha=-0.1)")
