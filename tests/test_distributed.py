"""Tests for distributed.py: single-process values against numpy / hand values, and 2 gloo ranks
against the single-process result on the concatenated batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _dist_util import run_in_processes
from entropy_dynamics import distributed as D

# ---------------------------------------------------------------------------------------------
# single process


def _example():
    # values [2, 4] with padding (mask False) holding garbage, NaN included
    values = torch.tensor([[1.0, 2.0, 4.0, float("nan")], [3.0, 5.0, 100.0, -7.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    return values, mask


def test_helpers_without_process_group():
    assert not D.is_distributed()
    assert D.world_size() == 1
    assert D.rank() == 0


def test_global_sum_single_process_is_a_detached_copy():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = D.global_sum(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0]))
    assert D.global_sum(torch.tensor([True, False, True])).tolist() == [1, 0, 1]
    assert D.global_sum(torch.tensor([[True, True], [False, True]]).sum()).item() == 3


def test_masked_mean_std_hand_values():
    values, mask = _example()
    mean, std, count = D.masked_mean_std(values, mask)
    # valid: 1, 2, 4, 3, 5 -> mean 15 / 5 = 3; squared deviations 4, 1, 1, 0, 4 -> 10 / 5 = 2
    assert count.dtype == torch.int64 and count.item() == 5
    assert mean.dtype == torch.float32
    torch.testing.assert_close(mean, torch.tensor(3.0))
    torch.testing.assert_close(std, torch.tensor(2.0).sqrt())


def test_masked_mean_std_matches_numpy_and_is_accurate_with_a_large_offset():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(6, 9, generator=gen, dtype=torch.float64) * 1e-3 + 1e4
    mask = torch.rand(6, 9, generator=gen) < 0.7
    ref = values[mask].numpy()
    mean, std, count = D.masked_mean_std(values, mask)
    assert mean.dtype == torch.float64  # fp64 stays fp64
    assert count.item() == ref.size
    # E[x^2] - E[x]^2 in float64 would lose about 8 of the 16 digits here; the centred form does not
    np.testing.assert_allclose(mean.item(), ref.mean(), rtol=1e-15)
    np.testing.assert_allclose(std.item(), ref.std(ddof=0), rtol=1e-9)


def test_masked_mean_std_low_precision_input_gives_fp32():
    values, mask = _example()
    mean, std, _ = D.masked_mean_std(values.to(torch.bfloat16), mask)
    assert mean.dtype == std.dtype == torch.float32
    torch.testing.assert_close(mean, torch.tensor(3.0))


def test_empty_mask_gives_zeros_never_nan():
    values = torch.full((2, 3), float("nan"))
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mean, std, count = D.masked_mean_std(values, mask)
    assert (mean.item(), std.item(), count.item()) == (0.0, 0.0, 0)
    assert D.gather_masked(values, mask).numel() == 0
    assert D.masked_quantile(values, mask, 0.5).item() == 0.0
    assert not D.masked_topk(values, mask, 3).any()
    assert not D.global_position_select(mask, torch.tensor([], dtype=torch.long)).any()


def test_gather_masked_row_major_order():
    values, mask = _example()
    assert D.gather_masked(values, mask).tolist() == [1.0, 2.0, 4.0, 3.0, 5.0]
    ints = torch.arange(8).reshape(2, 4)
    assert D.gather_masked(ints, mask).tolist() == [0, 1, 2, 4, 5]


@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.8, 0.999, 1.0])
def test_masked_quantile_matches_numpy_and_torch_linear(q):
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(5, 7, generator=gen)
    mask = torch.rand(5, 7, generator=gen) < 0.6
    ref = values[mask].double()
    got = D.masked_quantile(values, mask, q)
    assert got.dtype == torch.float32 and got.dim() == 0
    np.testing.assert_allclose(got.item(), np.quantile(ref.numpy(), q), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.double(), torch.quantile(ref, q, interpolation="linear"))


def test_masked_quantile_hand_values_and_vector_q():
    values, mask = _example()
    # sorted valid values 1, 2, 3, 4, 5; q = 0.3 -> h = 0.3 * 4 = 1.2 -> 2 + 0.2 * (3 - 2) = 2.2
    got = D.masked_quantile(values, mask, torch.tensor([0.0, 0.3, 1.0]))
    torch.testing.assert_close(got, torch.tensor([1.0, 2.2, 5.0]))


def test_masked_topk_hand_values_ties_by_position():
    values = torch.tensor([[0.5, 0.9, 0.2], [0.9, 0.9, 0.1]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    # valid in row-major order: 0.5, 0.9, 0.2, 0.9, (0.9 masked), 0.1; top-2 are both 0.9s;
    # top-3 adds 0.5
    top2 = D.masked_topk(values, mask, 2)
    assert top2.tolist() == [[False, True, False], [True, False, False]]
    top1 = D.masked_topk(values, mask, 1)  # tie between (0,1) and (1,0): the earlier wins
    assert top1.tolist() == [[False, True, False], [False, False, False]]
    top3 = D.masked_topk(values, mask, 3)
    assert top3.tolist() == [[True, True, False], [True, False, False]]
    assert D.masked_topk(values, mask, 100).equal(mask)  # k clipped to the valid count
    assert not D.masked_topk(values, mask, 0).any()


def test_global_position_select_hand_values():
    _, mask = _example()
    # valid positions in row-major order: (0,0)=0, (0,1)=1, (0,2)=2, (1,0)=3, (1,1)=4
    got = D.global_position_select(mask, torch.tensor([4, 0, 0]))
    assert got.tolist() == [[True, False, False, False], [False, True, False, False]]


def test_bad_input_raises_clear_errors():
    values, mask = _example()
    with pytest.raises(ValueError, match="mask must be a bool"):
        D.masked_mean_std(values, mask.float())
    with pytest.raises(ValueError, match="same shape"):
        D.gather_masked(values, mask[:, :2])
    with pytest.raises(ValueError, match=r"q must be .* in \[0, 1\]"):
        D.masked_quantile(values, mask, 1.5)
    with pytest.raises(ValueError, match="k must be an int >= 0"):
        D.masked_topk(values, mask, -1)
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\)"):
        D.global_position_select(mask, torch.tensor([5]))
    with pytest.raises(ValueError, match="1-D integer"):
        D.global_position_select(mask, torch.tensor([0.0]))
    nan_values = values.clone()
    nan_values[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        D.masked_quantile(nan_values, mask, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        D.masked_topk(nan_values, mask, 1)


@st.composite
def _masked_batches(draw):
    B, T = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    # few distinct values (many ties), including negatives and zero
    values = draw(st.lists(st.integers(-3, 3), min_size=B * T, max_size=B * T))
    mask = draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))
    return (
        torch.tensor(values, dtype=torch.float32).reshape(B, T) / 2,
        torch.tensor(mask).reshape(B, T),
    )


@settings(max_examples=60, deadline=None)
@given(batch=_masked_batches(), k=st.integers(0, 40))
def test_masked_topk_property_matches_sort_by_value_then_position(batch, k):
    values, mask = batch
    # reference: valid (value, position) pairs, sorted by value descending then position
    valid = [
        (v, i)
        for i, (v, m) in enumerate(
            zip(values.flatten().tolist(), mask.flatten().tolist(), strict=True)
        )
        if m
    ]
    chosen = {i for _, i in sorted(valid, key=lambda pair: (-pair[0], pair[1]))[:k]}
    expected = torch.tensor([i in chosen for i in range(values.numel())]).reshape(values.shape)
    assert D.masked_topk(values, mask, k).equal(expected)


@settings(max_examples=60, deadline=None)
@given(batch=_masked_batches(), q=st.floats(0.0, 1.0))
def test_masked_quantile_and_mean_std_property_match_numpy(batch, q):
    values, mask = batch
    ref = values[mask].double().numpy()
    got = D.masked_quantile(values, mask, q).item()
    mean, std, count = D.masked_mean_std(values, mask)
    assert count.item() == ref.size
    if ref.size == 0:
        assert (got, mean.item(), std.item()) == (0.0, 0.0, 0.0)
    else:
        np.testing.assert_allclose(got, np.quantile(ref, q), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(mean.item(), ref.mean(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(std.item(), ref.std(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# two gloo ranks vs one process on the concatenated batch

# per scenario: each rank's (B, T) and valid fraction; ranks differ in shape and counts
SCENARIOS = {
    "unequal": [((3, 5), 0.7), ((2, 8), 0.5)],
    "rank1_empty": [((2, 6), 0.6), ((3, 4), 0.0)],
    "rank0_empty": [((1, 3), 0.0), ((4, 4), 0.8)],
    "all_empty": [((2, 2), 0.0), ((1, 5), 0.0)],
}
QS = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0])
TOPK = (0, 1, 3, 7, 1000)


def _rank_batch(name: str, r: int):
    (B, T), frac = SCENARIOS[name][r]
    gen = torch.Generator().manual_seed(100 * r + len(name))
    # values rounded to one decimal so ties occur within and across ranks
    values = (torch.randn(B, T, generator=gen) * 3).round() / 10
    mask = torch.rand(B, T, generator=gen) < frac
    values[~mask] = float("nan")  # padding must never be read
    return values, mask


def _concatenated(name: str):
    """The ranks' batches as one batch: rows in rank order, padded to the widest T."""
    batches = [_rank_batch(name, r) for r in range(len(SCENARIOS[name]))]
    width = max(v.shape[1] for v, _ in batches)
    values = torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[1])) for v, _ in batches])
    mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m in batches])
    return batches, values, mask


def _chosen(n_global: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)  # the same seed on every rank
    return (
        torch.randperm(n_global, generator=gen)[: max(n_global // 3, 1)]
        if n_global
        else (torch.zeros(0, dtype=torch.long))
    )


def _all_functions(values, mask):
    gathered = D.gather_masked(values, mask)
    return {
        "sum": D.global_sum(torch.stack([values.double().nan_to_num().sum(), mask.sum().double()])),
        "mean_std": D.masked_mean_std(values, mask),
        "gather": gathered,
        "quantile": D.masked_quantile(values, mask, QS),
        "topk": {k: D.masked_topk(values, mask, k) for k in TOPK},
        "select": D.global_position_select(mask, _chosen(gathered.numel())),
        "world": (D.world_size(), D.rank()),
    }


def _per_rank(r: int, world: int, names):
    assert D.is_distributed()
    return {name: _all_functions(*_rank_batch(name, r)) for name in names}


@pytest.fixture(scope="module")
def two_rank_results():
    return run_in_processes(_per_rank, world_size=2, args=(list(SCENARIOS),), timeout=60)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_ranks_equal_single_process_on_concatenated_batch(name, two_rank_results):
    batches, values, mask = _concatenated(name)
    single = _all_functions(values, mask)
    for r, (local_values, _) in enumerate(batches):
        got = two_rank_results[r][name]
        assert got["world"] == (2, r)
        # the global sum sums each rank's local sums
        torch.testing.assert_close(got["sum"], single["sum"])
        for g, s in zip(got["mean_std"], single["mean_std"], strict=True):
            torch.testing.assert_close(g, s, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got["gather"], single["gather"])
        torch.testing.assert_close(got["quantile"], single["quantile"])
        # masks: this rank's rows / columns of the single-process mask
        B, T = local_values.shape
        row0 = sum(b[0].shape[0] for b in batches[:r])
        for k in TOPK:
            assert got["topk"][k].equal(single["topk"][k][row0 : row0 + B, :T]), (name, r, k)
        assert got["select"].equal(single["select"][row0 : row0 + B, :T])


def test_two_rank_scenarios_are_not_trivial():
    # guard against a scenario generator that silently makes the cross-rank checks vacuous
    _, values, mask = _concatenated("unequal")
    gathered = D.gather_masked(values, mask)
    assert gathered.numel() > 8
    assert gathered.unique().numel() < gathered.numel()  # ties exist
    assert _rank_batch("rank1_empty", 0)[1].any() and not _rank_batch("rank1_empty", 1)[1].any()


def _fails_on_rank_1(r: int, world: int):
    if r == 1:
        raise ArithmeticError("deliberate failure on rank 1")
    return r


def test_launcher_reports_a_failing_rank_with_its_traceback():
    with pytest.raises(RuntimeError, match=r"rank 1 failed:[\s\S]*deliberate failure on rank 1"):
        run_in_processes(_fails_on_rank_1, world_size=2, timeout=60)


def test_masked_topk_accepts_numpy_and_tensor_ints():
    values, mask = _example()
    expected = D.masked_topk(values, mask, 2)
    assert D.masked_topk(values, mask, np.int64(2)).equal(expected)
    assert D.masked_topk(values, mask, torch.tensor(2)).equal(expected)
    with pytest.raises(ValueError, match="k must be an int >= 0"):
        D.masked_topk(values, mask, 2.0)
    with pytest.raises(ValueError, match="k must be an int >= 0"):
        D.masked_topk(values, mask, True)


def _dies_on_rank_1(r: int, world: int):
    if r == 1:
        import os

        os._exit(3)  # a crash: no exception, no result
    return r


def test_launcher_fails_fast_when_a_rank_dies_without_reporting():
    with pytest.raises(RuntimeError, match="rank 1 exited with code 3"):
        run_in_processes(_dies_on_rank_1, world_size=2, timeout=60)
