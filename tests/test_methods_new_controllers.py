"""EntroPIC and AEnt against float64 loops written from the authors' code rules."""

from __future__ import annotations

import math

import pytest
import torch

from _batches import token_batch
from entropy_dynamics import diagnostics as dg
from entropy_dynamics import theory
from entropy_dynamics.aggregation import aggregate
from entropy_dynamics.methods import build


def _batch(seed: int, B: int = 4, T: int = 6):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) > 0.2
    mask[:, 0] = True
    # a mix of confident (p > 0.95) and ordinary tokens
    logprobs = torch.where(torch.rand(B, T, generator=g) > 0.5,
                           -0.04 * torch.rand(B, T, generator=g),
                           -3 * torch.rand(B, T, generator=g)).double()  # fmt: skip
    old = logprobs + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    advantages = torch.tensor([1.5, -0.7, 0.4, -1.2], dtype=torch.float64)[:B, None].expand(B, T)
    entropy = 2 * torch.rand(B, T, generator=g, dtype=torch.float64)
    return mask, logprobs, old, advantages.clone(), entropy


def _entropic_reference(mask, logprobs, old, adv, alpha, *, threshold=0.95, c=3.0):
    """verl/EntroPIC ``compute_policy_loss_entropic``, one token at a time: token-mean dual-clip
    PPO plus ``alpha * masked_mean(-r |A|, mask & (log p > log threshold))``."""
    B, T = mask.shape
    pg, n, adj, n_high = 0.0, 0, 0.0, 0
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            r = torch.exp((logprobs[b, t] - old[b, t]).clamp(-20, 20))
            a = adv[b, t]
            loss = torch.maximum(-a * r, -a * r.clamp(0.8, 1.2))
            if a < 0:
                loss = torch.minimum(loss, -a * c)
            pg, n = pg + loss, n + 1
            if logprobs[b, t] > math.log(threshold):
                adj, n_high = adj + (-r * a.abs()), n_high + 1
    return pg / n + alpha * adj / (n_high + 1e-8)


def test_entropic_matches_the_authors_loss_and_pi_rule_over_steps():
    method = build("entropic")  # ppo(dual_clip=3) + entropic(target=0.1, kp=1, ki=0.01)
    integral = 0.0
    for step in range(4):
        mask, logprobs, old, adv, entropy = _batch(step)
        entropy = entropy * (0.05 if step % 2 else 1.0)  # errors of both signs
        # the controller, as EntroPICDataParallelPPOActor (one micro-batch per step)
        h = sum(float(entropy[b, t]) for b, t in mask.nonzero().tolist()) / int(mask.sum())
        error = h - 0.1
        alpha = max(min(1.0 * error + 0.01 * integral, 1.0), -1.0)
        integral += error

        batch = token_batch(mask, adv, logprobs, old_logprobs=old, entropy=entropy)
        plan = method.plan(batch)
        assert plan.metrics[dg.ENTROPIC_ALPHA].item() == pytest.approx(alpha, abs=1e-6)
        ours_lp = logprobs.clone().requires_grad_(True)
        ref_lp = logprobs.clone().requires_grad_(True)
        token_loss, sums = method.token_loss(logprobs=ours_lp, old_logprobs=old, advantages=adv,
                                             plan=plan)  # fmt: skip
        ours = aggregate(token_loss, plan.keep, "token-mean", num_tokens=plan.num_tokens)
        ref = _entropic_reference(mask, ref_lp, old, adv, float(plan.metrics[dg.ENTROPIC_ALPHA]))
        # verl's masked_mean divides by (n_high + 1e-8), we by n_high: a relative 1e-8 / n_high
        torch.testing.assert_close(ours, ref, rtol=1e-8, atol=0)
        ours.backward()
        ref.backward()
        torch.testing.assert_close(ours_lp.grad, ref_lp.grad, rtol=1e-8, atol=1e-12)
        assert ours_lp.grad[mask].abs().sum() > 0
        method.step_end(method.finalize_metrics(sums, plan))
        assert method.state["entropic"]["integral"].item() == pytest.approx(integral, abs=1e-6)


def test_entropic_kept_denominator_and_alpha_bounds():
    mask, logprobs, old, adv, entropy = _batch(7)
    batch = token_batch(mask, adv, logprobs, old_logprobs=old, entropy=entropy)
    high, kept = (build(f"pg + entropic(kp=0.5, denominator='{d}')") for d in ("high", "kept"))
    terms = []
    for method in (high, kept):
        plan = method.plan(batch)
        loss, _ = method.token_loss(logprobs=logprobs, old_logprobs=old, advantages=adv, plan=plan)
        pg, _ = build("pg").token_loss(logprobs=logprobs, old_logprobs=old, advantages=adv,
                                      plan=build("pg").plan(batch))  # fmt: skip
        terms.append((loss - pg)[mask].sum())
    n_high = int((mask & (logprobs > math.log(0.95))).sum())
    assert 0 < n_high < int(mask.sum())
    # 'high' = 'kept' * n_kept / n_high: the mean over the high tokens instead of all kept ones
    assert terms[0].item() == pytest.approx(terms[1].item() * int(mask.sum()) / n_high)
    saturated = build("pg + entropic(target=0.0, kp=100.0, max_alpha=0.3)").plan(batch)
    assert saturated.metrics[dg.ENTROPIC_ALPHA].item() == pytest.approx(0.3)
    below = build("pg + entropic(target=50.0)").plan(batch)
    assert below.metrics[dg.ENTROPIC_ALPHA].item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="threshold"):
        build("entropic(threshold=1.0)")
    with pytest.raises(ValueError, match="denominator"):
        build("entropic(denominator='valid')")


def test_entropic_touches_tokens_above_the_baseline():
    """The lens claim: a token with p_k > 0.95 has S_* > N, so raising it lowers entropy."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2000, 50, generator=g, dtype=torch.float64) * 2
    logits[:, 0] += torch.rand(2000, generator=g, dtype=torch.float64) * 12
    p = torch.softmax(logits, -1)
    confident = p[:, 0] > 0.95
    assert confident.sum() > 100
    s_k = theory.discriminator(logits)[:, 0]
    n = theory.vocab_baseline(logits)
    assert (s_k - n)[confident].min() > 0


def test_aent_coefficient_rule_as_the_authors_actor():
    method = build("aent(coef=0.001, low=0.1, high=0.5, coef_lr=0.01, min_coef=1e-4, "
                   "max_coef=0.002, warmup_steps=2)")  # fmt: skip
    coef, expected = 0.001, []
    entropies = [0.05, 0.01, 0.02, 0.9, 0.3, 0.0, 0.0, 5.0]
    for global_step, h in enumerate(entropies):  # AReaL: global_step counts from 0
        if global_step > 2:
            coef -= 0.01 * (min(0, h - 0.1) + max(0, h - 0.5))
            coef = min(max(coef, 1e-4), 0.002)
        expected.append(coef)
        method.step_end({dg.AENT_CLAMPED_ENTROPY: torch.tensor(h)})
        assert method.state["aent"]["coef"].item() == pytest.approx(coef, abs=1e-12)
    assert len(set(expected)) >= 3  # the rule moved it, both ways and against the box
    with pytest.raises(ValueError, match="metrics lack"):
        method.step_end({})


def test_aent_term_is_minus_coef_times_clamped_entropy():
    mask, logprobs, old, adv, entropy = _batch(5)
    batch = token_batch(mask, adv, logprobs, old_logprobs=old, entropy=entropy)
    clamped = torch.rand(mask.shape, dtype=torch.float64)
    for spec, coef in (("pg + aent", 2e-4), ("pg + clamped_entropy_bonus(coef=0.01)", 0.01)):
        method = build(spec)
        assert method.clamp_p == 0.3
        plan = method.plan(batch)
        loss, sums = method.token_loss(logprobs=logprobs, old_logprobs=old, advantages=adv,
                                       plan=plan, clamped_entropy=clamped)  # fmt: skip
        pg, _ = build("pg").token_loss(logprobs=logprobs, old_logprobs=old, advantages=adv,
                                      plan=build("pg").plan(batch))  # fmt: skip
        torch.testing.assert_close(loss[mask], (pg - coef * clamped)[mask])
        assert sums[dg.AENT_CLAMPED_ENTROPY].item() == pytest.approx(clamped[mask].sum().item())
        with pytest.raises(ValueError, match="needs clamped_entropy"):
            method.token_loss(logprobs=logprobs, old_logprobs=old, advantages=adv, plan=plan)
    assert build("grpo").clamp_p is None
    with pytest.raises(ValueError, match="clamp_p"):
        build("pg + aent + clamped_entropy_bonus(clamp_p=0.2)")
    with pytest.raises(ValueError, match="high"):
        build("aent(low=0.5, high=0.1)")
