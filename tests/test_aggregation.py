"""Tests for aggregation.py: hand values, a float64 loop reference, micro-batched == whole batch
(loss and gradient, every mode), padding invariance, all-masked batches, 2 ranks."""

from __future__ import annotations

import pytest
import torch

from _dist_util import run_in_processes
from entropy_dynamics.aggregation import MODES, aggregate, normalisers

MAX_LEN = 6


def _reference(loss: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int = MAX_LEN):
    """Python loops in float64, written from the definitions of the modes."""
    tokens, seq_values = 0, []
    for row_loss, row_mask in zip(loss.double().tolist(), mask.tolist(), strict=True):
        valid = [value for value, keep in zip(row_loss, row_mask, strict=True) if keep]
        tokens += len(valid)
        if not valid:
            continue  # a row without valid token is not a sequence of the objective
        if mode == "seq-mean-token-mean":
            seq_values.append(sum(valid) / len(valid))
        elif mode == "seq-mean-token-sum":
            seq_values.append(sum(valid))
        elif mode == "seq-mean-token-sum-norm":
            seq_values.append(sum(valid) / max_len)
        else:
            seq_values.extend(valid)
    if mode == "token-mean":
        return sum(seq_values) / tokens if tokens else 0.0
    return sum(seq_values) / len(seq_values) if seq_values else 0.0


def _batch(seed: int = 0, B: int = 8, T: int = MAX_LEN):
    gen = torch.Generator().manual_seed(seed)
    params = torch.randn(B, T, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    mask = torch.arange(T)[None, :] < lengths[:, None]  # right-padded responses
    mask[2] = False  # one row with no valid token (e.g. every token dropped by a filter)
    mask[5, 0] = False  # a hole inside a response (a dropped token)
    return params, mask


def _per_token_loss(params: torch.Tensor) -> torch.Tensor:
    """A nonlinear per-token loss of the parameters, so gradients differ per position."""
    return params**2 * 0.5 - torch.sin(params)


def test_hand_values_from_the_docstring():
    loss = torch.tensor([[1.0, 2.0, 9.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    expected = {
        "token-mean": (1 + 2 + 4) / 3,
        "seq-mean-token-mean": ((1 + 2) / 2 + 4 / 1) / 2,  # 2.75
        "seq-mean-token-sum": ((1 + 2) + 4) / 2,  # 3.5
        "seq-mean-token-sum-norm": ((1 + 2) / 4 + 4 / 4) / 2,  # 0.875
    }
    for mode, value in expected.items():
        got = aggregate(loss, mask, mode, max_len=4)
        assert got.dtype == torch.float32 and got.dim() == 0
        torch.testing.assert_close(got, torch.tensor(value), msg=mode)


@pytest.mark.parametrize("mode", MODES)
def test_matches_loop_reference(mode):
    params, mask = _batch(seed=1)
    loss = _per_token_loss(params)
    got = aggregate(loss, mask, mode, max_len=MAX_LEN)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.item(), _reference(loss, mask, mode), rtol=1e-12, atol=0)


def _loss_and_grad(params, mask, mode, splits, **global_counts):
    params = params.clone().requires_grad_(True)
    total = 0.0
    for rows in torch.split(torch.arange(params.shape[0]), splits):
        part = aggregate(
            _per_token_loss(params[rows]), mask[rows], mode, max_len=MAX_LEN, **global_counts
        )
        part.backward()  # gradient accumulation, one backward per micro-batch
        total = total + part.detach()
    return total, params.grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("splits", [[1] * 8, [4, 4], [3, 5], [2, 1, 5]])
def test_micro_batches_with_global_counts_equal_the_whole_batch(mode, splits):
    params, mask = _batch(seed=2)
    whole_loss, whole_grad = _loss_and_grad(params, mask, mode, [8])
    counts = normalisers(mask)
    assert counts["num_tokens"].item() == mask.sum().item() and counts["num_seqs"].item() == 7
    micro_loss, micro_grad = _loss_and_grad(params, mask, mode, splits, **counts)
    torch.testing.assert_close(micro_loss, whole_loss, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(micro_grad, whole_grad, rtol=1e-12, atol=1e-15)
    assert whole_grad[~mask].abs().max() == 0  # masked tokens get no gradient
    if mode != "token-mean":  # the local defaults are NOT the whole-batch normalisers
        local_loss, _ = _loss_and_grad(params, mask, mode, [4, 4])
        assert not torch.isclose(local_loss, whole_loss)


@pytest.mark.parametrize("mode", MODES)
def test_padding_invariance(mode):
    params, mask = _batch(seed=3)
    loss = _per_token_loss(params)
    base = aggregate(loss, mask, mode, max_len=MAX_LEN)
    # extra padded columns and rows hold garbage, even inf and NaN; the mask hides them
    padded_loss = torch.full((10, MAX_LEN + 3), float("nan"), dtype=torch.float64)
    padded_loss[:, -1] = float("inf")
    padded_loss[:8, :MAX_LEN] = loss
    padded_mask = torch.zeros(10, MAX_LEN + 3, dtype=torch.bool)
    padded_mask[:8, :MAX_LEN] = mask
    padded = aggregate(padded_loss, padded_mask, mode, max_len=MAX_LEN)
    torch.testing.assert_close(padded, base, rtol=1e-14, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_all_masked_gives_zero_loss_and_zero_gradient(mode):
    params = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for counts in ({}, {"num_tokens": 0, "num_seqs": 0}, normalisers(mask)):
        params.grad = None
        loss = aggregate(_per_token_loss(params), mask, mode, max_len=4, **counts)
        loss.backward()
        assert loss.item() == 0.0
        assert params.grad.abs().max().item() == 0.0  # zero, and not NaN
    garbage = torch.full((3, 4), float("nan"))  # masked positions may hold anything
    assert aggregate(garbage, mask, mode, max_len=4).item() == 0.0


def test_low_precision_loss_gives_fp32():
    loss = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16)
    got = aggregate(loss, torch.tensor([[True, True]]), "token-mean")
    assert got.dtype == torch.float32 and got.item() == 1.5


def test_normalisers_hand_values():
    mask = torch.tensor([[True, False, True], [False, False, False], [False, True, False]])
    counts = normalisers(mask)
    assert counts["num_tokens"].dtype == torch.int64
    assert (counts["num_tokens"].item(), counts["num_seqs"].item()) == (3, 2)


def test_bad_input_raises():
    loss, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(
        ValueError,
        match="unknown aggregation mode 'mean'; valid modes: "
        "token-mean, seq-mean-token-mean, seq-mean-token-sum, "
        "seq-mean-token-sum-norm",
    ):
        aggregate(loss, mask, "mean")
    with pytest.raises(ValueError, match="needs max_len"):
        aggregate(loss, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="max_len must be an int >= 1"):
        aggregate(loss, mask, "token-mean", max_len=0)
    with pytest.raises(ValueError, match=r"mask's shape \(2, 3\)"):
        aggregate(loss[:, :2], mask)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        aggregate(loss, mask.float())
    with pytest.raises(ValueError, match="num_tokens must be a 0-dim"):
        aggregate(loss, mask, num_tokens=torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="num_seqs must be a whole count"):
        aggregate(loss, mask, "seq-mean-token-sum", num_seqs="2")


# ---------------------------------------------------------------------------------------------
# two gloo ranks, each with its own share of the batch


def _rank_share(r: int, world: int):
    params, mask = _batch(seed=4)
    rows = [slice(0, 3), slice(3, 8)][r]  # unequal shares
    params = params[rows].clone().requires_grad_(True)
    counts = normalisers(mask[rows])  # global, through one all-reduce
    results = {}
    for mode in MODES:
        params.grad = None
        loss = aggregate(_per_token_loss(params), mask[rows], mode, max_len=MAX_LEN, **counts)
        loss.backward()
        results[mode] = (loss.detach(), params.grad.clone())
    return counts, results


def test_two_ranks_with_global_normalisers_sum_to_the_whole_batch():
    shares = run_in_processes(_rank_share, world_size=2, timeout=60)
    params, mask = _batch(seed=4)
    expected_counts = normalisers(mask)
    for counts, _ in shares:
        assert {k: v.item() for k, v in counts.items()} == {
            k: v.item() for k, v in expected_counts.items()
        }
    for mode in MODES:
        whole_loss, whole_grad = _loss_and_grad(params, mask, mode, [8])
        rank_loss = shares[0][1][mode][0] + shares[1][1][mode][0]  # what a DDP sum would see
        rank_grad = torch.cat([shares[0][1][mode][1], shares[1][1][mode][1]])
        torch.testing.assert_close(rank_loss, whole_loss, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(rank_grad, whole_grad, rtol=1e-12, atol=1e-15)
