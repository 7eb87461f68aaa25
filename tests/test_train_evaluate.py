"""Held-out metrics: unbiased pass@k against the combinatorial definition, avg@k, histogram."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from _train_fixtures import DigitTask
from entropy_dynamics.train.evaluate import avg_at_k, evaluate, ks_up_to, pass_at_k, summarise


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> Fraction:
    """P(at least one correct among k of n drawn without replacement), by listing subsets."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


def test_pass_at_k_hand_computed():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=5, c=2, k=3: 1 - C(3,3)/C(5,3) = 1 - 1/10 = 0.9
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = _pass_at_k_by_enumeration(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(float(expected), abs=1e-12)


def test_pass_at_k_large_n_matches_exact_binomials():
    n, c, k = 200, 7, 32
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_invalid_counts_raise():
    with pytest.raises(ValueError, match="k=9"):
        pass_at_k(8, 1, 9)
    with pytest.raises(ValueError, match="c=9"):
        pass_at_k(8, 9, 1)
    with pytest.raises(ValueError, match="n=0"):
        avg_at_k(0, 0)


def test_summarise():
    # three problems, n=4 samples: 0, 1 and 4 correct
    out = summarise([0, 1, 4], 4)
    assert ks_up_to(4) == [1, 2, 4] and ks_up_to(6) == [1, 2, 4, 6]
    assert out["avg@k"]["4"] == pytest.approx((0 + 0.25 + 1) / 3)
    # pass@2 per problem: 0, 1 - C(3,2)/C(4,2) = 0.5, 1
    assert out["pass@k"]["2"] == pytest.approx((0 + 0.5 + 1) / 3)
    assert out["pass_rate_hist"] == [1, 1, 0, 0, 1]
    assert out["num_prompts"] == 3 and out["k"] == 4


def test_evaluate_end_to_end_counts_correct_samples():
    from entropy_dynamics.models import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    task = DigitTask()
    problems = task.problems("test", 3)

    def all_digits(problem, completion):  # correct iff the completion is all digits
        return 1.0 if completion and completion.isdigit() else 0.0

    result = evaluate(model, tokenizer, task, problems, n=4, max_new_tokens=3, reward_fn=all_digits)
    assert sum(result["pass_rate_hist"]) == 3 and len(result["pass_rate_hist"]) == 5
    mean_correct = sum(c * h for c, h in enumerate(result["pass_rate_hist"])) / (3 * 4)
    assert result["avg@k"]["4"] == pytest.approx(mean_correct)
    assert 0.0 <= result["greedy_acc"] <= 1.0
