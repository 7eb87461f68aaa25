"""token_stats and token_stats_from_hidden reject bad input with a ValueError that names it."""

from __future__ import annotations

import pytest
import torch

from entropy_dynamics.token_stats import token_stats, token_stats_from_hidden

B, T, V, D = 2, 3, 7, 4


def good():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(B, T, V, generator=gen), torch.randint(0, V, (B, T), generator=gen)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda z, y: (z, y.clone().fill_(V)), r"labels .*\[0, 7\)"),
        (lambda z, y: (z, y.clone().fill_(-1)), r"labels .*\[0, 7\)"),
        (lambda z, y: (z, y[:, :2]), r"labels shape"),
        (lambda z, y: (z, y.float()), r"labels must be an integer"),
        (lambda z, y: (z, y.bool()), r"labels must be an integer"),
        (lambda z, y: (z.long(), y), r"logits must be float16, bfloat16, float32 or float64"),
        (lambda z, y: (z[0, 0], y[0, 0]), r"logits must have shape \[B, T, V\]"),
        (lambda z, y: (z[..., :0], y), r"logits must have shape"),
        (lambda z, y: (z.tolist(), y), r"logits must be a torch.Tensor"),
    ],
)
def test_bad_logits_or_labels(change, match):
    logits, labels = change(*good())
    with pytest.raises(ValueError, match=match):
        token_stats(logits, labels)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_at_a_counted_position(bad):
    logits, labels = good()
    logits[1, 2, 5] = bad
    with pytest.raises(ValueError, match=r"logits: 1 counted position.*flattened position 5"):
        token_stats(logits, labels)
    # The same value at an ignored position is never read.
    labels[1, 2] = -100
    assert torch.isfinite(token_stats(logits, labels).entropy).all()


def test_non_finite_hidden_states():
    hidden, weight = torch.randn(B, T, D), torch.randn(V, D)
    hidden[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite logits.*flattened position 1"):
        token_stats_from_hidden(hidden, weight, good()[1])


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), "1", True])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0"):
        token_stats(*good(), temperature=temperature)
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0"):
        token_stats_from_hidden(
            torch.randn(B, T, D), torch.randn(V, D), good()[1], temperature=temperature
        )


@pytest.mark.parametrize("chunk_size", [0, -3, 2.0, True])
def test_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int"):
        token_stats(*good(), chunk_size=chunk_size)
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int"):
        token_stats_from_hidden(
            torch.randn(B, T, D), torch.randn(V, D), good()[1], chunk_size=chunk_size
        )


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (torch.ones(B, T), r"mask must be a bool"),
        (torch.ones(B, T + 1, dtype=torch.bool), r"mask must have shape \(2, 3\)"),
        ([[True] * T] * B, r"mask must be a bool"),
    ],
)
def test_bad_mask(mask, match):
    with pytest.raises(ValueError, match=match):
        token_stats(*good(), mask=mask)


def test_bad_ignore_index():
    with pytest.raises(ValueError, match=r"ignore_index must be an int"):
        token_stats(*good(), ignore_index=-100.0)


def test_out_of_range_label_is_fine_where_ignored():
    logits, labels = good()
    labels[0, 0] = 10**9
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 0] = False
    assert token_stats(logits, labels, mask=mask).logprobs[0, 0] == 0
    with pytest.raises(ValueError, match=r"labels at counted positions must lie in \[0, V\)"):
        token_stats(logits, labels)


@pytest.mark.parametrize(
    ("hidden", "weight", "bias", "match"),
    [
        (torch.randn(B, T, D), torch.randn(V, D + 1), None, r"weight must have shape \[V, D\]"),
        (torch.randn(B, T, D), torch.randn(V, D, 1), None, r"weight must have shape \[V, D\]"),
        (torch.randn(B, T, D), torch.randn(V, D).double(), None, r"weight .* must have the dtype"),
        (torch.randn(B, T, D), torch.randn(V, D), torch.randn(V + 1), r"bias must have shape"),
        (torch.randn(B, T, D), torch.randn(V, D), torch.randn(V).half(), r"bias .* must have"),
        (torch.randn(B, T, D).long(), torch.randn(V, D), None, r"hidden must be float16"),
        (torch.randn(B, T + 1, D), torch.randn(V, D), None, r"labels shape"),
    ],
)
def test_bad_hidden_weight_bias(hidden, weight, bias, match):
    with pytest.raises(ValueError, match=match):
        token_stats_from_hidden(hidden, weight, good()[1], bias=bias)


def test_label_out_of_range_of_weight_rows():
    labels = good()[1]
    labels[1, 1] = V
    with pytest.raises(ValueError, match=r"\[0, V\) = \[0, 7\)"):
        token_stats_from_hidden(torch.randn(B, T, D), torch.randn(V, D), labels)
