"""Clamped entropy (AEnt) against float64 loops written from the authors' rule."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_dynamics import clamped_entropy, clamped_entropy_from_hidden


def _reference(logits: torch.Tensor, clamp_p: float, temperature: float = 1.0) -> torch.Tensor:
    """AEnt's ``clamped_softmax_entropy``, one position at a time in float64: the
    ``int(V * clamp_p)`` smallest logits set to -inf, softmax, ``-sum q log q`` over the rest."""
    B, T, V = logits.shape
    k = int(V * clamp_p)
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            z = [float(v) / temperature for v in logits[b, t].double()]
            kept = sorted(z)[k:]
            top = max(kept)
            total = sum(math.exp(v - top) for v in kept)
            q = [math.exp(v - top) / total for v in kept]
            out[b, t] = -sum(p * math.log(p) for p in q if p > 0)
    return out


def test_hand_case_cuts_the_lowest_logit():
    logits = torch.tensor([[[0.0, 0.0, -5.0]]])
    assert clamped_entropy(logits, clamp_p=0.34).item() == pytest.approx(math.log(2), abs=1e-6)
    # clamp_p = 0 is the ordinary entropy
    p = torch.softmax(logits.double(), -1)
    plain = -(p * p.log()).sum().item()
    assert clamped_entropy(logits, clamp_p=0.0).item() == pytest.approx(plain, abs=1e-6)


@pytest.mark.parametrize("clamp_p", [0.0, 0.2, 0.3, 0.9])
def test_matches_the_float64_reference(clamp_p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 37, generator=g, dtype=torch.float64) * 3
    expected = _reference(logits, clamp_p, temperature=0.7)
    got64 = clamped_entropy(logits, clamp_p=clamp_p, temperature=0.7)
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64, expected, rtol=0, atol=1e-12)
    got32 = clamped_entropy(logits.float(), clamp_p=clamp_p, temperature=0.7)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected, rtol=0, atol=2e-5)


def test_ties_at_the_cut_do_not_matter():
    logits = torch.tensor([[[1.0, 0.0, 0.0, 0.0, 2.0]]], dtype=torch.float64)  # cut 2 of 3 zeros
    expected = _reference(logits, 0.4)
    torch.testing.assert_close(clamped_entropy(logits, clamp_p=0.4), expected, rtol=0, atol=1e-12)


def test_masked_chunked_and_from_hidden_agree():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 6, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(50, 8, generator=g, dtype=torch.float64)
    bias = torch.randn(50, generator=g, dtype=torch.float64)
    logits = hidden @ weight.T + bias
    mask = torch.rand(4, 6, generator=g) > 0.3
    whole = clamped_entropy(logits, clamp_p=0.3, mask=mask)
    assert (whole[~mask] == 0).all()
    torch.testing.assert_close(whole[mask], _reference(logits, 0.3)[mask], rtol=0, atol=1e-12)
    for chunk in (1, 3, 100):
        torch.testing.assert_close(
            clamped_entropy(logits, clamp_p=0.3, mask=mask, chunk_size=chunk), whole,
            rtol=0, atol=1e-13,
        )  # fmt: skip
        from_hidden = clamped_entropy_from_hidden(
            hidden, weight, bias=bias, clamp_p=0.3, mask=mask, chunk_size=chunk
        )
        torch.testing.assert_close(from_hidden, whole, rtol=0, atol=1e-12)
    # masked == sliced: a row's values do not depend on the other rows
    torch.testing.assert_close(clamped_entropy(logits[1:2], clamp_p=0.3, mask=mask[1:2]),
                               whole[1:2], rtol=0, atol=1e-13)  # fmt: skip


def test_gradient_flows_through_the_kept_logits_only():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 11, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert torch.autograd.gradcheck(
        lambda z: clamped_entropy(z, clamp_p=0.3, mask=mask, chunk_size=2), (logits,)
    )
    clamped_entropy(logits, clamp_p=0.3, mask=mask).sum().backward()
    cut = int(11 * 0.3)
    lowest = logits.detach().argsort(-1)[..., :cut]
    assert (logits.grad.gather(-1, lowest) == 0).all()  # the cut logits get no gradient
    assert (logits.grad[~mask] == 0).all()
    assert logits.grad[mask].abs().sum() > 0
    hidden = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h, w: clamped_entropy_from_hidden(h, w, clamp_p=0.3, mask=mask, chunk_size=1),
        (hidden, weight),
    )


def test_bad_arguments_are_refused():
    logits = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="clamp_p"):
        clamped_entropy(logits, clamp_p=1.0)
    with pytest.raises(ValueError, match="temperature"):
        clamped_entropy(logits, temperature=0.0)
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        clamped_entropy(logits[0])
    with pytest.raises(ValueError, match="mask"):
        clamped_entropy(logits, mask=torch.ones(1, 2))
