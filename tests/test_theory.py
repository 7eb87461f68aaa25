"""Tests of theory.py against hand values, float64 naive formulas and the paper's identities."""

import math

import pytest
import torch

from entropy_dynamics import theory as th


def naive(z: torch.Tensor):
    """Float64 reference written straight from PAPER.md section 2, one row at a time."""
    z = z.double()
    out_H, out_S, out_N = [], [], []
    for row in z.reshape(-1, z.shape[-1]):
        p = [math.exp(v) for v in (row - row.max()).tolist()]
        total = sum(p)
        p = [v / total for v in p]
        H = -sum(v * math.log(v) for v in p if v > 0)
        S = [v * (H + math.log(v)) if v > 0 else 0.0 for v in p]
        N = sum(v * s for v, s in zip(p, S, strict=True))
        out_H.append(H)
        out_S.append(S)
        out_N.append(N)
    lead = z.shape[:-1]
    return (
        torch.tensor(out_H, dtype=torch.float64).reshape(lead),
        torch.tensor(out_S, dtype=torch.float64).reshape(z.shape),
        torch.tensor(out_N, dtype=torch.float64).reshape(lead),
    )


def test_hand_computed_three_tokens():
    # p = (1/2, 1/4, 1/4):
    # H   = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2                      = 1.039721
    # S_0 = 1/2 (1.5 ln 2 - ln 2)   = 0.25 ln 2                     = 0.173287
    # S_1 = S_2 = 1/4 (1.5 ln 2 - 2 ln 2) = -0.125 ln 2             = -0.086643
    # N   = 1/2 * S_0 + 2 * 1/4 * S_1 = 0.125 ln 2 - 0.0625 ln 2    = 0.0625 ln 2 = 0.043322
    # exp(-H) = 2^-1.5 = 0.3536: token 0 (p = 0.5) is above it, S_0 > 0; tokens 1, 2 below.
    z = torch.log(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    ln2 = math.log(2)
    assert th.entropy(z).item() == pytest.approx(1.5 * ln2, abs=1e-12)
    S = th.discriminator(z)
    assert S.tolist() == pytest.approx([0.25 * ln2, -0.125 * ln2, -0.125 * ln2], abs=1e-12)
    assert th.vocab_baseline(z).item() == pytest.approx(0.0625 * ln2, abs=1e-12)
    # Thm 3.2 on token 0 with eps = 0.1: -0.1 * 0.25 ln 2 = -0.0173287
    k0 = torch.tensor(0)
    assert th.predict_single_logit_change(z, k0, 0.1).item() == pytest.approx(-0.025 * ln2)
    # Thm 3.3 on token 1 with alpha = 0.1: -0.1 (S_1 - N) = -0.1 (-0.1875 ln 2) = 0.0129965
    k1 = torch.tensor(1)
    assert th.predict_grpo_step_change(z, k1, 0.1).item() == pytest.approx(0.01875 * ln2)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_matches_float64_naive_reference(scale):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 50, generator=g, dtype=torch.float64) * scale
    H, S, N = naive(z)
    torch.testing.assert_close(th.entropy(z), H, rtol=0, atol=1e-12)
    torch.testing.assert_close(th.discriminator(z), S, rtol=0, atol=1e-12)
    torch.testing.assert_close(th.vocab_baseline(z), N, rtol=0, atol=1e-12)
    # fp32 input: fp32 result within 1e-5 of the float64 reference.
    H32 = th.entropy(z.float())
    assert H32.dtype == torch.float32
    torch.testing.assert_close(H32.double(), H, rtol=0, atol=2e-5)


def test_large_vocab_rows_match_reference():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 151936, generator=g, dtype=torch.float64) * 3
    H, _, N = naive(z)
    torch.testing.assert_close(th.entropy(z.float()).double(), H, rtol=0, atol=1e-4)
    scale = N.abs().max()
    assert (th.vocab_baseline(z.float()).double() - N).abs().max() <= 1e-4 * scale


def test_discriminator_is_minus_entropy_gradient():
    z = torch.randn(5, 17, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(th.entropy(z).sum(), z)
    torch.testing.assert_close(th.discriminator(z.detach()), -grad, rtol=0, atol=1e-12)


def test_sign_of_discriminator_is_sign_of_p_minus_exp_minus_H():
    z = torch.randn(8, 30, dtype=torch.float64) * 2
    p = torch.softmax(z, -1)
    threshold = torch.exp(-th.entropy(z)).unsqueeze(-1)
    assert torch.equal(th.discriminator(z) > 0, p > threshold)


def test_grpo_delta_is_gradient_of_alpha_log_p():
    z = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    k = torch.randint(0, 9, (4,))
    logp_k = torch.log_softmax(z, -1).gather(-1, k[:, None]).sum()
    (grad,) = torch.autograd.grad(0.3 * logp_k, z)
    torch.testing.assert_close(th.grpo_step_delta(z.detach(), k, 0.3), grad)


def test_entropy_bonus_moves_logits_by_minus_beta_S():
    # Gradient ascent on beta * H moves z by beta * dH/dz = -beta * S.
    z = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(0.05 * th.entropy(z).sum(), z)
    torch.testing.assert_close(grad, -0.05 * th.discriminator(z.detach()))


def _second_order_ratio(exact, predict, z, k, step):
    err_1 = (exact(z, k, step) - predict(z, k, step)).abs()
    err_2 = (exact(z, k, step / 2) - predict(z, k, step / 2)).abs()
    return err_1 / err_2


@pytest.mark.parametrize(
    "exact,predict",
    [
        (th.exact_single_logit_change, th.predict_single_logit_change),
        (th.exact_grpo_step_change, th.predict_grpo_step_change),
    ],
)
def test_prediction_error_is_second_order(exact, predict):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(16, 40, generator=g, dtype=torch.float64) * 2
    k = torch.randint(0, 40, (16,), generator=g)
    ratio = _second_order_ratio(exact, predict, z, k, 1e-3)
    # halving the step shrinks the O(eps^2) remainder about 4x
    assert torch.all((ratio > 3.5) & (ratio < 4.5)), ratio
    # and the prediction has the exact change's sign at a small step
    assert torch.equal(exact(z, k, 1e-4).sign(), predict(z, k, 1e-4).sign())


def test_predict_entropy_change_for_arbitrary_direction():
    z = torch.randn(6, 25, dtype=torch.float64)
    dz = torch.randn(6, 25, dtype=torch.float64)
    for h in (1e-3, 5e-4):
        err = th.exact_entropy_change(z, h * dz) - th.predict_entropy_change(z, h * dz)
        assert err.abs().max() < 50 * h * h
    # general form reduces to Thm 3.3 for dz = alpha (e_k - p)
    k = torch.randint(0, 25, (6,))
    dz_grpo = th.grpo_step_delta(z, k, 0.01)
    torch.testing.assert_close(
        th.predict_entropy_change(z, dz_grpo), th.predict_grpo_step_change(z, k, 0.01)
    )


def test_corollary_3_4_on_policy_deviation_has_zero_mean():
    z = torch.randn(10, 300, dtype=torch.float64) * 4
    p = torch.softmax(z, -1)
    deviation = th.discriminator(z) - th.vocab_baseline(z).unsqueeze(-1)
    assert (p * deviation).sum(-1).abs().max() < 1e-6
    z32 = z.float()
    dev32 = th.discriminator(z32) - th.vocab_baseline(z32).unsqueeze(-1)
    assert (torch.softmax(z32, -1) * dev32).sum(-1).abs().max() < 1e-6


def test_dtypes_and_masked_vocabulary():
    z = torch.randn(2, 3, 7)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert th.entropy(z.to(dtype)).dtype == torch.float32
        assert th.discriminator(z.to(dtype)).dtype == torch.float32
    assert th.vocab_baseline(z.double()).dtype == torch.float64
    torch.testing.assert_close(th.entropy(z.bfloat16()), th.entropy(z), atol=0.05, rtol=0)
    # -inf entries (masked vocabulary) contribute nothing and give no NaN
    masked = torch.cat([z, torch.full((2, 3, 2), float("-inf"))], dim=-1)
    torch.testing.assert_close(th.entropy(masked), th.entropy(z))
    torch.testing.assert_close(th.vocab_baseline(masked), th.vocab_baseline(z))
    assert torch.isfinite(th.discriminator(masked)).all()


def test_leading_dims_and_tensor_steps():
    z = torch.randn(2, 3, 5, dtype=torch.float64)
    k = torch.randint(0, 5, (2, 3))
    alpha = torch.rand(2, 3, dtype=torch.float64)
    out = th.predict_grpo_step_change(z, k, alpha)
    assert out.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            one = th.predict_grpo_step_change(z[i, j], k[i, j], alpha[i, j].item())
            torch.testing.assert_close(out[i, j], one)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: th.entropy(torch.tensor([1.0, float("nan")])), "NaN"),
        (lambda: th.entropy(torch.tensor([1, 2])), "floating-point"),
        (lambda: th.entropy(torch.tensor([float("-inf")] * 3)), "every entry is -inf"),
        (
            lambda: th.predict_single_logit_change(torch.zeros(2, 4), torch.tensor([0, 4]), 0.1),
            r"\[0, 4\)",
        ),
        (
            lambda: th.predict_single_logit_change(torch.zeros(2, 4), torch.tensor([0]), 0.1),
            "token shape",
        ),
        (
            lambda: th.predict_entropy_change(torch.zeros(2, 4), torch.zeros(2, 3)),
            "delta_logits shape",
        ),
        (lambda: th.predict_grpo_step_change(torch.zeros(4), torch.tensor(1.0), 0.1), "integer"),
    ],
)
def test_bad_input_is_explained(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_nominal_step_is_lr_ratio_advantage_keep_weight():
    A = torch.tensor([[1.0, -2.0, 0.5]])
    r = torch.tensor([[1.0, 2.0, 0.5]])
    keep = torch.tensor([[True, True, False]])
    w = torch.tensor([[0.1, 1.0, 1.0]])
    got = th.nominal_step(0.1, A, ratio=r, keep=keep, weight=w)
    assert torch.allclose(got, torch.tensor([[0.1 * 1 * 1 * 0.1, 0.1 * 2 * -2, 0.0]]))
    assert torch.equal(th.nominal_step(0.5, A), 0.5 * A)  # on-policy, nothing dropped
    with pytest.raises(ValueError, match="lr"):
        th.nominal_step(float("nan"), A)
