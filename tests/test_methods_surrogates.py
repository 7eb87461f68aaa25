"""Surrogates pg / ppo / ce_gppo: hand-computed values and gradients, gradcheck in float64."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_dynamics.methods import build, ce_gppo_loss, pg_loss, ppo_loss

# Four tokens: (r, A) = (1.5, +1), (1.5, -1), (0.5, -1), (0.5, +1); eps = 0.2.
RATIOS = torch.tensor([[1.5, 1.5, 0.5, 0.5]], dtype=torch.float64)
ADV = torch.tensor([[1.0, -1.0, -1.0, 1.0]], dtype=torch.float64)


def _logps():
    old = torch.zeros_like(RATIOS)
    return RATIOS.log().clone().requires_grad_(True), old


def test_ppo_hand_computed():
    logp, old = _logps()
    loss, diag = ppo_loss(logp, old, ADV)
    # -min(rA, clip(r)A): -min(1.5, 1.2) = -1.2; -min(-1.5, -1.2) = 1.5;
    # -min(-0.5, -0.8) = 0.8 (clipped low); -min(0.5, 0.8) = -0.5.
    assert torch.allclose(loss, torch.tensor([[-1.2, 1.5, 0.8, -0.5]], dtype=torch.float64))
    assert diag["clipped_high"].tolist() == [[True, False, False, False]]
    assert diag["clipped_low"].tolist() == [[False, False, True, False]]
    loss.sum().backward()
    # d(-r A)/d logp = -r A where unclipped: [0, 1.5, 0, -0.5].
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 1.5, 0.0, -0.5]], dtype=torch.float64))


def test_clip_higher_and_dual_clip():
    logp, old = _logps()
    loss, _ = ppo_loss(logp, old, ADV, eps_high=0.6)  # 1.5 < 1.6: token 0 unclipped
    assert loss[0, 0].item() == pytest.approx(-1.5)
    # Dual clip c = 3 on A < 0: r = 4 gives max(4, 1.2) = 4, capped to 3.
    big = torch.tensor([[math.log(4.0), math.log(2.0)]], dtype=torch.float64)
    adv = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    loss, diag = ppo_loss(big, torch.zeros_like(big), adv, dual_clip=3.0)
    assert loss[0].tolist() == pytest.approx([3.0, 2.0])
    assert diag["dual_clipped"].tolist() == [[True, False]]


def test_ce_gppo_hand_computed():
    logp, old = _logps()
    loss, diag = ce_gppo_loss(logp, old, ADV, beta1=0.75, beta2=1.0)
    # Token 0 (A > 0, r > 1.2): -beta2 (1 + 0.2) * 1 * A = -1.2, gradient -1.2.
    # Token 2 (A < 0, r < 0.8): -beta1 (1 - 0.2) * 1 * A = 0.6, gradient 0.6.
    # Tokens 1, 3: -r A = 1.5 and -0.5, gradients 1.5 and -0.5 (as PPO).
    assert torch.allclose(loss, torch.tensor([[-1.2, 1.5, 0.6, -0.5]], dtype=torch.float64))
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.2, 1.5, 0.6, -0.5]], dtype=torch.float64))
    assert diag["clipped_low"].tolist() == [[False, False, True, False]]


def test_pg_is_reinforce_on_policy():
    logp = torch.tensor([[-0.5, -2.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    loss, _ = pg_loss(logp, logp.detach(), adv)
    loss.sum().backward()
    assert torch.allclose(logp.grad, -adv)  # -A d log p


def _random_point(seed=0):
    torch.manual_seed(seed)
    # Ratios spread over [0.3, 3] so every branch is hit; no point sits on a kink.
    old = torch.randn(3, 5, dtype=torch.float64)
    logp = (old + torch.empty(3, 5, dtype=torch.float64).uniform_(-1.2, 1.1)).requires_grad_()
    return logp, old, torch.randn(3, 5, dtype=torch.float64)


@pytest.mark.parametrize("spec", ["pg", "ppo", "ppo(eps_high=0.28, dual_clip=3.0)"])
def test_gradcheck(spec):
    surrogate = build(spec).surrogate
    logp, old, adv = _random_point()
    assert torch.autograd.gradcheck(lambda x: surrogate.loss(x, old, adv)[0], (logp,))


def test_gradcheck_ce_gppo():
    """``r / sg(r)`` is constant to finite differences, so gradcheck a twin without the stop-
    gradient (``1 + logp - logp_0`` at the point ``logp_0``), then require equal gradients."""
    logp, old, adv = _random_point()
    point = logp.detach().clone()
    ratio = torch.exp(point - old)
    low = (adv < 0) & (ratio < 0.8)
    high = (adv > 0) & (ratio > 1.2)
    assert low.any() and high.any()

    def twin(x):
        unit = 1.0 + x - point
        loss = torch.where(low, -0.75 * 0.8 * unit * adv, -torch.exp(x - old) * adv)
        return torch.where(high, -1.0 * 1.2 * unit * adv, loss)

    assert torch.autograd.gradcheck(twin, (logp,))
    loss, _ = ce_gppo_loss(logp, old, adv)
    assert torch.allclose(loss, twin(logp))
    weights = torch.randn(3, 5, dtype=torch.float64)
    (got,) = torch.autograd.grad((loss * weights).sum(), logp)
    (want,) = torch.autograd.grad((twin(logp) * weights).sum(), logp)
    assert torch.allclose(got, want)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="share one shape"):
        ppo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 2))


@pytest.mark.parametrize(
    "spec, match",
    [
        ("ppo(eps_low=1.5)", "eps_low must lie in"),
        ("ppo(eps_high=-0.1)", "eps_high must lie in"),
        ("ppo(dual_clip=1.0)", "dual_clip must lie in"),
        ("ce_gppo(beta1=-1)", "beta1 must lie in"),
    ],
)
def test_bad_hyperparameters(spec, match):
    with pytest.raises(ValueError, match=match):
        build(spec)
