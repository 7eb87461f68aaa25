"""token_stats over a vocabulary split across 2 gloo ranks equals the unsplit float64 result."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from _dist_util import run_in_processes
from entropy_dynamics import (
    token_stats,
    token_stats_from_hidden_vocab_parallel,
    token_stats_vocab_parallel,
)

VOCAB, DIM, SPLIT = 1001, 12, 437  # rank 0 holds [0, 437), rank 1 [437, 1001): uneven


def _interpreter_works() -> bool:
    """The ranks run the Triton kernels on CPU, in the interpreter: triton >= 3.7 (see
    test_token_stats_triton.py)."""
    if importlib.util.find_spec("triton") is None:
        return False
    from importlib.metadata import version

    return tuple(map(int, version("triton").split(".")[:2])) >= (3, 7)


BACKENDS = ["torch"] + (["triton"] if _interpreter_works() else [])


def _data():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, VOCAB, generator=gen, dtype=torch.float64) * 3
    hidden = torch.randn(3, 5, DIM, generator=gen, dtype=torch.float64)
    weight = torch.randn(VOCAB, DIM, generator=gen, dtype=torch.float64) * 0.5
    bias = torch.randn(VOCAB, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, VOCAB, (3, 5), generator=gen)
    labels[0, :3] = torch.tensor([0, SPLIT - 1, SPLIT])  # both sides of the boundary
    labels[1, 2] = -100
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 4] = False
    g_lp = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    g_h = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    return logits, hidden, weight, bias, labels, mask, g_lp, g_h


def _loss(stats, g_lp, g_h):
    return (stats.logprobs * g_lp).sum() + (stats.entropy * g_h).sum()


def _per_rank(rank, world_size, backends):
    logits, hidden, weight, bias, labels, mask, g_lp, g_h = _data()
    cols = slice(0, SPLIT) if rank == 0 else slice(SPLIT, VOCAB)
    results = {}
    for backend in backends:
        z = logits[..., cols].clone().requires_grad_()
        stats = token_stats_vocab_parallel(
            z, labels, vocab_start=cols.start, mask=mask, temperature=0.8, backend=backend
        )
        _loss(stats, g_lp, g_h).backward()
        results[("logits", backend)] = (tuple(stats), z.grad)
        leaves = [t.clone().requires_grad_() for t in (hidden, weight[cols], bias[cols])]
        stats = token_stats_from_hidden_vocab_parallel(
            leaves[0], leaves[1], labels, vocab_start=cols.start, bias=leaves[2], mask=mask,
            temperature=0.8, chunk_size=4, backend=backend,
        )  # fmt: skip
        _loss(stats, g_lp, g_h).backward()
        results[("hidden", backend)] = (tuple(stats), *(t.grad for t in leaves))
    try:  # both ranks claim to start at 0: refused on every rank (no hang)
        token_stats_vocab_parallel(logits[..., cols], labels, vocab_start=0)
    except ValueError as err:
        results["error"] = str(err)
    return results


def _reference(logits, labels, valid, temperature, g_lp, g_h):
    """float64 statistics from the formulas (PAPER.md section 2) and their autograd loss."""
    safe = torch.where(valid, labels, 0)
    x = logits / temperature
    logp = x - torch.logsumexp(x, dim=-1, keepdim=True)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    logp_k = logp.gather(-1, safe[..., None]).squeeze(-1)
    stats = (
        logp_k,
        entropy,
        logp_k.exp() * (entropy + logp_k),
        (p * p * (entropy[..., None] + logp)).sum(-1),
    )
    stats = tuple(torch.where(valid, t, 0.0) for t in stats)
    return stats, (stats[0] * g_lp).sum() + (stats[1] * g_h).sum()


@pytest.fixture(scope="module")
def ranks():
    return run_in_processes(_per_rank, world_size=2, args=(BACKENDS,), timeout=120)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_split_equals_unsplit(ranks, backend):
    logits, _, _, _, labels, mask, g_lp, g_h = _data()
    valid = mask & (labels != -100)
    exact = logits.clone().requires_grad_()
    want, loss = _reference(exact, labels, valid, 0.8, g_lp, g_h)
    loss.backward()
    (stats0, grad0), (stats1, grad1) = (r[("logits", backend)] for r in ranks)
    for got0, got1, ref in zip(stats0, stats1, want, strict=True):
        torch.testing.assert_close(got0, ref.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got1, ref.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat([grad0, grad1], -1), exact.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hidden_split_equals_unsplit(ranks, backend):
    _, hidden, weight, bias, labels, mask, g_lp, g_h = _data()
    valid = mask & (labels != -100)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    want, loss = _reference(leaves[0] @ leaves[1].T + leaves[2], labels, valid, 0.8, g_lp, g_h)
    loss.backward()
    (stats0, h0, w0, b0), (stats1, h1, w1, b1) = (r[("hidden", backend)] for r in ranks)
    tol = dict(rtol=1e-11, atol=1e-13)
    for got0, got1, ref in zip(stats0, stats1, want, strict=True):
        torch.testing.assert_close(got0, ref.detach(), **tol)
        torch.testing.assert_close(got1, ref.detach(), **tol)
    torch.testing.assert_close(h0, leaves[0].grad, **tol)  # the full gradient on every rank
    torch.testing.assert_close(h1, leaves[0].grad, **tol)
    torch.testing.assert_close(torch.cat([w0, w1]), leaves[1].grad, **tol)
    torch.testing.assert_close(torch.cat([b0, b1]), leaves[2].grad, **tol)


def test_overlapping_slices_are_refused_on_every_rank(ranks):
    for result in ranks:
        assert "must tile [0, V) in rank order" in result["error"]
        assert "[(0, 437), (0, 564)]" in result["error"]


def test_without_a_process_group_it_is_token_stats():
    logits, _, _, _, labels, mask, _, _ = _data()
    got = token_stats_vocab_parallel(logits, labels, vocab_start=0, mask=mask)
    for a, b in zip(got, token_stats(logits, labels, mask=mask), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="tile"):
        token_stats_vocab_parallel(logits, labels, vocab_start=3)
