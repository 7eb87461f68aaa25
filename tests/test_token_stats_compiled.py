"""token_stats' compiled CPU chunks (`backend="inductor"`): float64 accuracy, gradients, threads,
and the `auto` policy (the fallback without a C++ compiler: test_token_stats_compile_fallback.py).

Each compiled function is built once per test session and dtype (fp32 and bf16 here); inductor's
cache keeps the C++ across sessions (docs/performance.md gives the compile times).
"""

from __future__ import annotations

import pytest
import torch

from entropy_dynamics import _token_stats_compiled as compiled
from entropy_dynamics._token_stats_backends import COMPILED, TORCH
from entropy_dynamics._token_stats_kernels import BLOCK_COLUMNS, combine_blocks
from entropy_dynamics.token_stats import resolve_backend, token_stats, token_stats_from_hidden
from test_token_stats import QWEN_VOCAB, assert_matches_reference, reference
from test_token_stats_grad import naive_logp_entropy, weighted_loss

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _compiled_kernels():
    """Compile (or load from inductor's cache) once, when the first test here runs."""
    if compiled.policy() == "0":
        pytest.skip(f"{compiled.ENV}=0: the compiled path is switched off for this run")
    if not compiled.FUSED.ready(torch.float32, CPU, warn=False):
        pytest.skip(f"torch.compile cannot build CPU kernels here: {compiled.FUSED.failure}")


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0, 300.0])
def test_qwen_vocabulary_accuracy_sweep(scale):
    """The sweep of test_token_stats through the compiled loop: flat to extremely peaked rows."""
    gen = torch.Generator().manual_seed(int(scale * 10))
    logits = (torch.randn(2, 4, QWEN_VOCAB, generator=gen, dtype=torch.float64) * scale).float()
    labels = torch.randint(0, QWEN_VOCAB, (2, 4), generator=gen)
    labels[0, 0] = logits[0, 0].argmax()
    stats = token_stats(logits, labels, backend="inductor", chunk_size=3)  # chunks of 3, 3, 2
    assert_matches_reference(stats, reference(logits, labels))


# Rows around the block edges: one last block alone (V <= BLOCK_COLUMNS), one whole block and a
# last block of 1 column, a last block of whole size, several whole blocks and 1 column.
EDGE_VOCABS = (
    BLOCK_COLUMNS - 3,
    BLOCK_COLUMNS,
    BLOCK_COLUMNS + 1,
    2 * BLOCK_COLUMNS,
    3 * BLOCK_COLUMNS + 1,
)


@pytest.mark.parametrize("vocab", EDGE_VOCABS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_edges_values_and_gradients(vocab, dtype):
    """Whole blocks and the last block, combined: float64 values, and the gradient of the naive
    float32 path; chunks of 3, 3 and 1 rows (the 1-row chunk reuses the warm graphs)."""
    gen = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(1, 7, vocab, generator=gen) * 4).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (1, 7), generator=gen)
    labels[0, 1] = logits[0, 1].argmax()  # a label in the block that holds the row max
    g_lp, g_h = torch.randn(1, 7, generator=gen), torch.randn(1, 7, generator=gen)
    stats = token_stats(logits, labels, temperature=0.7, chunk_size=3, backend="inductor")
    assert_matches_reference(stats, reference(logits.detach(), labels, 0.7))
    weighted_loss(stats, g_lp, g_h).backward()
    exact = logits.detach().float().requires_grad_()
    weighted_loss(naive_logp_entropy(exact, labels, 0.7), g_lp, g_h).backward()
    assert logits.grad.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(logits.grad.float(), exact.grad, **tol)


def test_combine_blocks_equals_whole_row_sums_in_float64():
    """Per-block sums, each at its own block max, rescaled to the row max and added, equal the
    sums of the whole row taken at once (written here from the definitions, not the kernels)."""
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(3, 10, generator=gen, dtype=torch.float64) * 6
    inv_tau = 1.3

    def sums(block):  # (m, s, t, u, w) of PAPER's quantities, from their definitions
        m = block.amax(-1)
        x = (block - m[:, None]) * inv_tau
        e = torch.exp(x)
        return torch.stack([m, e.sum(-1), (e * x).sum(-1), (e * e).sum(-1), (e * e * x).sum(-1)])

    blocks = torch.stack([sums(z[:, :4]), sums(z[:, 4:7]), sums(z[:, 7:])], dim=2)  # [5, 3, 3]
    torch.testing.assert_close(combine_blocks(blocks, inv_tau), sums(z), rtol=1e-12, atol=0)


def test_no_graph_compiles_after_the_warm_up():
    """Every chunk shape a pass can meet runs on the graphs compiled before the first pass:
    1-row and many-row chunks, at the start of the logits and further on, contiguous rows and
    a slice of the vocabulary, every block layout. A graph compiled later would stall a
    training step for seconds."""
    from torch._dynamo.utils import counters

    assert compiled.FUSED.ready(torch.float32, CPU, warn=False)
    before = counters["stats"]["unique_graphs"]
    gen = torch.Generator().manual_seed(8)
    for vocab in (*EDGE_VOCABS, 30_001):
        logits = (torch.randn(2, 5, vocab + 2, generator=gen) * 3).requires_grad_()
        labels = torch.randint(0, vocab, (2, 5), generator=gen)
        labels[0, 2] = -100  # valid runs of 2 and 7 rows, in chunks of 1 and 3
        for view in (logits[..., :vocab], logits[:, :, 1 : vocab + 1]):
            for chunk_size in (1, 3, None):
                stats = token_stats(view, labels, chunk_size=chunk_size, backend="inductor")
                (stats.logprobs.sum() + stats.entropy.sum()).backward()
        contiguous = logits.detach()[..., :vocab].contiguous().requires_grad_()
        stats = token_stats(contiguous[:, :-1], labels[:, 1:], backend="inductor")
        (stats.logprobs.sum() + stats.entropy.sum()).backward()
        # A caller's inference mode or autocast changes neither the graphs nor the results.
        with torch.inference_mode():
            inferred = token_stats(contiguous[:, :-1].detach(), labels[:, 1:], backend="inductor")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = token_stats(contiguous[:, :-1], labels[:, 1:], backend="inductor")
        for a, b, c in zip(stats, inferred, autocast, strict=True):
            assert torch.equal(a, b) and torch.equal(a, c)
    assert counters["stats"]["unique_graphs"] == before


def test_nearly_one_hot_rows_keep_relative_precision():
    logits = torch.full((1, 3, 1000), -40.0)
    logits[0, :, 0] = 0.0
    logits[0, :, 1] = -20.0  # p_1 = 2.1e-9: 1 + 2e-9 rounds to 1 in fp32
    labels = torch.tensor([[0, 1, 2]])
    ref = reference(logits, labels)
    stats = token_stats(logits, labels, backend="inductor", chunk_size=2)  # a 1-row chunk too
    assert_matches_reference(stats, ref, atol=1e-6)
    assert (ref[3] > 1e-8).all()
    torch.testing.assert_close(stats.baseline.double(), ref[3], rtol=1e-4, atol=0)


def test_bf16_logits_values_and_gradient():
    gen = torch.Generator().manual_seed(4)
    low = (torch.randn(2, 6, 4099, generator=gen) * 3).bfloat16().requires_grad_()
    labels = torch.randint(0, 4099, (2, 6), generator=gen)
    stats = token_stats(low, labels, backend="inductor", temperature=0.8)
    assert_matches_reference(stats, reference(low.detach(), labels, 0.8))
    (stats.logprobs.sum() + stats.entropy.sum()).backward()
    assert low.grad.dtype == torch.bfloat16
    exact = low.detach().float().requires_grad_()
    logp, entropy = naive_logp_entropy(exact, labels, 0.8)
    (logp.sum() + entropy.sum()).backward()
    torch.testing.assert_close(low.grad.float(), exact.grad, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_logits_grad_equals_autograd_and_sliced_views(temperature):
    gen = torch.Generator().manual_seed(2)
    full = (torch.randn(3, 7, 1000, generator=gen) * 4).requires_grad_()
    labels = torch.randint(0, 1000, (3, 6), generator=gen)
    labels[1, 2] = -100
    g_lp, g_h = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    stats = token_stats(full[:, :-1], labels, temperature=temperature, backend="inductor")
    weighted_loss(stats, g_lp, g_h).backward()
    ours, full.grad = full.grad, None
    safe = labels.clamp(min=0)
    g_lp, g_h = g_lp * (labels >= 0), g_h * (labels >= 0)
    weighted_loss(naive_logp_entropy(full[:, :-1], safe, temperature), g_lp, g_h).backward()
    torch.testing.assert_close(ours, full.grad, rtol=1e-4, atol=1e-6)
    assert (ours[:, -1] == 0).all() and (ours[1, 2] == 0).all()


def test_from_hidden_values_and_grads():
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 6, 12, generator=gen).requires_grad_()
    weight = (torch.randn(257, 12, generator=gen) * 0.7).requires_grad_()
    bias = torch.randn(257, generator=gen).requires_grad_()
    labels = torch.randint(0, 257, (2, 6), generator=gen)
    g_lp, g_h = torch.randn(2, 6, generator=gen), torch.randn(2, 6, generator=gen)
    stats = token_stats_from_hidden(
        hidden, weight, labels, bias=bias, temperature=1.4, chunk_size=5, backend="inductor"
    )
    want = token_stats((hidden @ weight.T + bias).detach(), labels, temperature=1.4)
    for a, b in zip(stats, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    weighted_loss(stats, g_lp, g_h).backward()
    ours = [t.grad for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    weighted_loss(naive_logp_entropy(hidden @ weight.T + bias, labels, 1.4), g_lp, g_h).backward()
    for got, t in zip(ours, (hidden, weight, bias), strict=True):
        torch.testing.assert_close(got, t.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_threads_keep_float64_accuracy_and_gradients(chunk_size):
    """Each compiled kernel splits its rows over torch's threads, or for a 1-row chunk the
    row's sums, which changes their summation order (log p_k moved by 1e-5 at |log p_k| = 5
    between 1 and 3 threads): with either count, the float64 bounds hold, and the thread
    count is left as it was."""
    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(2, 16, 70_000, generator=gen) * 3).requires_grad_()
    labels = torch.randint(0, 70_000, (2, 16), generator=gen)
    ref = reference(logits.detach(), labels, 0.9)
    logp, entropy = naive_logp_entropy(logits, labels, 0.9)
    (logp.sum() + entropy.sum()).backward()
    naive_grad, logits.grad = logits.grad, None
    before = torch.get_num_threads()
    for threads in (1, 3):
        torch.set_num_threads(threads)
        try:
            stats = token_stats(
                logits, labels, temperature=0.9, chunk_size=chunk_size, backend="inductor"
            )
            (stats.logprobs.sum() + stats.entropy.sum()).backward()
            assert torch.get_num_threads() == threads
        finally:
            torch.set_num_threads(before)
        assert_matches_reference(stats, ref)
        torch.testing.assert_close(logits.grad, naive_grad, rtol=1e-4, atol=1e-6)
        logits.grad = None


def test_auto_policy_and_the_environment_switch(monkeypatch):
    big = compiled.COMPILE_MIN_ELEMENTS
    before = torch.get_num_threads()
    monkeypatch.delenv(compiled.ENV, raising=False)
    torch.set_num_threads(1)
    try:
        assert resolve_backend("auto", CPU, elements=big) is COMPILED
        assert resolve_backend("auto", CPU, elements=big - 1) is TORCH
        monkeypatch.setenv(compiled.ENV, "1")
        assert resolve_backend("auto", CPU, elements=1) is COMPILED
        monkeypatch.setenv(compiled.ENV, "0")
        assert resolve_backend("auto", CPU, elements=big) is TORCH
        with pytest.raises(ValueError, match="ENTROPY_DYNAMICS_COMPILE=0 in the environment"):
            token_stats(
                torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), backend="inductor"
            )
        monkeypatch.setenv(compiled.ENV, "yes")
        with pytest.raises(ValueError, match=r"must be 0 .*, 1 .* or auto"):
            resolve_backend("auto", CPU, elements=big)
        monkeypatch.delenv(compiled.ENV)
        torch.set_num_threads(2)  # the compiled loops split their rows over both threads
        assert resolve_backend("auto", CPU, elements=big) is COMPILED
    finally:
        torch.set_num_threads(before)
