"""token_stats: values against a hand-computed case and float64 naive references; invariances."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_dynamics.token_stats import TokenStats, discriminator_from_logprobs, token_stats

QWEN_VOCAB = 151936


def reference(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """Float64 naive statistics straight from PAPER.md section 2, plus per-row scales.

    Returns `(logprobs, entropy, S_*, N, scale_S, scale_N)`, each `[...]`; the scales are the
    sums of absolute values of the terms (`p_k (|H| + |log p_k|)`, `sum p_i^2 (|H| + |log p_i|)`).
    """
    z = logits.double() / temperature
    logp = z - torch.logsumexp(z, dim=-1, keepdim=True)  # log_softmax, written out
    p = torch.exp(logp)
    entropy = -(p * logp).sum(-1)
    logp_k = logp.gather(-1, labels[..., None]).squeeze(-1)
    h = entropy[..., None]
    s_star = torch.exp(logp_k) * (entropy + logp_k)
    baseline = (p * p * (h + logp)).sum(-1)
    scale_s = torch.exp(logp_k) * (entropy.abs() + logp_k.abs())
    scale_n = (p * p * (h.abs() + logp.abs())).sum(-1)
    return logp_k, entropy, s_star, baseline, scale_s, scale_n


def assert_matches_reference(stats: TokenStats, ref, *, atol=1e-4, rtol=1e-4):
    """logprobs, entropy within `atol`; S_*, N within `rtol` of their per-row scale.

    Two floors, both below what fp32 can represent: log p_k = (z_k - max z) - log s is two
    fp32 roundings of a number that reaches -2000 at logit scale 300, where fp32's spacing is
    1.2e-4, hence `2^-23 |log p_k|`; and 1e-30 where the scale of S_* or N is below fp32's
    smallest normal number (1.2e-38): at scale 300, N ~ 1e-177, which fp32 stores as 0.
    """
    logp_k, entropy, s_star, baseline, scale_s, scale_n = ref
    error = (stats.logprobs.double() - logp_k).abs()
    assert (error <= atol + 2.0**-23 * logp_k.abs()).all()
    assert (stats.entropy.double() - entropy).abs().max() <= atol
    assert ((stats.discriminator.double() - s_star).abs() <= rtol * scale_s + 1e-30).all()
    assert ((stats.baseline.double() - baseline).abs() <= rtol * scale_n + 1e-30).all()


def test_hand_computed_three_tokens():
    # p = (1/2, 1/4, 1/4) at both positions: log p = (-ln2, -2 ln2, -2 ln2)
    # H = 1/2 ln2 + 2 * 1/4 * 2 ln2 = 1.5 ln2 = 1.0397208
    # label 0: log p_k = -ln2,   S_* = 1/2 (1.5 ln2 - ln2)   =  0.25 ln2  =  0.1732868
    # label 1: log p_k = -2 ln2, S_* = 1/4 (1.5 ln2 - 2 ln2) = -0.125 ln2 = -0.0866434
    # N = 1/4 (1.5 ln2 - ln2) + 2 * 1/16 (1.5 ln2 - 2 ln2) = 0.125 ln2 - 0.0625 ln2
    #   = 0.0625 ln2 = 0.0433217 (the same at both positions: N does not depend on k)
    # the third position is ignored (label -100): every field is exactly 0.
    ln2 = math.log(2.0)
    row = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    logits = row.expand(1, 3, 3).clone()
    labels = torch.tensor([[0, 1, -100]])
    stats = token_stats(logits, labels)
    expected = TokenStats(
        logprobs=torch.tensor([[-ln2, -2 * ln2, 0.0]]),
        entropy=torch.tensor([[1.5 * ln2, 1.5 * ln2, 0.0]]),
        discriminator=torch.tensor([[0.25 * ln2, -0.125 * ln2, 0.0]]),
        baseline=torch.tensor([[0.0625 * ln2, 0.0625 * ln2, 0.0]]),
    )
    for got, want in zip(stats, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # Temperature 2 on doubled logits is the same distribution.
    hot = token_stats(2 * logits, labels, temperature=2.0)
    for got, want in zip(hot, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0, 300.0])
def test_qwen_vocabulary_accuracy_sweep(scale):
    """fp32 at V = 151936, flat (0.1) to extremely peaked (300) logits, vs float64."""
    gen = torch.Generator().manual_seed(int(scale * 10))
    logits = (torch.randn(2, 4, QWEN_VOCAB, generator=gen, dtype=torch.float64) * scale).float()
    labels = torch.randint(0, QWEN_VOCAB, (2, 4), generator=gen)
    labels[0, 0] = logits[0, 0].argmax()  # a likely token too, not only unlikely ones
    stats = token_stats(logits, labels)
    assert all(t.dtype == torch.float32 and t.shape == (2, 4) for t in stats)
    assert_matches_reference(stats, reference(logits, labels))


def test_nearly_one_hot_rows_keep_relative_precision():
    """p_max = 1 - 2e-9: `1 + 2e-9` rounds to 1 in fp32, yet S_* and N stay relatively exact."""
    logits = torch.full((1, 2, 1000), -40.0)
    logits[0, :, 0] = 0.0
    logits[0, :, 1] = -20.0  # p_1 = exp(-20) = 2.1e-9
    labels = torch.tensor([[0, 1]])
    ref = reference(logits, labels)
    stats = token_stats(logits, labels)
    assert_matches_reference(stats, ref, atol=1e-6)
    assert (ref[3] > 1e-8).all()  # N is tiny but not zero, and must be resolved
    torch.testing.assert_close(stats.baseline.double(), ref[3], rtol=1e-4, atol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_matches_float64_reference_with_temperature(temperature):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 257, generator=gen) * 4
    labels = torch.randint(0, 257, (3, 5), generator=gen)
    stats = token_stats(logits, labels, temperature=temperature)
    assert_matches_reference(stats, reference(logits, labels, temperature), atol=1e-5)


def test_float64_in_float64_out():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 50, generator=gen, dtype=torch.float64) * 5
    labels = torch.randint(0, 50, (2, 3), generator=gen)
    stats = token_stats(logits, labels)
    assert all(t.dtype == torch.float64 for t in stats)
    assert_matches_reference(stats, reference(logits, labels), atol=1e-12, rtol=1e-10)


def test_chunk_size_does_not_change_results():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, 333, generator=gen) * 5
    labels = torch.randint(0, 333, (3, 7), generator=gen)
    labels[1, 2] = -100
    whole = token_stats(logits, labels, chunk_size=1000)
    for chunk in (1, 2, 5, None):
        for got, want in zip(token_stats(logits, labels, chunk_size=chunk), whole, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input(dtype):
    """Upcasting per chunk loses nothing: exact on the rounded logits, close to the fp32 ones."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 6, 4099, generator=gen) * 3
    labels = torch.randint(0, 4099, (2, 6), generator=gen)
    low = logits.to(dtype)
    stats = token_stats(low, labels)
    assert all(t.dtype == torch.float32 for t in stats)
    assert_matches_reference(stats, reference(low, labels))
    # Against the unrounded fp32 logits the difference is the input rounding `d = low - logits`
    # itself, bounded to first order by |d log p_k| <= |d_k| + sum_j p_j |d_j| and
    # |dH| <= sum_j |S_j| |d_j| (dH = -sum_j S_j dz_j, S_j = p_j (H + log p_j)).
    full = token_stats(logits, labels)
    d = (low.double() - logits.double()).abs()
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp.exp()
    s_all = p * (-(p * logp).sum(-1, keepdim=True) + logp)
    bound_logp = d.gather(-1, labels[..., None])[..., 0] + (p * d).sum(-1)
    bound_h = (s_all.abs() * d).sum(-1)
    assert ((stats.logprobs - full.logprobs).abs() <= 1.1 * bound_logp + 1e-4).all()
    assert ((stats.entropy - full.entropy).abs() <= 1.1 * bound_h + 1e-4).all()
    assert (bound_h > 1e-3).any()  # the rounding is visible: this is not a vacuous check


def test_masked_equals_sliced_and_ignored_positions_are_zero():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 8, 97, generator=gen) * 2
    labels = torch.randint(0, 97, (3, 8), generator=gen)
    lengths = [8, 5, 1]
    mask = torch.arange(8)[None, :] < torch.tensor(lengths)[:, None]
    # Ignored positions may hold anything: garbage labels and non-finite logits are never read.
    labels[~mask] = 10**6
    logits[~mask] = float("nan")
    labels[0, 3] = -100  # ignore_index inside a sequence
    stats = token_stats(logits, labels, mask=mask)
    counted = mask & (labels != -100)
    for field in stats:
        assert torch.isfinite(field).all()
        assert (field[~counted] == 0).all()
    for b, length in enumerate(lengths):
        sliced_labels = labels[b : b + 1, :length].clone()
        single = token_stats(logits[b : b + 1, :length], sliced_labels)
        for got, want in zip(stats, single, strict=True):
            torch.testing.assert_close(got[b : b + 1, :length], want, rtol=0, atol=0)


def test_integer_mask_and_all_ignored():
    logits = torch.randn(2, 3, 11)
    labels = torch.randint(0, 11, (2, 3))
    as_bool = token_stats(logits, labels, mask=torch.tensor([[1, 0, 1], [0, 0, 1]]) == 1)
    as_int = token_stats(logits, labels, mask=torch.tensor([[1, 0, 1], [0, 0, 1]]))
    for a, b in zip(as_bool, as_int, strict=True):
        assert torch.equal(a, b)
    nothing = token_stats(logits, torch.full((2, 3), -100))
    assert all(torch.equal(t, torch.zeros(2, 3)) for t in nothing)


def test_sliced_logits_view_and_any_leading_dims():
    """`logits[:, :-1]` (not flattenable as a view) and 2-D / 4-D inputs give the same values."""
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 6, 40, generator=gen)
    labels = torch.randint(0, 40, (3, 5), generator=gen)
    view = token_stats(logits[:, :-1], labels)
    copy = token_stats(logits[:, :-1].contiguous(), labels)
    for a, b in zip(view, copy, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    flat = token_stats(logits[:, :-1].reshape(15, 40), labels.reshape(15))
    deep = token_stats(logits[:, :-1].reshape(3, 5, 1, 40), labels.reshape(3, 5, 1))
    for a, b, c in zip(copy, flat, deep, strict=True):
        torch.testing.assert_close(a.reshape(15), b, rtol=0, atol=0)
        torch.testing.assert_close(a.reshape(3, 5, 1), c, rtol=0, atol=0)


def test_baseline_is_the_on_policy_mean_of_the_discriminator():
    """N = sum_k p_k S_k, so sum_k p_k (S_k - N) = 0 (Cor. 3.4), with every k as the label."""
    gen = torch.Generator().manual_seed(7)
    vocab = 64
    logits = (torch.randn(vocab, generator=gen) * 3).expand(1, vocab, vocab).contiguous()
    stats = token_stats(logits, torch.arange(vocab)[None])  # position k has label k
    p = torch.softmax(logits[0, 0].double(), dim=-1)
    s_all, n = stats.discriminator[0].double(), stats.baseline[0].double()
    assert abs(float((p * (s_all - n)).sum())) < 1e-6
    torch.testing.assert_close(stats.logprobs[0].double().exp(), p, rtol=1e-5, atol=1e-9)


def test_agrees_with_theory_module():
    """An independent implementation: theory.entropy / discriminator / vocab_baseline."""
    theory = pytest.importorskip("entropy_dynamics.theory")
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 4, 300, generator=gen) * 4
    labels = torch.randint(0, 300, (2, 4), generator=gen)
    stats = token_stats(logits, labels, temperature=0.8)
    z = logits / 0.8
    s_all = theory.discriminator(z)
    torch.testing.assert_close(stats.entropy, theory.entropy(z), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.baseline, theory.vocab_baseline(z), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(
        stats.discriminator, s_all.gather(-1, labels[..., None])[..., 0], rtol=1e-4, atol=1e-7
    )


def test_discriminator_from_logprobs_matches_token_stats():
    # Engines that only hand over log p_k and H (verl) get the same S_* as the full pass.
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, 40, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 40, (2, 5), generator=g)
    stats = token_stats(logits, labels)
    from_logprobs = discriminator_from_logprobs(stats.logprobs, stats.entropy)
    torch.testing.assert_close(from_logprobs, stats.discriminator, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="logprobs shape"):
        discriminator_from_logprobs(stats.logprobs, stats.entropy[:, :3])
