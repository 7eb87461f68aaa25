"""GPU speed and peak memory of token_stats (Triton and torch backends) against TRL, verl, Liger.

    python benchmarks/bench_gpu.py [--quick] [--repeats 10] [--rows 8192] [--dims 896,3584]

Needs CUDA: without it the script says so and exits with code 77 (run_all.py reports it as
skipped). One run, side by side, every ratio against a baseline measured in the same run:

  logits `[rows, 151936]` bf16 (`--rows 8192` = `[8, 1024]` tokens), N(0, 3^2):
    read          `logits.sum(-1, dtype=fp32)`: one plain read of the logits (the floor);
                  forward+backward adds one write of a `[rows, V]` gradient
    ours-triton   token_stats(..., backend="triton"): log p_k, H, S_*, N
    ours-torch    token_stats(..., backend="torch")
    ours-inductor token_stats(..., backend="inductor"): the block loops of the CPU path under
                  torch.compile, which on CUDA generates Triton kernels (issue 17 asks which
                  of the two kernels is faster for each shape and dtype)
    trl           trl.kernels.logprob_entropy.selective_log_softmax_and_entropy (log p_k, H)
    naive         fp32 log_softmax over [rows, V], then H, S_*, N
  from hidden, D in `--dims`, hidden `[rows, D]`, weight `[V, D]` bf16:
    matmul        `hidden @ weight.T` (forward+backward: with a given `[rows, V]` gradient)
    ours-triton / ours-torch / ours-inductor   token_stats_from_hidden
    verl          verl.utils.kernel.linear_cross_entropy (log p_k, H)
    liger         liger_kernel's fused linear cross-entropy (loss only)

Time is the median of `--repeats` runs (CUDA events) after 2 warm-ups; "peak extra" is
`max_memory_allocated` minus the memory held before the call (inputs, and for
forward+backward the gradient buffers autograd must produce, count as held). Goals (issue 12):
logits forward within 1.2x of `read` and no slower than `trl`; from hidden, forward+backward
within 1.15x of `matmul` with under 1 GiB extra at 8192 rows. Variants whose package is not
importable are listed as such. `--smoke` runs tiny shapes, on CPU under TRITON_INTERPRET=1 too,
to check the script itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch

from entropy_dynamics.token_stats import token_stats, token_stats_from_hidden

VOCAB = 151936
MiB = 1 << 20
SKIPPED = 77  # run_all.py reports this exit code as "skipped"


def naive(logits, labels):
    logp = torch.log_softmax(logits.float(), dim=-1)  # [N, V] fp32
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    logp_k = logp.gather(-1, labels[:, None]).squeeze(-1)
    s_star = logp_k.exp() * (entropy + logp_k)
    baseline = (p * p * (entropy[:, None] + logp)).sum(-1)
    return logp_k, entropy, s_star.detach(), baseline.detach()


def optional(name: str, load: Callable[[], Callable]) -> Callable | str:
    """The function `load()` returns, or a note saying why it is not available."""
    try:
        return load()
    except Exception as err:  # an optional package missing or of another version
        return f"{name} not importable ({type(err).__name__}: {err})"


def load_trl():
    from trl.kernels.logprob_entropy import selective_log_softmax_and_entropy

    return lambda logits, labels: selective_log_softmax_and_entropy(logits, labels)


def load_verl():
    try:
        import verl  # noqa: F401
    except ImportError:
        _verl_kernels_only()
    from verl.utils.kernel.linear_cross_entropy import linear_cross_entropy

    return lambda hidden, weight, labels: linear_cross_entropy(hidden, weight, labels, 1.0)


def _verl_kernels_only() -> None:
    """Make verl's kernel modules importable where verl's package `__init__` is not.

    That `__init__` imports verl's data protocol, hence Ray and tensordict, which the kernel
    never uses and the borrowed GPU machine lacks (Ray's wheel alone is over the 64 MiB that
    travels with a run). The installed `verl` directory is registered as a bare package, so
    `verl.utils.kernel` and what it imports are verl's own files, unchanged (they need
    omegaconf, a small wheel). Without verl installed this changes nothing.
    """
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType("verl")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["verl"] = package


def load_liger():
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return lambda hidden, weight, labels: liger_fused_linear_cross_entropy(hidden, weight, labels)


class Timer:
    """Median milliseconds of `fn()` and its peak extra memory (CUDA events / perf_counter)."""

    def __init__(self, device: torch.device, repeats: int):
        self.cuda = device.type == "cuda"
        self.repeats = repeats

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, fn: Callable[[], object]) -> tuple[float, float]:
        for _ in range(2):
            fn()
        self.sync()
        times = []
        for _ in range(self.repeats):
            if self.cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        peak = float("nan")
        if self.cuda:
            torch.cuda.empty_cache()
            held = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - held) / MiB
        return statistics.median(times), peak


def backward_of(make_outputs, leaves):
    """A forward+backward closure: `sum` of the first two outputs (log p_k, H) or the loss."""

    def step():
        for leaf in leaves:
            leaf.grad = None
        out = make_outputs()
        loss = out if isinstance(out, torch.Tensor) else out[0].sum() + out[1].sum()
        loss.backward()

    return step


def logits_cases(rows, vocab, device):
    gen = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(rows, vocab, generator=gen, device=device) * 3).bfloat16()
    labels = torch.randint(0, vocab, (rows,), generator=gen, device=device)
    trl = optional("trl", load_trl)
    variants = {
        "ours-triton": lambda z: token_stats(z, labels, backend="triton"),
        "ours-torch": lambda z: token_stats(z, labels, backend="torch"),
        "ours-inductor": lambda z: token_stats(z, labels, backend="inductor"),
        "trl": trl if isinstance(trl, str) else (lambda z: trl(z, labels)),
        "naive": lambda z: naive(z, labels),
    }
    forward = {"read": lambda: logits.sum(-1, dtype=torch.float32)}
    with_grad = logits.clone().requires_grad_()
    grad_buffer = torch.empty_like(logits)
    both = {"read": lambda: (logits.sum(-1, dtype=torch.float32), grad_buffer.copy_(logits))}
    for name, fn in variants.items():
        if isinstance(fn, str):
            forward[name] = both[name] = fn
            continue
        forward[name] = lambda fn=fn: fn(logits)
        both[name] = backward_of(lambda fn=fn: fn(with_grad), [with_grad])
    return {f"logits [{rows}, {vocab}] bf16, forward": forward,
            f"logits [{rows}, {vocab}] bf16, forward+backward": both}  # fmt: skip


def hidden_cases(rows, vocab, dim, device):
    gen = torch.Generator(device=device).manual_seed(1)
    hidden = torch.randn(rows, dim, generator=gen, device=device).bfloat16()
    weight = (torch.randn(vocab, dim, generator=gen, device=device) / dim**0.5).bfloat16()
    labels = torch.randint(0, vocab, (rows,), generator=gen, device=device)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    grad_logits = torch.randn(rows, vocab, generator=gen, device=device).bfloat16() * 1e-3
    verl, liger = optional("verl", load_verl), optional("liger", load_liger)
    variants = {
        "ours-triton": lambda a, b: token_stats_from_hidden(a, b, labels, backend="triton"),
        "ours-torch": lambda a, b: token_stats_from_hidden(a, b, labels, backend="torch"),
        "ours-inductor": lambda a, b: token_stats_from_hidden(a, b, labels, backend="inductor"),
        "verl": verl if isinstance(verl, str) else (lambda a, b: verl(a, b, labels)),
        "liger": liger if isinstance(liger, str) else (lambda a, b: liger(a, b, labels)),
    }

    def matmul_both():
        h.grad = w.grad = None
        (h @ w.T).backward(grad_logits)

    forward = {"matmul": lambda: hidden @ weight.T}
    both = {"matmul": matmul_both}
    for name, fn in variants.items():
        if isinstance(fn, str):
            forward[name] = both[name] = fn
            continue
        forward[name] = lambda fn=fn: fn(hidden, weight)
        both[name] = backward_of(lambda fn=fn: fn(h, w), [h, w])
    return {f"hidden [{rows}, {dim}] @ W^T [{dim}, {vocab}] bf16, forward": forward,
            f"hidden [{rows}, {dim}] @ W^T [{dim}, {vocab}] bf16, forward+backward": both}  # fmt: skip


def run_case(title, variants, timer) -> list[str]:
    lines = [f"\n{title}\n", "| variant | ms | x baseline | peak extra MiB |", "|---|---|---|---|"]
    base = None
    for name, fn in variants.items():
        if isinstance(fn, str):
            lines.append(f"| {name} | {fn} | | |")
            continue
        try:
            with torch.no_grad() if "backward" not in title else torch.enable_grad():
                ms, peak = timer.run(fn)
        except Exception as err:  # report and go on: one failing variant must not hide the rest
            lines.append(f"| {name} | failed: {type(err).__name__}: {err} | | |")
            continue
        base = ms if base is None else base  # the first variant of a case is its baseline
        lines.append(f"| {name} | {ms:.3f} | {ms / base:.2f} | {peak:.0f} |")
    print("\n".join(lines), flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2048 rows, D = 896 only")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; CPU allowed")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--dims", default="896,3584")
    parser.add_argument("--threads", type=int, default=None, help="ignored (run_all passes it)")
    parser.add_argument("--timeout", type=float, default=None, help="ignored (run_all passes it)")
    args = parser.parse_args()
    rows, vocab, dims = args.rows, VOCAB, [int(d) for d in args.dims.split(",")]
    if args.quick:
        rows, dims = 2048, dims[:1]
    if args.smoke:
        rows, vocab, dims, args.repeats = 8, 3001, [32], 1
    if not torch.cuda.is_available() and not args.smoke:
        print(
            "bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False): nothing "
            "measured. The CPU benchmarks are benchmarks/bench_token_stats.py and "
            "bench_from_hidden.py; `--smoke` checks this script on CPU under TRITON_INTERPRET=1.",
            file=sys.stderr,
        )
        return SKIPPED
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", end="")
    import triton

    print(f", triton {triton.__version__}")
    timer = Timer(device, args.repeats)
    cases = logits_cases(rows, vocab, device)
    for dim in dims:
        cases.update(hidden_cases(rows, vocab, dim, device))
    for title, variants in cases.items():
        run_case(title, variants, timer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
