"""Filters, regularisers and reweights other than Clip_B / Clip_V, each hand-checked."""

from __future__ import annotations

import math

import pytest
import torch

from _batches import token_batch
from entropy_dynamics import diagnostics as dg
from entropy_dynamics.methods import (
    build,
    centred_covariance,
    clip_cov_mask,
    kl_cov_select,
    kl_estimate,
    top_entropy_mask,
)

# Covariance batch: A = [1, 1, -1, -1] (mean 0), logp = [-1, -3, -1, -3] (mean -2):
# cov = (A - 0)(logp + 2) = [1, -1, -1, 1].
A4 = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
LOGP4 = torch.tensor([[-1.0, -3.0, -1.0, -3.0]])
ALL4 = torch.ones(1, 4, dtype=torch.bool)
NONE4 = torch.zeros(1, 4, dtype=torch.bool)


def _batch(mask, advantages, logprobs, *, old_logprobs=None, entropy=None):
    return token_batch(mask, advantages, logprobs, old_logprobs=old_logprobs, entropy=entropy,
                       baseline=0.0)  # fmt: skip


def test_centred_covariance():
    cov, n = centred_covariance(A4, LOGP4, ALL4)
    assert cov.tolist() == [[1.0, -1.0, -1.0, 1.0]] and int(n) == 4


def test_clip_cov_hand_computed():
    # lb 0.5 < cov < 5: candidates are tokens 0 and 3. ratio 0.5: k = max(int(2.0), 1) = 2.
    keep = clip_cov_mask(A4, LOGP4, ALL4, NONE4, ratio=0.5, lb=0.5, ub=5.0)
    assert keep.tolist() == [[False, True, True, False]]
    # ratio 0.1: k = max(int(0.4), 1) = 1: exactly one of the two, the same for the same seed.
    picks = set()
    for seed in range(8):
        keep = clip_cov_mask(
            A4,
            LOGP4,
            ALL4,
            NONE4,
            ratio=0.1,
            lb=0.5,
            ub=5.0,
            generator=torch.Generator().manual_seed(seed),
        )
        dropped = (~keep).nonzero()[:, 1].tolist()
        assert len(dropped) == 1 and dropped[0] in (0, 3)
        again = clip_cov_mask(
            A4,
            LOGP4,
            ALL4,
            NONE4,
            ratio=0.1,
            lb=0.5,
            ub=5.0,
            generator=torch.Generator().manual_seed(seed),
        )
        assert torch.equal(keep, again)
        picks.add(dropped[0])
    assert picks == {0, 3}  # uniform draw: both candidates come up over 8 seeds
    # Token 0 already clipped by PPO: only token 3 remains a candidate.
    clipped = torch.tensor([[True, False, False, False]])
    keep = clip_cov_mask(A4, LOGP4, ALL4, clipped, ratio=0.5, lb=0.5, ub=5.0)
    assert keep.tolist() == [[True, True, True, False]]
    # ub = 1 is exclusive: cov = 1 is no candidate, nothing dropped.
    assert clip_cov_mask(A4, LOGP4, ALL4, NONE4, ratio=0.5, lb=0.5, ub=1.0).all()


def test_clip_cov_part_uses_the_surrogate_clip():
    # Token 0: A = 1, r = e^0.5 = 1.65 > 1.2: clipped by ppo() but not by ppo(eps=1) (r < 2).
    old = LOGP4 - torch.tensor([[0.5, 0.0, 0.0, 0.0]])
    batch = _batch(ALL4, A4, LOGP4, old_logprobs=old)
    spec = "clip_cov(ratio=0.5, lb=0.5, denominator='kept')"
    assert build("ppo + " + spec).plan(batch).keep.tolist() == [[True, True, True, False]]
    assert build(spec).plan(batch).keep.tolist() == [[False, True, True, False]]
    # The preset (verl's rule): the dropped tokens stay in keep, their surrogate weight is 0.
    plan = build("clip_cov(ratio=0.5, lb=0.5)").plan(batch)
    assert plan.keep.all() and plan.weight.tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_top_entropy_hand_computed():
    H = torch.arange(1, 11, dtype=torch.float32).reshape(1, 10) / 10  # 0.1 ... 1.0
    # (1 - 0.2)-quantile, linear: h = 0.8 * 9 = 7.2 -> 0.8 + 0.2 * (0.9 - 0.8) = 0.82.
    keep = top_entropy_mask(H, torch.ones_like(H, dtype=torch.bool), rho=0.2)
    assert keep.nonzero()[:, 1].tolist() == [8, 9]
    plan = build("top_entropy").plan(
        _batch(torch.ones_like(keep), torch.ones_like(H), torch.zeros_like(H), entropy=H)
    )
    assert plan.keep.sum().item() == 2
    assert plan.metrics[dg.TOP_ENTROPY_FRAC_DROPPED].item() == pytest.approx(0.8)


def test_kl_cov_select_and_penalty():
    # ratio 0.25: k = max(1, int(1.0)) = 1; cov = [1, -1, -1, 1] ties -> lower position (0).
    assert kl_cov_select(A4, LOGP4, ALL4, ratio=0.25).tolist() == [[True, False, False, False]]
    assert kl_cov_select(A4, LOGP4, ALL4, ratio=0.5).tolist() == [[True, False, False, True]]
    method = build("kl_cov(ratio=0.25, coef=2.0)")
    old = LOGP4 + 0.3
    plan = method.plan(_batch(ALL4, A4, LOGP4, old_logprobs=old))
    logp = LOGP4.clone().requires_grad_()
    loss, metrics = method.token_loss(logprobs=logp, old_logprobs=old, advantages=A4, plan=plan)
    # pg: -r A with r = e^-0.3; token 0 adds 2 |logp - old| = 0.6.
    r = math.exp(-0.3)
    assert torch.allclose(loss, torch.tensor([[-r + 0.6, -r, r, r]]), atol=1e-6)
    assert metrics[dg.KL_COV_PENALTY].item() == pytest.approx(0.6)  # a raw sum
    logged = method.finalize_metrics(metrics, plan)
    assert logged[dg.KL_COV_PENALTY].item() == pytest.approx(0.6 / 4)  # mean over 4 kept
    assert plan.metrics[dg.KL_COV_FRAC_SELECTED].item() == pytest.approx(0.25)


def test_kl_estimators():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-2.0]])  # log ratio 1
    assert kl_estimate(logp, ref, estimator="k1").item() == pytest.approx(1.0)
    assert kl_estimate(logp, ref, estimator="k2").item() == pytest.approx(0.5)
    assert kl_estimate(logp, ref, estimator="k3").item() == pytest.approx(math.exp(-1.0))
    with pytest.raises(ValueError, match="estimator must be one of"):
        kl_estimate(logp, ref, estimator="k4")
    method = build("grpo + kl_ref(coef=0.5, estimator='k2')")
    plan = method.plan(_batch(torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1), logp))
    loss, _ = method.token_loss(
        logprobs=logp, old_logprobs=logp, advantages=torch.zeros(1, 1), plan=plan, ref_logprobs=ref
    )
    assert loss.item() == pytest.approx(0.25)  # 0 + 0.5 * 0.5
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        method.token_loss(logprobs=logp, old_logprobs=logp, advantages=torch.zeros(1, 1), plan=plan)


def test_entropy_bonus_and_adaptive():
    H = torch.tensor([[0.5, 1.5]], requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    zeros = torch.zeros(1, 2)
    method = build("entropy_bonus(coef=0.1)")
    plan = method.plan(_batch(mask, zeros, zeros, entropy=H.detach()))
    loss, metrics = method.token_loss(
        logprobs=zeros, old_logprobs=zeros, advantages=zeros, plan=plan, entropy=H
    )
    assert torch.allclose(loss, torch.tensor([[-0.05, -0.15]]))  # 0 - 0.1 H
    assert metrics[dg.ENTROPY_BONUS_ENTROPY].item() == pytest.approx(2.0)  # raw sum of H
    logged = method.finalize_metrics(metrics, plan)
    assert logged[dg.ENTROPY_BONUS_ENTROPY].item() == pytest.approx(1.0)  # mean H
    assert logged[dg.ENTROPY_BONUS_COEF].item() == pytest.approx(0.1)  # a plan constant
    with pytest.raises(ValueError, match="needs entropy"):
        method.token_loss(logprobs=zeros, old_logprobs=zeros, advantages=zeros, plan=plan)

    adaptive = build("adaptive_entropy_bonus(coef=0.01, target=0.2, step=0.004, max_coef=0.015)")
    part = adaptive.regularisers[0]
    coef = lambda: adaptive.state[part.name]["coef"].item()  # noqa: E731
    assert coef() == pytest.approx(0.01)
    adaptive.step_end({dg.ENTROPY_BONUS_ENTROPY: torch.tensor(0.1)})  # below target: up
    assert coef() == pytest.approx(0.014)
    adaptive.step_end({dg.ENTROPY_BONUS_ENTROPY: 0.1})  # 0.018 clamped to max 0.015
    assert coef() == pytest.approx(0.015)
    adaptive.step_end({dg.ENTROPY_BONUS_ENTROPY: 0.3})  # above target: down
    assert coef() == pytest.approx(0.011)
    # the part itself holds nothing: the coefficient reaches the loss through the plan
    assert part.init_state()["coef"].item() == pytest.approx(0.01)
    adaptive_plan = adaptive.plan(_batch(mask, zeros, zeros, entropy=H.detach()))
    assert adaptive_plan.metrics[dg.ENTROPY_BONUS_COEF].item() == pytest.approx(0.011)
    loss, _ = adaptive.token_loss(
        logprobs=zeros, old_logprobs=zeros, advantages=zeros, plan=adaptive_plan, entropy=H
    )
    assert torch.allclose(loss, -0.011 * H)
    assert adaptive.spec.endswith(
        "adaptive_entropy_bonus(coef=0.01, target=0.2, step=0.004, min_coef=0.0, max_coef=0.015)"
    )
    with pytest.raises(ValueError, match="metrics lack"):
        adaptive.step_end({})


def test_adv_weight_scales_by_sign():
    A = torch.tensor([[2.0, -1.0, 0.0]])
    method = build("pg + adv_weight(pos_weight=0.1)")
    logp = torch.zeros(1, 3)
    plan = method.plan(_batch(torch.ones(1, 3, dtype=torch.bool), A, logp))
    assert plan.weight.tolist() == [[pytest.approx(0.1), 1.0, 1.0]]
    loss, _ = method.token_loss(logprobs=logp, old_logprobs=logp, advantages=A, plan=plan)
    assert torch.allclose(loss, torch.tensor([[-0.2, 1.0, 0.0]]))  # -w r A with r = 1
    plan = build("adv_weight(pos_weight=0.5, neg_weight=2.0)").plan(
        _batch(torch.ones(1, 3, dtype=torch.bool), A, logp)
    )
    assert plan.weight.tolist() == [[0.5, 2.0, 1.0]]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("clip_cov(ratio=0)", "ratio must lie in"),
        ("clip_cov(lb=2, ub=1)", "ub must lie in"),
        ("top_entropy(rho=1.5)", "rho must lie in"),
        ("kl_cov(coef=-1)", "coef must lie in"),
        ("adaptive_entropy_bonus(step=0)", "step must lie in"),
        ("adv_weight(pos_weight=-0.1)", "pos_weight must lie in"),
    ],
)
def test_bad_part_arguments(spec, match):
    with pytest.raises(ValueError, match=match):
        build(spec)


def test_sign_condition_keeps_one_quadrant_by_hand():
    # A = [1, 1, -1, -1, 0], S = [0.2, -0.1, 0.3, -0.4, 0.5]; the last token is padding-free but A = 0.
    # (sample=1, side=1) keeps token 0; (1, -1) token 1; (-1, 1) token 2; (-1, -1) token 3.
    from entropy_dynamics.methods import sign_condition_mask

    S = torch.tensor([[0.2, -0.1, 0.3, -0.4, 0.5]])
    A = torch.tensor([[1.0, 1.0, -1.0, -1.0, 0.0]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    for index, (sample, side) in enumerate([(1, 1), (1, -1), (-1, 1), (-1, -1)]):
        keep = sign_condition_mask(S, A, mask, sample=sample, side=side)
        assert keep.nonzero()[:, 1].tolist() == [index]
    assert not sign_condition_mask(S, A, torch.zeros_like(mask)).any()
    with pytest.raises(ValueError, match="sample must be 1 or -1"):
        sign_condition_mask(S, A, mask, sample=0)
