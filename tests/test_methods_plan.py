"""Method.plan / token_loss: keep = mask & filters, global counts, micro-batch invariance."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _batches import token_batch
from entropy_dynamics import diagnostics as dg
from entropy_dynamics.aggregation import MODES, aggregate
from entropy_dynamics.methods import TokenBatch, build, clip_b_mask, clip_v_mask, names

ALL_PRESETS = names("preset")


def random_batch(B=8, T=12, *, seed=0, dtype=torch.float32, valid=0.8):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) < valid
    mask[:, 0] = True
    advantages = torch.randn(B, 1, generator=g).expand(B, T).to(dtype).contiguous()
    logprobs = -torch.rand(B, T, generator=g).to(dtype) * 3
    old = logprobs + 0.3 * torch.randn(B, T, generator=g).to(dtype)
    entropy = torch.rand(B, T, generator=g).to(dtype) * 2
    p = logprobs.exp()
    discriminator = p * (entropy + logprobs)
    baseline = discriminator + 0.05 * torch.randn(B, T, generator=g).to(dtype) ** 3
    return token_batch(mask, advantages, logprobs, old_logprobs=old, entropy=entropy,
                       discriminator=discriminator, baseline=baseline,
                       ref_logprobs=logprobs - 0.1)  # fmt: skip


def test_plan_keep_is_mask_and_every_filter():
    batch = random_batch()
    method = build("ppo + clip_b(mu=0.5) + clip_v(mu=1.0, max_frac=0.05)")
    plan = method.plan(batch)
    want = clip_b_mask(batch.discriminator, batch.advantages, batch.mask, mu=0.5) & clip_v_mask(
        batch.discriminator, batch.baseline, batch.advantages, batch.mask, mu=1.0, max_frac=0.05
    )
    assert torch.equal(plan.keep, want)
    assert (~want & batch.mask).any()  # something was dropped: the test has teeth
    assert plan.num_tokens.item() == want.sum().item()
    assert plan.num_seqs.item() == want.any(-1).sum().item()
    assert plan.metrics[dg.PLAN_FRAC_KEPT].item() == pytest.approx(
        want.sum().item() / batch.mask.sum().item()
    )
    assert dg.CLIP_B_FRAC_DROPPED in plan.metrics and dg.CLIP_V_CAPPED in plan.metrics
    assert method.needs_baseline and not build("clip_b").needs_baseline


@pytest.mark.parametrize(
    "spec",
    [
        *ALL_PRESETS,
        "clip_b(mu=0.3) + kl_ref + adv_weight(pos_weight=0.5)",
        "ppo(dual_clip=3.0) + clip_v(mu=0.5, max_frac=0.1)",
    ],
)
@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_equal_whole_batch(spec, mode):
    """Plan once, then sum of micro-batch aggregates == whole batch: loss and gradient."""
    batch = random_batch(dtype=torch.float64)
    method = build(spec)
    plan = method.plan(batch)

    def run(rows_list):
        logp = batch.logprobs.clone().requires_grad_()
        entropy = batch.entropy.clone().requires_grad_()
        total = 0.0
        for rows in rows_list:
            sub = plan.rows(rows)
            loss, _ = method.token_loss(
                logprobs=logp[rows],
                old_logprobs=batch.old_logprobs[rows],
                advantages=batch.advantages[rows],
                plan=sub,
                entropy=entropy[rows],
                ref_logprobs=batch.ref_logprobs[rows],
                clamped_entropy=entropy[rows],  # stands in for H_c (aent): any [B, T] with grad
            )
            total = total + aggregate(
                loss, sub.keep, mode, num_tokens=plan.num_tokens, num_seqs=plan.num_seqs, max_len=12
            )
        total.backward()
        return total.detach(), logp.grad, entropy.grad

    whole = run([slice(0, 8)])
    split = run([slice(0, 3), slice(3, 5), slice(5, 8)])
    for a, b in zip(whole, split, strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-12)
    assert whole[1].abs().sum() > 0  # a real gradient reached the log-probs


@pytest.mark.parametrize("spec", ALL_PRESETS)
def test_all_masked_batch(spec):
    batch = random_batch()
    batch = TokenBatch(**{**batch.__dict__, "mask": torch.zeros_like(batch.mask)})
    method = build(spec)
    plan = method.plan(batch)
    assert not plan.keep.any() and plan.num_tokens.item() == 0
    logp = batch.logprobs.clone().requires_grad_()
    entropy = batch.entropy.clone().requires_grad_()
    loss, metrics = method.token_loss(
        logprobs=logp,
        old_logprobs=batch.old_logprobs,
        advantages=batch.advantages,
        plan=plan,
        entropy=entropy,
        ref_logprobs=batch.ref_logprobs,
        clamped_entropy=entropy,
    )
    value = aggregate(loss, plan.keep, "token-mean", num_tokens=plan.num_tokens)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(logp.grad).all() and (logp.grad == 0).all()
    for name, metric in {**plan.metrics, **metrics}.items():
        assert torch.isfinite(metric).all(), name
    for name, metric in plan.metrics.items():
        if "frac_dropped" in name:
            assert metric.item() == 0.0, name


def test_token_loss_metrics_are_additive():
    batch = random_batch()
    method = build("ppo(eps_low=0.05, eps_high=0.05) + clip_b(mu=1.0)")
    plan = method.plan(batch)

    def kwargs(rows):
        return dict(
            logprobs=batch.logprobs[rows],
            old_logprobs=batch.old_logprobs[rows],
            advantages=batch.advantages[rows],
            plan=plan.rows(rows),
        )

    _, whole = method.token_loss(**kwargs(slice(None)))
    parts = [method.token_loss(**kwargs(rows))[1] for rows in (slice(0, 5), slice(5, None))]
    for name, value in whole.items():
        # raw fp32 sums (up to ~100 here): equal to fp32 rounding
        assert value.item() == pytest.approx(sum(p[name].item() for p in parts), rel=1e-6)
    ratio = (batch.logprobs - batch.old_logprobs).exp()
    high = plan.keep & (batch.advantages > 0) & (ratio > 1.05)
    assert whole[dg.LOSS_CLIP_FRAC_HIGH].item() == high.sum().item()  # a raw count
    summed = {name: sum(p[name] for p in parts) for name in whole}
    logged = method.finalize_metrics(summed, plan)
    assert logged[dg.LOSS_CLIP_FRAC_HIGH].item() == pytest.approx(
        high.sum().item() / plan.keep.sum().item()
    )
    assert logged[dg.LOSS_RATIO_MEAN].item() == pytest.approx(
        ratio[plan.keep].mean().item(), rel=1e-6
    )
    # two PPO epochs see every token twice: the same means
    twice = method.finalize_metrics({k: 2 * v for k, v in summed.items()}, plan, passes=2)
    assert twice[dg.LOSS_RATIO_MEAN].item() == pytest.approx(logged[dg.LOSS_RATIO_MEAN].item())
    assert logged[dg.PLAN_FRAC_KEPT] is plan.metrics[dg.PLAN_FRAC_KEPT]  # plan values as they are


def test_bad_batches():
    batch = random_batch()
    with pytest.raises(
        ValueError, match=r"TokenBatch\.entropy must be a tensor of the mask's shape"
    ):
        TokenBatch(**{**batch.__dict__, "entropy": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="mask must be a bool"):
        TokenBatch(**{**batch.__dict__, "mask": batch.mask.float()})
    with pytest.raises(ValueError, match=r"needs TokenBatch\.baseline"):
        build("clip_v").plan(TokenBatch(**{**batch.__dict__, "baseline": None}))
    plan = build("grpo").plan(batch)
    with pytest.raises(ValueError, match=r"pass plan\.rows"):
        build("grpo").token_loss(
            logprobs=batch.logprobs[:2],
            old_logprobs=batch.old_logprobs[:2],
            advantages=batch.advantages[:2],
            plan=plan,
        )


def test_batch_rows():
    batch = random_batch()
    sub = batch.rows(slice(2, 4))
    assert torch.equal(sub.discriminator, batch.discriminator[2:4])
    assert sub.baseline.shape == (2, 12)


def test_state_dict_round_trip():
    batch = random_batch()
    spec = (
        "clip_cov(ratio=0.2, lb=-10.0, ub=10.0, denominator='kept') "
        "+ adaptive_entropy_bonus(coef=0.01)"
    )
    method = build(spec)
    method.plan(batch)  # advances the Clip-Cov generator
    method.step_end({dg.ENTROPY_BONUS_ENTROPY: 0.0})
    state = method.state_dict()
    assert state["adaptive_entropy_bonus"]["coef"] == pytest.approx(0.015)
    resumed = build(spec)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.plan(batch).keep, method.plan(batch).keep)
    assert not torch.equal(build(spec).plan(batch).keep, resumed.plan(batch).keep)
    assert build("grpo").state_dict() == {}
    with pytest.raises(ValueError, match="stateful parts"):
        build("grpo").load_state_dict(state)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 10_000),
    st.lists(st.integers(1, 7), min_size=1, max_size=4),
    st.sampled_from(["clip_b(mu=0.5)", "clip_v(mu=0.5, max_frac=0.05)", "top_entropy(rho=0.5)"]),
)
def test_property_micro_batching_and_padding_do_not_change_the_result(seed, cuts, spec):
    """Any split into micro-batches gives the whole-batch loss; extra padded columns change
    neither the keep mask nor the loss."""
    batch = random_batch(seed=seed)
    method = build(spec)
    plan = method.plan(batch)
    bounds = sorted({0, 8, *cuts})

    def total(p, b):
        out = 0.0
        for lo, hi in itertools.pairwise(bounds):
            sub = p.rows(slice(lo, hi))
            loss, _ = method.token_loss(
                logprobs=b.logprobs[lo:hi],
                old_logprobs=b.old_logprobs[lo:hi],
                advantages=b.advantages[lo:hi],
                plan=sub,
            )
            out = out + aggregate(loss, sub.keep, "token-mean", num_tokens=p.num_tokens)
        return out

    whole = aggregate(
        method.token_loss(
            logprobs=batch.logprobs,
            old_logprobs=batch.old_logprobs,
            advantages=batch.advantages,
            plan=plan,
        )[0],
        plan.keep,
        "token-mean",
        num_tokens=plan.num_tokens,
    )
    assert torch.allclose(total(plan, batch), whole, atol=1e-6)
    padded = TokenBatch(
        **{
            name: None
            if value is None
            else torch.cat(
                [
                    value,
                    torch.full(
                        (8, 3), False if value.dtype == torch.bool else 7.0, dtype=value.dtype
                    ),
                ],
                dim=1,
            )
            for name, value in batch.__dict__.items()
        }
    )
    padded_plan = method.plan(padded)
    assert torch.equal(padded_plan.keep[:, :12], plan.keep) and not padded_plan.keep[:, 12:].any()
    assert torch.allclose(total(padded_plan, padded), whole, atol=1e-6)


def test_plan_without_advancing_state_decides_alike_and_keeps_the_state():
    """``advance_state=False`` (an evaluation batch): the same plan as a training batch would
    get from this state, and the stateful filter's state (Clip-Cov's draw) stays put."""
    g = torch.Generator().manual_seed(3)
    B, T = 6, 8
    logprobs = -torch.rand(B, T, generator=g) * 3
    mask = torch.rand(B, T, generator=g) > 0.2
    advantages = torch.randn(B, generator=g)  # one per row
    entropy, discriminator = torch.rand(B, T, generator=g), torch.randn(B, T, generator=g)
    batch = token_batch(mask, advantages, logprobs, entropy=entropy, discriminator=discriminator)
    method = build("ppo(eps_low=1.0, eps_high=1.0) + clip_cov(ratio=0.5, lb=-1e9, ub=1e9)")
    start = method.state_dict()["clip_cov"]["generator"].clone()
    looked = method.plan(batch, advance_state=False)
    assert torch.equal(method.state_dict()["clip_cov"]["generator"], start)
    trained = method.plan(batch)
    assert torch.equal(looked.keep, trained.keep) and torch.equal(looked.weight, trained.weight)
    assert not torch.equal(trained.weight, torch.ones_like(trained.weight))  # it did drop some
    assert not torch.equal(method.state_dict()["clip_cov"]["generator"], start)  # advanced
