"""Two gloo ranks: every filter / regulariser mask equals the single-process mask on the
concatenated batch (Clip_B, Clip_V with its top-K cap, Clip-Cov's seeded draw, KL-Cov, top-entropy,
AEPO's switch)."""

from __future__ import annotations

import pytest
import torch

from _batches import token_batch
from _dist_util import run_in_processes
from entropy_dynamics import diagnostics as dg
from entropy_dynamics.methods import TokenBatch, build

SPECS = [
    "clip_b(mu=0.5)",
    "clip_b(mu=0.7, variant='paper', mu_high=1.0)",
    "clip_v(mu=0.3, max_frac=0.02)",  # many would drop: the top-K cap binds (checked below)
    "clip_v(mu=1.0, max_frac=0.5)",
    "clip_cov(ratio=0.05, lb=-0.5, ub=10.0, seed=3, denominator='kept')",
    "kl_cov(ratio=0.05)",
    "top_entropy(rho=0.3)",
    # AEPO: the batch entropy (Eq. 11: a mean of row means) is just above high, while rank 1's
    # own rows alone are just below it: only the batch-global value switches AEPO on everywhere
    "aepo(low=0.5, high=1.0183)",
    "aepo(low=0.5, high=1.0188, entropy_mean='token-mean')",
    "ppo + clip_b(mu=0.5) + clip_v(mu=0.5, max_frac=0.01) + top_entropy + kl_cov",
]
SPLIT = 3  # rank 0 holds rows [0, 3), rank 1 rows [3, 8): unequal shares of valid tokens


def _batch() -> TokenBatch:
    g = torch.Generator().manual_seed(7)
    B, T = 8, 24
    mask = torch.rand(B, T, generator=g) < 0.75
    advantages = torch.randn(B, 1, generator=g).expand(B, T).contiguous()
    logprobs = -torch.rand(B, T, generator=g) * 4
    entropy = torch.rand(B, T, generator=g) * 2
    discriminator = logprobs.exp() * (entropy + logprobs)
    baseline = discriminator + 0.05 * torch.randn(B, T, generator=g) ** 3
    # Ties in D and in entropy across the ranks, so tie-breaking by global position matters.
    baseline[1, :4] = baseline[5, :4] = discriminator[1, :4] + 1.0
    discriminator[5, :4] = discriminator[1, :4]
    entropy[0, 2] = entropy[6, 2] = 1.5
    old_logprobs = logprobs + 0.2 * torch.randn(B, T, generator=g)
    return token_batch(mask, advantages, logprobs, old_logprobs=old_logprobs, entropy=entropy,
                       discriminator=discriminator, baseline=baseline)  # fmt: skip


def _plans(batch: TokenBatch):
    out = []
    for spec in SPECS:
        plan = build(spec).plan(batch)
        out.append(
            (
                plan.keep,
                dict(plan.selected),
                plan.num_tokens,
                plan.num_seqs,
                {k: v.float() for k, v in plan.metrics.items()},
            )
        )
    return out


def _per_rank(rank: int, world: int):
    rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
    return _plans(_batch().rows(rows))


@pytest.fixture(scope="module")
def results():
    return run_in_processes(_per_rank, world_size=2, timeout=120)


def test_every_rank_matches_the_concatenated_batch(results):
    single = _plans(_batch())
    for i, spec in enumerate(SPECS):
        keep, selected, num_tokens, num_seqs, metrics = single[i]
        rank_keep = torch.cat([results[0][i][0], results[1][i][0]])
        assert torch.equal(rank_keep, keep), spec
        for name, sel in selected.items():
            assert torch.equal(torch.cat([results[0][i][1][name], results[1][i][1][name]]), sel)
        for r in (0, 1):
            assert results[r][i][2] == num_tokens and results[r][i][3] == num_seqs, spec
            for name, value in metrics.items():
                assert torch.allclose(results[r][i][4][name], value, atol=1e-6), (spec, name)


def test_the_cases_have_teeth(results):
    single = _plans(_batch())
    batch = _batch()
    dropped = {
        spec: int((batch.mask & ~plan[0]).sum()) for spec, plan in zip(SPECS, single, strict=True)
    }
    assert all(dropped[spec] > 0 for spec in SPECS if not spec.startswith("kl_cov")), dropped
    assert single[2][4][dg.CLIP_V_CAPPED].item() == 1.0  # the cap bound
    n = int(batch.mask.sum())
    assert dropped[SPECS[2]] == max(int(0.02 * n), 1)
    assert single[5][1]["kl_cov"].sum().item() == max(1, int(0.05 * n))
