"""Tests for advantages.py: hand values, a float64 loop reference per estimator, the registry."""

from __future__ import annotations

import doctest
import statistics

import pytest
import torch

from entropy_dynamics import advantages as A


def _reference(name: str, rewards: list[float], G: int, eps: float = 1e-6) -> list[float]:
    """Per-response loop over groups, written from the estimators' definitions."""
    out = []
    for start in range(0, len(rewards), G):
        group = rewards[start : start + G]
        for i, r in enumerate(group):
            others = group[:i] + group[i + 1 :]
            if G == 1:
                out.append(0.0)
            elif name == "grpo":
                out.append((r - statistics.fmean(group)) / (statistics.stdev(group) + eps))
            elif name == "dr_grpo":
                out.append(r - statistics.fmean(group))
            else:  # rloo
                out.append(r - statistics.fmean(others))
    return out


def test_registry_names_and_lookup():
    assert A.names() == ("dr_grpo", "grpo", "qae", "rloo", "w_reinforce")
    assert A.get("grpo") is A.grpo_advantages
    assert A.get("dr_grpo") is A.dr_grpo_advantages
    assert A.get("rloo") is A.rloo_advantages


def test_unknown_name_lists_valid_ones():
    with pytest.raises(
        ValueError,
        match="unknown advantage estimator 'gpro'; valid names: dr_grpo, grpo, qae, rloo",
    ):
        A.get("gpro")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        A.register("grpo")(lambda rewards, group_size: rewards)
    assert A.get("grpo") is A.grpo_advantages


def test_grpo_hand_values():
    # group 1: [1, 0, 0, 0]: mean 0.25, unbiased var (0.5625 + 3 * 0.0625) / 3 = 0.25, std 0.5
    #   -> [0.75, -0.25, -0.25, -0.25] / 0.500001
    # group 2: [2, 2, 2, 2]: centred 0, std 0 -> 0 / 1e-6 = 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    got = A.grpo_advantages(rewards, 4)
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0], dtype=torch.float64) / 0.500001
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), rtol=1e-7, atol=0)


def test_grpo_eps_sits_on_the_std():
    # G = 2, rewards [1, 0]: unbiased std sqrt(0.5); eps = 0.5 -> A = 0.5 / (sqrt(0.5) + 0.5)
    got = A.grpo_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2, eps=0.5)
    value = 0.5 / (0.5**0.5 + 0.5)
    torch.testing.assert_close(got, torch.tensor([value, -value], dtype=torch.float64))


def test_dr_grpo_and_rloo_hand_values():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0])
    # dr_grpo G=2: groups [1,0] [0,0] [3,1] -> [0.5,-0.5, 0,0, 1,-1]
    torch.testing.assert_close(
        A.dr_grpo_advantages(rewards, 2), torch.tensor([0.5, -0.5, 0.0, 0.0, 1.0, -1.0])
    )
    # rloo G=3: group [1,0,0]: 1 - 0 = 1, 0 - (1+0)/2 = -0.5 (twice)
    #           group [0,3,1]: 0 - 2 = -2, 3 - 0.5 = 2.5, 1 - 1.5 = -0.5
    torch.testing.assert_close(
        A.rloo_advantages(rewards, 3), torch.tensor([1.0, -0.5, -0.5, -2.0, 2.5, -0.5])
    )


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("G", [1, 2, 3, 8])
def test_estimators_match_loop_reference(name, G):
    gen = torch.Generator().manual_seed(G)
    rewards = torch.randn(4 * G, generator=gen, dtype=torch.float64)
    rewards[:G] = (rewards[:G] > 0).double()  # a binary group, as with verifier rewards
    got = A.get(name)(rewards, G)
    expected = torch.tensor(_reference(name, rewards.tolist(), G), dtype=torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_group_of_one_gets_zero(name):
    assert A.get(name)(torch.tensor([5.0, -2.0, 0.0]), 1).tolist() == [0.0, 0.0, 0.0]


def test_rloo_is_a_rescaled_dr_grpo():
    # R_i - mean_{j!=i} R_j = G / (G - 1) * (R_i - mean_g R)
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(
        A.rloo_advantages(rewards, 4), A.dr_grpo_advantages(rewards, 4) * 4 / 3
    )


def test_integer_and_bool_rewards_give_fp32():
    got = A.dr_grpo_advantages(torch.tensor([1, 0, True, False]) == 1, 2)
    assert got.dtype == torch.float32 and got.tolist() == [0.5, -0.5, 0.5, -0.5]
    assert A.rloo_advantages(torch.tensor([2, 0]), 2).tolist() == [2.0, -2.0]


def test_empty_batch():
    assert A.grpo_advantages(torch.zeros(0), 4).shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rewards": torch.zeros(6), "group_size": 4}, "multiple of group_size"),
        ({"rewards": torch.zeros(4), "group_size": 0}, "group_size must be an int >= 1"),
        ({"rewards": torch.zeros(4), "group_size": 2.0}, "group_size must be an int >= 1"),
        ({"rewards": torch.zeros(2, 2), "group_size": 2}, r"1-D tensor \[B\], got \(2, 2\)"),
        ({"rewards": [1.0, 0.0], "group_size": 2}, "1-D tensor"),
        ({"rewards": torch.tensor([1.0, float("nan")]), "group_size": 2}, "finite"),
        ({"rewards": torch.tensor([1.0, float("inf")]), "group_size": 2}, "finite"),
        ({"rewards": torch.zeros(2), "group_size": 2, "eps": 0.0}, "eps must be"),
        ({"rewards": torch.zeros(2), "group_size": 2, "eps": -1e-6}, "eps must be"),
    ],
)
def test_bad_input_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        A.grpo_advantages(**kwargs)


def test_broadcast_to_tokens():
    advantages = torch.tensor([1.5, -2.0], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    got = A.broadcast_to_tokens(advantages, mask)
    assert got.dtype == torch.float64
    assert got.tolist() == [[1.5, 1.5, 0.0], [0.0, -2.0, -2.0]]
    assert A.broadcast_to_tokens(advantages.half(), mask).dtype == torch.float32
    with pytest.raises(ValueError, match="same B"):
        A.broadcast_to_tokens(advantages, mask[:1])
    with pytest.raises(ValueError, match="bool tensor"):
        A.broadcast_to_tokens(advantages, mask.float())


def test_docstring_examples_run():
    assert doctest.testmod(A, raise_on_error=False).failed == 0
