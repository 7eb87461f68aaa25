"""target_entropy: our controller of Clip_B's / Clip_V's threshold, against a float64 reference
written from its rule (docs/methods.md), a hand case, its schedule, state and validation."""

from __future__ import annotations

import pytest
import torch

from _batches import token_batch
from entropy_dynamics import diagnostics as dg
from entropy_dynamics import methods
from entropy_dynamics.methods import PlanContext, TokenBatch
from entropy_dynamics.methods.target import scheduled_target, target_entropy_choice

MUS = (3.0, 2.0, 1.0, 0.5, 0.25)


def _batch(seed: int, b: int = 6, t: int = 7) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=g) > 0.15
    mask[:, 0] = True
    adv = torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, t).clone()
    adv[0] = 0.0
    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    old = logp + 0.1 * torch.randn(b, t, generator=g, dtype=torch.float64)
    entropy = torch.rand(b, t, generator=g, dtype=torch.float64) * 2
    s = torch.randn(b, t, generator=g, dtype=torch.float64) * 0.5
    n = torch.randn(b, t, generator=g, dtype=torch.float64) * 0.1
    return token_batch(mask, adv, logp, old_logprobs=old, entropy=entropy, discriminator=s,
                       baseline=n)  # fmt: skip


def _reference(batch: TokenBatch, *, base, target, lr, gain, ki, integral, max_drop, mus):
    """The rule, float64, from its statement (no library code): candidates "keep all" then each
    mu from the largest; Clip_B released: keep A >= 0 or S - m >= -mu s (m, s: mean and
    population std of S over valid tokens); Clip_V released uncapped: drop A <= 0 with
    S - N < -mu s_D (s_D: population std of S - N). dH(mu) = sum over kept of
    -lr r A (S - N) / n_valid; choose the closest to -(gain e + ki I) within max_drop."""
    m = batch.mask
    s, n, a = batch.discriminator[m], batch.baseline[m], batch.advantages[m]
    r = torch.exp(batch.logprobs[m] - batch.old_logprobs[m])
    error = float(batch.entropy[m].mean()) - target
    desired = -(gain * error + ki * integral)
    per_token = -lr * r * a * (s - n)
    keeps = [torch.ones_like(s, dtype=torch.bool)]
    for mu in sorted(mus, reverse=True):
        if base == "clip_b":
            keeps.append((a >= 0) | (s - s.mean() >= -mu * s.std(unbiased=False)))
        else:
            d = s - n
            keeps.append(~((a <= 0) & (d < -mu * d.std(unbiased=False))))
    best, best_gap = 0, None
    for i, k in enumerate(keeps):
        dh = float(per_token[k].sum()) / len(s)
        share = float((~k).sum()) / len(s)
        allowed = i == 0 or share <= max_drop
        if allowed and (best_gap is None or abs(dh - desired) < best_gap):
            best, best_gap = i, abs(dh - desired)
    full = torch.zeros_like(m)
    full[m] = keeps[best]
    mu = 0.0 if best == 0 else sorted(mus, reverse=True)[best - 1]
    return full, mu, error, desired


@pytest.mark.parametrize("base", ["clip_b", "clip_v"])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [0.2, 1.0, 3.0])
def test_target_entropy_matches_the_float64_reference(base, seed, target):
    batch = _batch(seed)
    kwargs = dict(base=base, target=target, lr=0.7, gain=0.5, ki=0.1, max_drop=0.3, mus=MUS)
    part = methods.get_part("target_entropy")(**kwargs)
    state = {"step": torch.tensor(0), "integral": torch.tensor(0.4, dtype=torch.float64)}
    keep, metrics, new_state = part.keep(PlanContext(batch, state=state))
    want, mu, error, desired = _reference(batch, integral=0.4, **kwargs)
    assert torch.equal(keep, want)
    assert float(metrics[dg.TARGET_ENTROPY_MU]) == mu
    assert float(metrics[dg.TARGET_ENTROPY_ERROR]) == pytest.approx(error, rel=1e-6)
    assert float(metrics[dg.TARGET_ENTROPY_DESIRED]) == pytest.approx(desired, rel=1e-6)
    assert new_state is state  # advanced after the step, not in keep


def test_the_reference_cases_exercise_several_choices():
    mus = set()
    for base in ("clip_b", "clip_v"):
        for seed in range(6):
            for target in (0.2, 1.0, 3.0):
                mus.add(_reference(_batch(seed), base=base, target=target, lr=0.7, gain=0.5,
                                   ki=0.1, integral=0.4, max_drop=0.3, mus=MUS)[1])  # fmt: skip
    assert len(mus) >= 3, mus


def test_hand_case():
    # 4 valid tokens, Clip_B: S = [1, 1, 1, -3] (m = 0, s = sqrt(3)), A = -1 on all, S - N = S,
    # r = 1, lr = 1: per-token dH = -lr A (S - N) = S: [1, 1, 1, -3]. Keep all: dH = 0/4 = 0.
    # mu = 1: d_3 = -3 < -1.732 drops the last token: dH = 3 / 4 = 0.75, share 0.25.
    # H = 1 everywhere, target 2: e = -1, desired = 0.5 * 1 = 0.5: mu = 1 (|0.75 - 0.5| < 0.5).
    s = torch.tensor([[1.0, 1.0, 1.0, -3.0]], dtype=torch.float64)
    batch = token_batch([[True] * 4], -1.0, entropy=1.0, discriminator=s, baseline=0.0)
    part = methods.get_part("target_entropy")(target=2.0, lr=1.0, gain=0.5, mus=(1.0,),
                                              max_drop=0.25)  # fmt: skip
    state = part.init_state()
    keep, metrics, _ = part.keep(PlanContext(batch, state=state))
    assert keep.tolist() == [[True, True, True, False]]
    assert float(metrics[dg.TARGET_ENTROPY_PREDICTED]) == pytest.approx(0.75)
    assert float(metrics[dg.TARGET_ENTROPY_PREDICTED_OFF]) == pytest.approx(0.0)
    assert float(metrics[dg.TARGET_ENTROPY_SATURATED]) == 0.0  # it can give what is asked
    part = methods.get_part("target_entropy")(target=2.0, lr=1.0, gain=0.5, mus=(1.0,),
                                              max_drop=0.2)  # fmt: skip
    keep, metrics, _ = part.keep(PlanContext(batch, state=state))
    assert keep.all() and float(metrics[dg.TARGET_ENTROPY_MU]) == 0.0  # 25 % > 20 %: refused
    assert float(metrics[dg.TARGET_ENTROPY_SATURATED]) == 1.0  # wanted more than it may give
    # above the target: every token kept, saturated (no mask lowers entropy further)
    part = methods.get_part("target_entropy")(target=0.5, lr=1.0, mus=(1.0,), max_drop=0.5)
    keep, metrics, _ = part.keep(PlanContext(batch, state=state))
    assert keep.all() and float(metrics[dg.TARGET_ENTROPY_SATURATED]) == 1.0


def test_choice_schedule_and_state():
    assert target_entropy_choice([-0.1, 0.0, 0.3], [0, 0.01, 0.2], 0.2, 0.05) == 1
    assert target_entropy_choice([0.0, 0.0], [0, 0.1], 0.0, 1.0) == 0  # tie: fewer drops
    assert scheduled_target(5, 1.0, 0.5, 10) == 0.75
    assert scheduled_target(50, 1.0, 0.5, 10) == 0.5
    assert scheduled_target(5, 1.0, None, 10) == 1.0
    method = methods.build("ppo + target_entropy(ki=0.1)")
    assert method.state == {"target_entropy": {"step": torch.tensor(0),
                                               "integral": torch.tensor(0.0, dtype=torch.float64)}}  # fmt: skip
    method.step_end({dg.TARGET_ENTROPY_ERROR: 0.25, dg.TARGET_ENTROPY_SATURATED: 0.0})
    method.step_end({dg.TARGET_ENTROPY_ERROR: 0.5, dg.TARGET_ENTROPY_SATURATED: 1.0})
    state = method.state["target_entropy"]
    assert int(state["step"]) == 2 and float(state["integral"]) == 0.25  # anti-windup
    with pytest.raises(ValueError, match="lack"):
        method.step_end({})


def test_method_plan_uses_the_controller_and_the_spec_round_trips():
    batch = _batch(3)
    method = methods.build("target_entropy(target=3.0, lr=5.0, max_drop=0.5)")
    plan = method.plan(batch)
    assert plan.metrics[dg.TARGET_ENTROPY_FRAC_DROPPED] > 0
    assert float(plan.metrics[dg.PLAN_FRAC_KEPT]) < 1
    assert methods.build(method.spec).spec == method.spec
    assert "mus=(3.0, 2.5, 2.0, 1.5, 1.25, 1.0, 0.75, 0.5)" in method.spec
    with pytest.raises(ValueError, match="base"):
        methods.build("ppo + target_entropy(base='clip_cov')")
    with pytest.raises(ValueError, match="max_drop"):
        methods.build("ppo + target_entropy(max_drop=1.5)")
    with pytest.raises(ValueError, match="mus"):
        methods.build("ppo + target_entropy(mus=())")
    fields = ("mask", "advantages", "logprobs", "old_logprobs", "entropy", "discriminator")
    no_baseline = TokenBatch(**{k: getattr(batch, k) for k in fields})
    with pytest.raises(ValueError, match="baseline"):
        methods.build("ppo + target_entropy").plan(no_baseline)
