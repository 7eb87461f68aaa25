"""Cost of a method's own work (plan + per-token loss) relative to the token statistics.

    .venv/bin/python benchmarks/bench_methods.py [--vocab 4096] [--stats-rows 32] [--repeats 3]
                                                 [--threads N] [--quick]

Batch: B = 512 sequences x T = 1024 tokens (90 % valid), fp32. For each of grpo, clip_b and
clip_v: the time of ``method.plan(batch)`` plus ``method.token_loss(...)`` (forward; logprobs
require grad), best of ``--repeats``. Times are process CPU time (``time.process_time``, all
threads), which shared, overloaded machines disturb far less than wall-clock time. Baseline: ``token_stats`` (forward) on ``[rows, T, V]``
logits for ``--stats-rows`` rows, scaled linearly to 512 rows (it streams rows, so its cost is
linear in them; this keeps memory at rows x T x V x 4 bytes). The printed ratio is
method / token_stats on the same 512 x 1024 batch at the chosen V; the statistics' cost grows
linearly with V, so the last column extrapolates to Qwen's V = 151936. A second baseline, one
``torch.logsumexp`` pass over the same logits, is the floor of any full-vocabulary statistic.
Goal: <= 2 %.
"""

from __future__ import annotations

import argparse
import time

import torch

from entropy_dynamics.methods import TokenBatch, build
from entropy_dynamics.token_stats import token_stats

B, T = 512, 1024
QWEN_VOCAB = 151936


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def make_batch(seed: int = 0) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) < 0.9
    logprobs = -torch.rand(B, T, generator=g) * 4
    entropy = torch.rand(B, T, generator=g) * 2
    discriminator = logprobs.exp() * (entropy + logprobs)
    return TokenBatch(
        mask=mask,
        advantages=torch.randn(B, 1, generator=g).expand(B, T).contiguous(),
        logprobs=logprobs,
        old_logprobs=logprobs + 0.05 * torch.randn(B, T, generator=g),
        entropy=entropy,
        discriminator=discriminator,
        baseline=discriminator + 0.01 * torch.randn(B, T, generator=g),
    )


def method_time(spec: str, batch: TokenBatch, repeats: int) -> float:
    method = build(spec)
    logprobs = batch.logprobs.clone().requires_grad_()

    def run():
        plan = method.plan(batch)
        method.token_loss(
            logprobs=logprobs,
            old_logprobs=batch.old_logprobs,
            advantages=batch.advantages,
            plan=plan,
        )

    run()  # warm-up
    return best_of(run, repeats)


def stats_time(rows: int, vocab: int, repeats: int) -> tuple[float, float]:
    """(token_stats, logsumexp) seconds for the whole B x T batch, scaled from ``rows`` rows."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(rows, T, vocab, generator=g)
    labels = torch.randint(0, vocab, (rows, T), generator=g)
    token_stats(logits, labels)  # warm-up
    stats = best_of(lambda: token_stats(logits, labels), repeats) * B / rows
    lse = best_of(lambda: torch.logsumexp(logits, dim=-1), repeats) * B / rows
    return stats, lse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--stats-rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--quick", action="store_true", help="baseline on 4 rows, best of 1 (seconds)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.stats_rows, args.repeats = 4, 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {B} x {T}")
    stats, lse = stats_time(args.stats_rows, args.vocab, args.repeats)
    print(
        f"V = {args.vocab}, for {B} x {T} (measured on {args.stats_rows} rows, scaled "
        f"x{B // args.stats_rows}): token_stats {stats:.3f} s, logsumexp {lse:.3f} s (CPU time)"
    )
    batch = make_batch()
    print(
        f"{'method':<8}{'plan+loss (s)':>15}{'/ token_stats':>15}{'/ logsumexp':>13}"
        f"{'/ token_stats @ V=151936':>26}"
    )
    for spec in ("grpo", "clip_b", "clip_v"):
        seconds = method_time(spec, batch, args.repeats)
        ratio = seconds / stats
        print(
            f"{spec:<8}{seconds:>15.4f}{ratio:>15.2%}{seconds / lse:>13.2%}"
            f"{ratio * args.vocab / QWEN_VOCAB:>26.3%}"
        )


if __name__ == "__main__":
    main()
