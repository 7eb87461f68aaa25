"""token_stats gradients (both paths) and token_stats_from_hidden values, against autograd references."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from entropy_dynamics.token_stats import token_stats, token_stats_from_hidden


def naive_logp_entropy(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """log p_k and H through plain autograd ops (labels must be valid everywhere)."""
    logp = torch.log_softmax(logits / temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, labels[..., None]).squeeze(-1), entropy


def weighted_loss(stats, g_lp: torch.Tensor, g_h: torch.Tensor) -> torch.Tensor:
    return (stats[0] * g_lp).sum() + (stats[1] * g_h).sum()


def test_gradcheck_logits_path():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 9, generator=gen, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, 9, (2, 4), generator=gen)
    labels[0, 1] = -100
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 3] = False
    for temperature in (1.0, 0.7):

        def fn(z, temperature=temperature):
            stats = token_stats(z, labels, temperature=temperature, chunk_size=3, mask=mask)
            return stats.logprobs, stats.entropy

        assert gradcheck(fn, (logits,), eps=1e-6, atol=1e-7)


def test_gradcheck_from_hidden_path_with_bias_and_temperature():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64).requires_grad_()
    weight = torch.randn(11, 4, generator=gen, dtype=torch.float64).requires_grad_()
    bias = torch.randn(11, generator=gen, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, 11, (2, 5), generator=gen)
    labels[1, 0] = -100

    def fn(h, w, b):
        stats = token_stats_from_hidden(h, w, labels, bias=b, temperature=1.3, chunk_size=3)
        return stats.logprobs, stats.entropy

    assert gradcheck(fn, (hidden, weight, bias), eps=1e-6, atol=1e-7)

    def no_bias(h, w):
        stats = token_stats_from_hidden(h, w, labels, chunk_size=4)
        return stats.logprobs, stats.entropy

    assert gradcheck(no_bias, (hidden, weight), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_logits_grad_equals_autograd_through_naive_formula(temperature):
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(3, 6, 1000, generator=gen) * 4).requires_grad_()
    labels = torch.randint(0, 1000, (3, 6), generator=gen)
    g_lp, g_h = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    weighted_loss(token_stats(logits, labels, temperature=temperature), g_lp, g_h).backward()
    ours, logits.grad = logits.grad, None
    weighted_loss(naive_logp_entropy(logits, labels, temperature), g_lp, g_h).backward()
    torch.testing.assert_close(ours, logits.grad, rtol=1e-4, atol=1e-6)


def test_bf16_logits_get_a_bf16_gradient_close_to_fp32():
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 3, 500, generator=gen) * 3).bfloat16().requires_grad_()
    labels = torch.randint(0, 500, (2, 3), generator=gen)
    stats = token_stats(logits, labels)
    (stats.logprobs.sum() + stats.entropy.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16
    exact = logits.detach().float().requires_grad_()
    logp, entropy = naive_logp_entropy(exact, labels)
    (logp.sum() + entropy.sum()).backward()
    # Only the final rounding of the gradient to bf16 (8 bits) differs.
    torch.testing.assert_close(logits.grad.float(), exact.grad, rtol=1e-2, atol=1e-4)


def test_ignored_positions_get_exactly_zero_gradient():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 30, generator=gen).requires_grad_()
    labels = torch.randint(0, 30, (2, 5), generator=gen)
    labels[0, 2] = -100
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)
    stats = token_stats(logits, labels, mask=mask)
    (stats.logprobs.sum() + stats.entropy.sum()).backward()
    ignored = ~mask | (labels == -100)
    assert (logits.grad[ignored] == 0).all()
    assert (logits.grad[~ignored].abs().sum(-1) > 0).all()
    assert not stats.discriminator.requires_grad and not stats.baseline.requires_grad


def test_entropy_gradient_is_minus_the_discriminator():
    """S_j = -dH/dz_j (PAPER.md section 2), with S_j read off token_stats for every label j."""
    gen = torch.Generator().manual_seed(5)
    vocab = 40
    row = torch.randn(vocab, generator=gen, dtype=torch.float64) * 2
    logits = row.expand(1, 1, vocab).clone().requires_grad_()
    token_stats(logits, torch.zeros(1, 1, dtype=torch.long)).entropy.sum().backward()
    every_label = token_stats(row.expand(1, vocab, vocab), torch.arange(vocab)[None])
    torch.testing.assert_close(
        -logits.grad[0, 0], every_label.discriminator[0], rtol=1e-9, atol=1e-12
    )


def test_from_hidden_equals_logits_path():
    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(3, 7, 16, generator=gen)
    weight = torch.randn(301, 16, generator=gen) * 0.5
    bias = torch.randn(301, generator=gen)
    labels = torch.randint(0, 301, (3, 7), generator=gen)
    mask = torch.rand(3, 7, generator=gen) > 0.3
    labels[~mask] = -100
    want = token_stats(hidden @ weight.T + bias, labels, temperature=0.9)
    for chunk in (1, 4, None):
        got = token_stats_from_hidden(
            hidden, weight, labels, bias=bias, temperature=0.9, chunk_size=chunk
        )
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            assert (a[~mask] == 0).all()


def test_from_hidden_grads_equal_autograd_through_naive_formula():
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 6, 12, generator=gen).requires_grad_()
    weight = (torch.randn(257, 12, generator=gen) * 0.7).requires_grad_()
    bias = torch.randn(257, generator=gen).requires_grad_()
    labels = torch.randint(0, 257, (2, 6), generator=gen)
    g_lp, g_h = torch.randn(2, 6, generator=gen), torch.randn(2, 6, generator=gen)
    stats = token_stats_from_hidden(
        hidden, weight, labels, bias=bias, temperature=1.4, chunk_size=5
    )
    weighted_loss(stats, g_lp, g_h).backward()
    ours = [t.grad for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    naive = naive_logp_entropy(hidden @ weight.T + bias, labels, 1.4)
    weighted_loss(naive, g_lp, g_h).backward()
    for got, t in zip(ours, (hidden, weight, bias), strict=True):
        torch.testing.assert_close(got, t.grad, rtol=1e-4, atol=1e-5)


def test_from_hidden_frozen_weight_and_ignored_rows():
    """Only `hidden` needs a gradient (frozen lm_head); ignored rows get exactly zero."""
    gen = torch.Generator().manual_seed(8)
    hidden = torch.randn(2, 4, 8, generator=gen).requires_grad_()
    weight = torch.randn(50, 8, generator=gen)
    labels = torch.randint(0, 50, (2, 4), generator=gen)
    labels[1, 1:] = -100
    stats = token_stats_from_hidden(hidden, weight, labels)
    (stats.logprobs.sum() + stats.entropy.sum()).backward()
    assert weight.grad is None
    assert (hidden.grad[1, 1:] == 0).all() and (hidden.grad[0].abs().sum(-1) > 0).all()


def test_from_hidden_bf16_weights():
    gen = torch.Generator().manual_seed(9)
    hidden = torch.randn(2, 3, 16, generator=gen).bfloat16().requires_grad_()
    weight = torch.randn(100, 16, generator=gen).bfloat16().requires_grad_()
    labels = torch.randint(0, 100, (2, 3), generator=gen)
    stats = token_stats_from_hidden(hidden, weight, labels)
    assert all(t.dtype == torch.float32 for t in stats)
    want = token_stats(hidden.detach() @ weight.detach().T, labels)
    for a, b in zip(stats, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    (stats.logprobs.sum() + stats.entropy.sum()).backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    assert torch.isfinite(weight.grad.float()).all() and weight.grad.abs().sum() > 0


def test_gradient_through_a_sliced_view():
    """`logits[:, :-1]` (the usual next-token shift) is read in place; its gradient is right."""
    gen = torch.Generator().manual_seed(10)
    full = torch.randn(2, 5, 33, generator=gen).requires_grad_()
    labels = torch.randint(0, 33, (2, 4), generator=gen)
    stats = token_stats(full[:, :-1], labels, chunk_size=3)
    (stats.logprobs.sum() + stats.entropy.sum()).backward()
    ours, full.grad = full.grad, None
    logp, entropy = naive_logp_entropy(full[:, :-1], labels)
    (logp.sum() + entropy.sum()).backward()
    torch.testing.assert_close(ours, full.grad, rtol=1e-5, atol=1e-6)
    assert (ours[:, -1] == 0).all()


def test_worker_threads_match_one_thread():
    """With several torch threads the eager CPU pass splits chunks among worker threads: same
    values, same gradients, and torch's thread count is restored afterwards (the compiled
    chunks parallelise inside each kernel instead: test_token_stats_compiled.py)."""
    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(2, 16, 70_000, generator=gen) * 3).requires_grad_()  # 2.2 M logits
    labels = torch.randint(0, 70_000, (2, 16), generator=gen)
    labels[1, 3] = -100
    before = torch.get_num_threads()
    results = []
    for threads in (1, 3):
        torch.set_num_threads(threads)
        try:
            stats = token_stats(logits, labels, chunk_size=1, temperature=0.9, backend="torch")
            (stats.logprobs.sum() + stats.entropy.sum()).backward()
            assert torch.get_num_threads() == threads
        finally:
            torch.set_num_threads(before)
        results.append((stats, logits.grad))
        logits.grad = None
    (one, grad_one), (many, grad_many) = results
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(grad_one, grad_many)
