"""backend="triton" of token_stats / token_stats_from_hidden against float64 references.

On CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
with CUDA the same tests run the compiled kernels.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from entropy_dynamics._token_stats_backends import TORCH, TritonBackend
from entropy_dynamics.token_stats import (
    resolve_backend,
    token_stats,
    token_stats_from_hidden,
)

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and tuple(map(int, triton.__version__.split(".")[:2])) < (3, 7):
    pytest.skip(
        "triton < 3.7's interpreter runs no loop with a runtime bound under numpy 2 (TypeError: "
        "only 0-dimensional arrays ...); the compiled kernels support triton 3.6",
        allow_module_level=True,
    )

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16 keeps 8 significant bits: a gradient rounded to bf16 is within 2^-9 of its value.
BF16_RTOL = 2.0**-8


def reference(logits, labels, temperature=1.0):
    """float64 log p_k, H, S_*, N from the formulas (PAPER.md section 2); labels all valid."""
    x = logits.double() / temperature
    x = x - x.amax(-1, keepdim=True)
    logp = x - x.exp().sum(-1, keepdim=True).log()
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    logp_k = logp.gather(-1, labels[..., None]).squeeze(-1)
    discriminator = logp_k.exp() * (entropy + logp_k)
    baseline = (p * p * (entropy[..., None] + logp)).sum(-1)
    return logp_k, entropy, discriminator, baseline


def masked_reference(logits, labels, valid, temperature=1.0):
    """`reference` at the valid positions, 0 elsewhere (labels there may be -100)."""
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    return tuple(torch.where(valid, t, 0.0) for t in reference(logits, safe, temperature))


def loss(stats, g_lp, g_h):
    return (stats[0] * g_lp).sum() + (stats[1] * g_h).sum()


def make_logits(shape, dtype, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    return logits.to(dtype).to(DEVICE), labels.to(DEVICE), gen


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logits_values_and_gradients_match_float64(dtype, temperature):
    logits, labels, gen = make_logits((3, 5, 3001), dtype, seed=0)  # odd V, 3 blocks of 1024+
    labels[0, 1] = -100
    mask = torch.ones(3, 5, dtype=torch.bool, device=DEVICE)
    mask[2, 3:] = False
    valid = mask & (labels != -100)
    g_lp = torch.randn(3, 5, generator=gen, dtype=torch.float64).to(DEVICE)
    g_h = torch.randn(3, 5, generator=gen, dtype=torch.float64).to(DEVICE)
    z = logits.clone().requires_grad_()
    stats = token_stats(z, labels, temperature=temperature, mask=mask, backend="triton")
    loss(stats, g_lp, g_h).backward()
    exact = logits.double().requires_grad_()
    want = masked_reference(exact, labels, valid, temperature)
    loss(want, g_lp, g_h).backward()
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for got, ref in zip(stats, want, strict=True):
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(got.double(), ref.detach(), **tol)
    assert z.grad.dtype == dtype and (z.grad[~valid] == 0).all()
    if dtype == torch.bfloat16:
        tol = dict(rtol=BF16_RTOL, atol=1e-7)
    torch.testing.assert_close(z.grad.double(), exact.grad, **tol)


def test_sliced_view_is_read_in_place_with_its_gradient():
    full, labels, _ = make_logits((2, 6, 517), torch.float32, seed=1)
    full.requires_grad_()
    labels = labels[:, :-1]
    stats = token_stats(full[:, :-1], labels, temperature=1.3, backend="triton")
    (stats.logprobs.sum() + stats.entropy.sum()).backward()
    exact = full.detach().double().requires_grad_()
    want = reference(exact[:, :-1], labels, 1.3)
    (want[0].sum() + want[1].sum()).backward()
    for got, ref in zip(stats, want, strict=True):
        torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full.grad.double(), exact.grad, rtol=1e-5, atol=1e-7)
    assert (full.grad[:, -1] == 0).all()


def test_near_one_hot_and_flat_rows():
    """p_k -> 1 (S_*, N ~ 1e-16 must keep relative precision) and a uniform row (H = log V)."""
    vocab = 2049
    logits = torch.zeros(1, 3, vocab, dtype=torch.float32)
    logits[0, 0, 7] = 40.0  # p_7 = 1 - 2048 e^-40
    logits[0, 1, 2000] = 12.0
    labels = torch.tensor([[7, 5, 3]])
    stats = token_stats(logits.to(DEVICE), labels.to(DEVICE), backend="triton")
    want = reference(logits.double(), labels)
    for got, ref in zip(stats, want, strict=True):
        torch.testing.assert_close(got.cpu().double(), ref, rtol=1e-5, atol=1e-7)
    # The one-hot row's S_* and N are about 1e-14: compare them relatively.
    for field in (2, 3):
        got, ref = float(stats[field][0, 0]), float(want[field][0, 0])
        assert ref != 0 and abs(got - ref) <= 1e-4 * abs(ref)
    assert float(stats.entropy[0, 2]) == pytest.approx(math.log(vocab), rel=1e-6)


def hidden_case(dtype, seed, rows=(2, 7), dim=24, vocab=1001, bias=True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*rows, dim, generator=gen, dtype=torch.float64)
    weight = torch.randn(vocab, dim, generator=gen, dtype=torch.float64) * 0.5
    b = torch.randn(vocab, generator=gen, dtype=torch.float64) if bias else None
    labels = torch.randint(0, vocab, rows, generator=gen)
    labels.view(-1)[3] = -100
    g_lp = torch.randn(rows, generator=gen, dtype=torch.float64)
    g_h = torch.randn(rows, generator=gen, dtype=torch.float64)
    cast = [t if t is None else t.to(dtype).to(DEVICE) for t in (hidden, weight, b)]
    return cast, labels.to(DEVICE), g_lp.to(DEVICE), g_h.to(DEVICE)


def hidden_reference(hidden, weight, bias, labels, temperature, g_lp, g_h):
    """float64 statistics and gradients of the logits the output layer returns in its dtype.

    Low-precision logits are rounded once to their dtype (as the kernel and cuBLAS do); the
    gradient treats that rounding as the identity.
    """
    leaves = [
        t if t is None else t.detach().double().requires_grad_() for t in (hidden, weight, bias)
    ]
    logits = leaves[0] @ leaves[1].T + (0 if bias is None else leaves[2])
    rounded = logits.detach().to(weight.dtype).double()
    logits = logits + (rounded - logits).detach()
    valid = labels != -100
    want = masked_reference(logits, labels, valid, temperature)
    loss(want, g_lp, g_h).backward()
    return [t.detach() for t in want], [t if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_from_hidden_values_and_gradients_match_float64(dtype):
    (hidden, weight, bias), labels, g_lp, g_h = hidden_case(dtype, seed=2)
    leaves = [t.requires_grad_() for t in (hidden, weight, bias)]
    stats = token_stats_from_hidden(
        hidden, weight, labels, bias=bias, temperature=0.8, chunk_size=5, backend="triton"
    )
    loss(stats, g_lp, g_h).backward()
    want, grads = hidden_reference(hidden, weight, bias, labels, 0.8, g_lp, g_h)
    tol = dict(rtol=1e-11, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for got, ref in zip(stats, want, strict=True):
        torch.testing.assert_close(got.double(), ref, **tol)
    for leaf, ref in zip(leaves, grads, strict=True):
        assert leaf.grad.dtype == dtype
        if dtype == torch.bfloat16:
            # dL/dz rounded to bf16 and bf16 matmul products: errors of 2^-9 of the summed
            # terms, which partly cancel, so measure against the largest entry.
            scale = float(ref.abs().max())
            torch.testing.assert_close(leaf.grad.double(), ref, rtol=0, atol=2e-2 * scale)
        else:
            torch.testing.assert_close(leaf.grad.double(), ref, **tol)


def test_from_hidden_without_bias_frozen_weight_odd_sizes():
    (hidden, weight, _), labels, g_lp, g_h = hidden_case(
        torch.float32, seed=3, rows=(13, 1), dim=40, vocab=257, bias=False
    )
    hidden.requires_grad_()
    stats = token_stats_from_hidden(hidden, weight, labels, backend="triton")
    loss(stats, g_lp, g_h).backward()
    want, grads = hidden_reference(hidden, weight, None, labels, 1.0, g_lp, g_h)
    for got, ref in zip(stats, want, strict=True):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden.grad.double(), grads[0], rtol=1e-5, atol=1e-5)
    assert weight.grad is None and (hidden.grad[3, 0] == 0).all()


def test_auto_takes_torch_on_cpu_and_unknown_backends_are_refused(monkeypatch):
    monkeypatch.delenv("ENTROPY_DYNAMICS_COMPILE", raising=False)
    assert resolve_backend("auto", torch.device("cpu")) is TORCH  # a small pass: not compiled
    assert isinstance(resolve_backend("triton", torch.device(DEVICE)), TritonBackend)
    with pytest.raises(ValueError, match="'auto', 'torch', 'inductor', 'triton'"):
        token_stats(torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long), backend="cuda")


def test_triton_on_cpu_without_the_interpreter_says_how_to_fix_it():
    code = (
        "import torch\n"
        "from entropy_dynamics import token_stats\n"
        "try:\n"
        "    token_stats(torch.zeros(1, 2, 5), torch.zeros(1, 2, dtype=torch.long), backend='triton')\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "TRITON_INTERPRET=1" in out.stdout and "backend='auto'" in out.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_qwen_vocabulary_bf16_on_cuda():
    logits, labels, _ = make_logits((2, 64, 151936), torch.bfloat16, seed=4)
    z = logits.clone().requires_grad_()
    stats = token_stats(z, labels, backend="triton")
    (stats.logprobs.sum() + stats.entropy.sum()).backward()
    exact = logits.double().requires_grad_()
    want = reference(exact, labels)
    (want[0].sum() + want[1].sum()).backward()
    for got, ref in zip(stats, want, strict=True):
        torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad.double(), exact.grad, rtol=BF16_RTOL, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hidden_rows_past_two_to_the_31_elements_on_cuda():
    # 262,208 rows of D = 8192 (4 GiB in bf16): element offsets of the last rows pass 2^31, where
    # int32 address arithmetic would read other rows.
    dim = 8192
    rows = 2**31 // dim + 64
    gen = torch.Generator(device="cuda").manual_seed(7)
    hidden = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    weight = torch.randn(256, dim, device="cuda", dtype=torch.bfloat16, generator=gen) / dim**0.5
    labels = torch.randint(0, 256, (rows,), device="cuda", generator=gen)
    got = token_stats_from_hidden(hidden[None], weight, labels[None], backend="triton")
    for part in (slice(0, 64), slice(rows - 64, rows)):
        # The same rows alone, from offset 0: the same tiles in the same order, so the same sums.
        alone = token_stats_from_hidden(
            hidden[None, part].clone(), weight, labels[None, part], backend="triton"
        )
        for g, w in zip(got, alone, strict=True):
            torch.testing.assert_close(g[:, part], w, rtol=1e-6, atol=1e-6)
    del hidden
