"""The unified lens: per-token contributions match theory, quadrant split, method touches."""

from __future__ import annotations

import re

import pytest
import torch

from _batches import token_batch
from entropy_dynamics import theory
from entropy_dynamics.lens import QUADRANTS, entropy_lens, token_contributions
from entropy_dynamics.methods import TokenBatch, clip_b_mask, names
from entropy_dynamics.token_stats import token_stats


def _batch_from_logits(seed=0, B=6, T=10, V=20):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    labels = torch.distributions.Categorical(logits=logits).sample()
    stats = token_stats(logits, labels)
    mask = torch.rand(B, T, generator=g) < 0.8
    adv = torch.randn(B, 1, generator=g, dtype=torch.float64).expand(B, T).contiguous()
    logp = stats.logprobs.detach()
    old = logp + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    batch = token_batch(mask, adv, logp, old_logprobs=old, entropy=stats.entropy.detach(),
                        discriminator=stats.discriminator, baseline=stats.baseline)  # fmt: skip
    return batch, logits, labels


def test_contributions_match_theorem_3_3():
    batch, logits, labels = _batch_from_logits()
    lr = 0.01
    ratio = torch.exp(batch.logprobs - batch.old_logprobs)
    alpha = lr * ratio * batch.advantages
    want = theory.predict_grpo_step_change(logits, labels, alpha)
    got = token_contributions(batch, lr=lr)
    assert torch.allclose(got[batch.mask], want[batch.mask].to(got.dtype), atol=1e-10)
    assert (got[~batch.mask] == 0).all()


def test_hand_computed_quadrants():
    # One token per quadrant; lr = 1, r = 1: contribution = -A (S - N).
    S = torch.tensor([[0.3, 0.1, 0.3, 0.1]])
    N = torch.tensor([[0.1, 0.3, 0.1, 0.3]])
    A = torch.tensor([[1.0, 1.0, -2.0, -2.0]])
    batch = token_batch([[True] * 4], A, discriminator=S, baseline=N)
    lens = entropy_lens(batch, lr=1.0, methods=["grpo"])
    # -1 (0.2) = -0.2 (lowers); -1 (-0.2) = 0.2 (raises); 2 (0.2) = 0.4; 2 (-0.2) = -0.4.
    want = [-0.2, 0.2, 0.4, -0.4]
    assert torch.allclose(lens.contribution, torch.tensor([want]))
    for name, value in zip(QUADRANTS, want, strict=True):
        count, total = lens.quadrants[name]
        assert int(count) == 1 and float(total) == pytest.approx(value)
    assert float(lens.total) == pytest.approx(0.0, abs=1e-7)


def test_quadrants_partition_and_method_touches():
    batch, _, _ = _batch_from_logits(seed=1)
    lens = entropy_lens(
        batch,
        lr=0.1,
        methods=[
            "clip_b(mu=0.5)",
            "grpo",
            "kl_cov(ratio=0.05)",
            "ppo + adv_weight(pos_weight=0.1)",  # reweights A > 0 tokens
            "entropy_bonus",
        ],
    )
    nonzero_adv = batch.mask & (batch.advantages != 0)
    assert sum(int(c) for c, _ in lens.quadrants.values()) == int(nonzero_adv.sum())
    assert sum(float(s) for _, s in lens.quadrants.values()) == pytest.approx(float(lens.total))
    dropped = batch.mask & ~clip_b_mask(batch.discriminator, batch.advantages, batch.mask, mu=0.5)
    count, total, n_raise, n_lower = lens.methods["clip_b(mu=0.5)"]["dropped"]
    assert int(count) == int(dropped.sum()) > 0
    assert float(total) == pytest.approx(float(lens.contribution[dropped].sum()))
    assert int(n_raise) + int(n_lower) == int(count)
    ratio = torch.exp(batch.logprobs - batch.old_logprobs)
    clipped = batch.mask & (
        ((batch.advantages > 0) & (ratio > 1.2)) | ((batch.advantages < 0) & (ratio < 0.8))
    )
    assert int(lens.methods["grpo"]["clipped"][0]) == int(clipped.sum()) > 0
    assert int(lens.methods["kl_cov(ratio=0.05)"]["penalised"][0]) == max(
        1, int(0.05 * int(batch.mask.sum()))
    )
    assert int(lens.methods["ppo + adv_weight(pos_weight=0.1)"]["reweighted"][0]) == int(
        (batch.mask & (batch.advantages > 0)).sum()
    )
    assert lens.dense == ("entropy_bonus",)


def test_table_lists_every_preset():
    batch, _, _ = _batch_from_logits(seed=2)
    table = entropy_lens(batch, lr=1e-3).format_table()
    for name in names("preset"):
        assert name in table
    for name in QUADRANTS:
        assert name in table


def test_lens_needs_baseline():
    batch, _, _ = _batch_from_logits()
    with pytest.raises(ValueError, match=r"needs TokenBatch\.baseline"):
        entropy_lens(TokenBatch(**{**batch.__dict__, "baseline": None}), lr=1.0)


def test_table_columns_line_up_and_shares_are_defined():
    batch, _, _ = _batch_from_logits(seed=3)
    specs = ["clip_b(mu=0.5)", "grpo", "kl_cov(ratio=0.05)"]  # a name longer than 15 chars
    lens = entropy_lens(batch, lr=0.1, methods=specs)
    lines = lens.format_table().splitlines()
    quadrant_header = next(i for i, line in enumerate(lines) if line.startswith("quadrant"))
    method_header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    for block in (lines[quadrant_header : quadrant_header + 5], lines[method_header:]):
        assert len({len(line) for line in block}) == 1, block  # every row as wide as its header
        ends = [m.end() for m in re.finditer(r"\S+(?: \S+)*", block[0])]  # 2+ spaces apart
        for line in block[1:]:  # right-aligned cells end where their header ends
            assert all(line[end - 1] != " " for end in ends[1:]), (block[0], line)
    total = max(int(lens.num_tokens), 1)
    moved = sum(abs(float(s)) for _, s in lens.quadrants.values())
    for name, (count, value) in lens.quadrants.items():
        row = next(line for line in lines if line.startswith(name + " "))
        cells = row[len(name) :].split()
        assert cells[1] == f"{int(count) / total:.1%}"  # % tokens
        assert cells[3] == f"{abs(float(value)) / moved:.1%}"  # % of |dH|
    assert "% of |dH|: the quadrant's |sum dH|" in lens.format_table()


def test_lens_counts_archer_clips_with_each_tokens_own_range():
    """Archer: ratio 1.3 with A > 0 is clipped by the narrow range (0.2) and not by the wide
    one (0.5) that the high-entropy tokens get; the lens must see the split."""
    from entropy_dynamics.methods import build

    B, T = 2, 10
    entropy = torch.arange(B * T, dtype=torch.float64).reshape(B, T) / 10  # distinct per row
    mask = torch.ones(B, T, dtype=torch.bool)
    logp = torch.full((B, T), -1.0, dtype=torch.float64)
    old = logp - torch.log(torch.tensor(1.3, dtype=torch.float64))
    batch = token_batch(mask, 1.0, logp, old_logprobs=old, entropy=entropy, baseline=0.0,
                        ref_logprobs=logp)  # fmt: skip
    method = build("archer")
    plan = method.plan(batch)
    high = plan.selected["archer_ppo"]
    assert 0 < int(high.sum()) < B * T  # both kinds present
    ratio = torch.exp(batch.logprobs - batch.old_logprobs)
    clipped = method.clipped(ratio, batch.advantages, plan)
    assert torch.equal(clipped, mask & ~high)  # only the narrow-range (low-entropy) tokens
    lens = entropy_lens(batch, lr=1e-3, methods=["archer"])
    assert "archer" in lens.format_table()


def test_lens_counts_aepo_drops_and_qae_has_a_row():
    """AEPO on (batch entropy above high) drops exactly the A <= 0 tokens, and the lens splits
    them by the sign of their own predicted contribution; off (entropy below low) it drops none."""
    batch, _, _ = _batch_from_logits(seed=4)
    on, off = "aepo(low=0.0, high=0.0)", "aepo(low=50.0, high=60.0)"
    lens = entropy_lens(batch, lr=0.1, methods=[on, off, "qae"])
    dropped = batch.mask & (batch.advantages <= 0)
    count, total, n_raise, n_lower = lens.methods[on]["dropped"]
    assert int(count) == int(dropped.sum()) > 0
    assert float(total) == pytest.approx(float(lens.contribution[dropped].sum()))
    assert int(n_raise) == int((dropped & (lens.contribution > 0)).sum()) > 0
    assert int(n_lower) == int((dropped & (lens.contribution < 0)).sum()) > 0
    assert int(lens.methods[off]["dropped"][0]) == 0
    assert "qae" in lens.format_table()  # an estimator's preset: its surrogate's clips
