"""Surrogates, KL estimates, advantage estimators, aggregation and the denominator choice
against each anchor's rule, written here as plain float64 loops (docs/anchors.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _batches import token_batch
from entropy_dynamics import advantages as adv
from entropy_dynamics import theory
from entropy_dynamics.aggregation import aggregate
from entropy_dynamics.methods import build, ce_gppo_loss, kl_estimate, ppo_loss


def _tokens(seed, B=4, T=6, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + spread * torch.randn(B, T, generator=g, dtype=torch.float64)
    A = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, T).clone()
    A[0] = 0.0  # an A = 0 group
    return logp, old, A


def ref_verl_ppo(logp, old, A, eps_low, eps_high, c):
    """verl 0.9.1 compute_policy_loss_vanilla / Trinity's PPO loss, one token at a time."""
    out = np.zeros(logp.shape)
    for idx in np.ndindex(*logp.shape):
        log_ratio = min(max(float(logp[idx] - old[idx]), -20.0), 20.0)
        r = math.exp(log_ratio)
        a = float(A[idx])
        loss = max(-a * r, -a * min(max(r, 1 - eps_low), 1 + eps_high))
        out[idx] = min(-a * c, loss) if a < 0 else loss
    return out


@pytest.mark.parametrize("spread", [0.1, 1.0, 30.0])  # 30: log-ratios beyond the +-20 clamp
def test_ppo_dual_clip_matches_verl_and_trinity(spread):
    logp, old, A = _tokens(1, spread=spread)
    got, _ = ppo_loss(logp, old, A, dual_clip=3.0)
    assert np.allclose(got.numpy(), ref_verl_ppo(logp, old, A, 0.2, 0.2, 3.0), rtol=1e-12)
    method = build("grpo")
    assert method.surrogate.dual_clip == 3.0
    loss, _ = method.surrogate.loss(logp, old, A)
    assert torch.equal(loss, got)
    # Without the clamp (TRL's ratio) the values differ only beyond |log r| = 20.
    free, _ = ppo_loss(logp, old, A, dual_clip=3.0, log_ratio_clamp=None)
    inside = (logp - old).abs() <= 20
    assert torch.equal(free[inside], got[inside])


def ref_ce_gppo(logp, old, A, eps_low, eps_high, beta1, beta2, c):
    """CE-GPPO's compute_gppo_loss_general_beta: (value, d value / d logp) per token."""
    value, grad = np.zeros(logp.shape), np.zeros(logp.shape)
    for idx in np.ndindex(*logp.shape):
        r = math.exp(float(logp[idx] - old[idx]))
        a = float(A[idx])
        if a < 0 and r < 1 - eps_low:
            v, d = -beta1 * (1 - eps_low) * a, -beta1 * (1 - eps_low) * a
        elif a > 0 and r > 1 + eps_high:
            v, d = -beta2 * (1 + eps_high) * a, -beta2 * (1 + eps_high) * a
        else:
            v, d = -r * a, -r * a
        if a < 0 and -a * c < v:
            v, d = -a * c, 0.0
        value[idx], grad[idx] = v, d
    return value, grad


def test_ce_gppo_with_dual_clip_matches_the_anchor():
    logp, old, A = _tokens(2, spread=2.5)
    logp.requires_grad_(True)
    got, _ = ce_gppo_loss(logp, old, A, dual_clip=10.0)
    got.sum().backward()
    value, grad = ref_ce_gppo(logp.detach(), old, A, 0.2, 0.2, 0.75, 1.0, 10.0)
    assert np.allclose(got.detach().numpy(), value, rtol=1e-12)
    assert np.allclose(logp.grad.numpy(), grad, rtol=1e-12)
    assert build("ce_gppo").surrogate.dual_clip == 10.0
    assert (got.detach() == 10.0 * -A).any()  # the dual clip binds somewhere


def test_kl_k3_forms():
    logp, ref, _ = _tokens(3, spread=15.0)
    trl = torch.exp(ref - logp) - (ref - logp) - 1  # TRL's per_token_kl
    assert torch.allclose(kl_estimate(logp, ref, estimator="k3"), trl, rtol=1e-12)
    want = np.zeros(logp.shape)  # verl's kl_penalty_forward('low_var_kl')
    for idx in np.ndindex(*logp.shape):
        kl = min(max(float(ref[idx] - logp[idx]), -20.0), 20.0)
        want[idx] = min(max(math.exp(kl) - kl - 1, -10.0), 10.0)
    got = kl_estimate(logp, ref, estimator="k3_clamped")
    assert np.allclose(got.numpy(), want, rtol=1e-12)
    assert not torch.allclose(got, kl_estimate(logp, ref, estimator="k3"))  # it has teeth


def test_w_reinforce_matches_the_authors_rule():
    rewards = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]  # all-correct, mixed, all-wrong groups
    want = []
    for r in rewards:  # compute_psr_nsr_outcome_advantage(advantage='weighted')
        want.append(r * 0.1 if r == 1 else (r - 1 if r == 0 else r))
    got = adv.get("w_reinforce")(torch.tensor(rewards), 2, pos_weight=0.1, neg_weight=1.0)
    assert torch.allclose(got, torch.tensor(want))
    method = build("w_reinforce")
    assert torch.equal(method.advantage.advantages(torch.tensor(rewards), 2), got)
    assert method.surrogate.name == "ppo" and not method.reweights
    with pytest.raises(ValueError, match="rewards must be 0 \\(wrong\\) or 1 \\(correct\\)"):
        adv.get("w_reinforce")(torch.tensor([0.5, 1.0]), 2)


def test_group_of_one_and_leave_one_out_as_verl():
    R = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    assert torch.equal(adv.grpo_advantages(R, 1), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(adv.grpo_advantages(R, 1, group_of_one="reward"), R / (1 + 1e-6))
    assert torch.equal(adv.dr_grpo_advantages(R, 1, group_of_one="reward"), R)
    assert torch.equal(adv.rloo_advantages(R, 1, group_of_one="reward"), R)
    with pytest.raises(ValueError, match="group_of_one must be one of"):
        adv.rloo_advantages(R, 1, group_of_one="mean")
    R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    want = []
    for g in range(2):  # verl compute_rloo_outcome_advantage: R n/(n-1) - mean n/(n-1)
        group = R[3 * g : 3 * g + 3].tolist()
        mean = sum(group) / 3
        want += [r * 3 / 2 - mean * 3 / 2 for r in group]
    assert torch.allclose(adv.rloo_advantages(R, 3), torch.tensor(want, dtype=torch.float64))
    trl = adv.grpo_advantages(R, 3, eps=1e-4)  # TRL: (R - mean) / (std + 1e-4)
    want = []
    for g in range(2):
        group = R[3 * g : 3 * g + 3].tolist()
        mean = sum(group) / 3
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / 2)
        want += [(r - mean) / (std + 1e-4) for r in group]
    assert torch.allclose(trl, torch.tensor(want, dtype=torch.float64), rtol=1e-12)


def ref_verl_agg(loss, mask, mode, max_len):
    """verl 0.9.1 agg_loss on one process (dp_size 1), loss_scale_factor = max_len."""
    rows = [
        (sum(loss[b][t] for t in range(len(mask[b])) if mask[b][t]), sum(mask[b]))
        for b in range(len(mask))
    ]
    if mode == "token-mean":
        return sum(s for s, _ in rows) / max(sum(n for _, n in rows), 1)
    live = [(s, n) for s, n in rows if n > 0]
    if mode == "seq-mean-token-mean":
        return sum(s / (n + 1e-8) for s, n in live) / len(live)
    total = sum(s for s, _ in live) / len(live)
    return total / max_len if mode == "seq-mean-token-sum-norm" else total


@pytest.mark.parametrize(
    "mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
def test_aggregate_matches_verl_agg_loss(mode):
    g = torch.Generator().manual_seed(4)
    loss = torch.randn(5, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(5, 7, generator=g) < 0.6
    mask[2] = False  # a row with no valid token
    got = aggregate(loss, mask, mode, max_len=7)
    want = ref_verl_agg(loss.tolist(), mask.int().tolist(), mode, 7)
    assert got.item() == pytest.approx(want, rel=1e-7)


@pytest.mark.parametrize(
    "value,match",
    [
        (-5, "whole count >= 0"),
        (0.5, "whole count >= 0"),
        (float("nan"), "whole count >= 0"),
        (1, "num_tokens=1 is fewer than the 3 this call's mask counts"),
        (torch.tensor(1.5), "whole count >= 0"),
        (torch.tensor([3]), "0-dim real tensor"),
    ],
)
def test_aggregate_refuses_bad_counts(value, match):
    loss = torch.ones(2, 2)
    mask = torch.tensor([[True, True], [True, False]])
    with pytest.raises(ValueError, match=match):
        aggregate(loss, mask, "token-mean", num_tokens=value)
    assert aggregate(loss, mask, "token-mean", num_tokens=6).item() == 0.5  # a larger global count


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 8
    mask = torch.rand(B, T, generator=g) < 0.8
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g)
    A = torch.randn(B, 1, generator=g).expand(B, T).contiguous()
    H = torch.rand(B, T, generator=g) * 2
    S = logp.exp() * (H + logp)
    return token_batch(mask, A, logp, old_logprobs=old, entropy=H, discriminator=S)


def test_top_entropy_denominators_trl_and_80_20():
    """'valid' = TRL (per_token_loss * entropy_mask, over every valid token); 'kept' = the
    80/20 authors (the mask itself shrinks)."""
    batch = _batch(5)
    mask = batch.mask
    values = batch.entropy[mask]
    threshold = torch.quantile(values, 0.8)
    high = mask & (batch.entropy >= threshold)
    per_token, _ = ppo_loss(batch.logprobs, batch.old_logprobs, batch.advantages)
    for denominator, count_mask in (("valid", mask), ("kept", high)):
        method = build(f"ppo + top_entropy(rho=0.2, denominator='{denominator}')")
        plan = method.plan(batch)
        loss, _ = method.token_loss(
            logprobs=batch.logprobs, old_logprobs=batch.old_logprobs,
            advantages=batch.advantages, plan=plan,
        )  # fmt: skip
        got = aggregate(loss, plan.keep, "token-mean", num_tokens=plan.num_tokens)
        want = sum(float(per_token[idx]) for idx in np.ndindex(*mask.shape) if high[idx]) / int(
            count_mask.sum()
        )
        assert got.item() == pytest.approx(want, rel=1e-6), denominator


def test_clip_cov_preset_keeps_dropped_tokens_in_the_denominator_as_verl():
    batch = _batch(6)
    method = build("clip_cov(ratio=0.1, lb=-5.0, ub=5.0)")
    plan = method.plan(batch)
    dropped = batch.mask & (plan.weight == 0)
    assert dropped.sum() == max(int(0.1 * int(batch.mask.sum())), 1)
    assert int(plan.num_tokens) == int(batch.mask.sum())  # verl: corr zeroes, mask unchanged
    loss, _ = method.token_loss(
        logprobs=batch.logprobs, old_logprobs=batch.old_logprobs,
        advantages=batch.advantages, plan=plan,
    )  # fmt: skip
    per_token, _ = ppo_loss(
        batch.logprobs, batch.old_logprobs, batch.advantages, eps_low=1.0, eps_high=1.0
    )
    want = sum(
        float(per_token[idx])
        for idx in np.ndindex(*batch.mask.shape)
        if batch.mask[idx] and not dropped[idx]
    ) / int(batch.mask.sum())
    got = aggregate(loss, plan.keep, "token-mean", num_tokens=plan.num_tokens)
    assert got.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), torch.tensor([0.1, float("nan")])])
def test_theory_refuses_non_finite_steps(bad):
    z = torch.randn(2, 5)
    k = torch.tensor([0, 1])
    for fn in (
        theory.predict_grpo_step_change,
        theory.grpo_step_delta,
        theory.exact_grpo_step_change,
        theory.predict_single_logit_change,
        theory.exact_single_logit_change,
    ):
        with pytest.raises(ValueError, match=r"NaN or inf|must be finite"):
            fn(z, k, bad)


def test_integer_mask_must_hold_only_zero_and_one():
    from entropy_dynamics.token_stats import token_stats

    logits = torch.randn(1, 3, 5)
    labels = torch.tensor([[0, 1, 2]])
    token_stats(logits, labels, mask=torch.tensor([[1, 0, 1]]))
    with pytest.raises(ValueError, match="mask must hold only 0 and 1"):
        token_stats(logits, labels, mask=torch.tensor([[1, 2, 1]]))
