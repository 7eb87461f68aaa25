"""Speed and peak memory of `token_stats_from_hidden` against the bare output-layer matmul.

    .venv/bin/python benchmarks/bench_from_hidden.py [--quick] [--rows 2048] [--repeats 3] [--threads N]

Hidden states `[1, rows, 896]` (Qwen2.5-0.5B's D), output layer `[151936, 896]`, fp32 (logits
come out with std about 3). `--rows` defaults to 2048 (`--quick`: 256). Variants, each in a
fresh subprocess (see _util.py):
  matmul              `hidden @ weight.T`, the bare cost of the logits (backward: of their sum).
  matmul+naive        the matmul, then the naive full-softmax statistics (bench_token_stats.py).
  matmul+token_stats  the matmul, then the streamed statistics over the held logits.
  from_hidden         `entropy_dynamics.token_stats_from_hidden`: no `[rows, V]` logits held.
"forward+backward" backpropagates `logprobs.sum() + entropy.sum()` (matmul: `logits.sum()`)
into `hidden` and `weight`; its peak includes the `[V, D]` weight gradient (545 MiB).
Goals (issue 2): from_hidden time <= 1.25x the bare matmul; peak extra memory <= 1 GiB.
"""

from __future__ import annotations

import torch

import _util
from bench_token_stats import naive_stats
from entropy_dynamics.token_stats import resolve_backend, token_stats, token_stats_from_hidden

VOCAB, HIDDEN = 151936, 896
VARIANTS = ("matmul", "matmul+naive", "matmul+token_stats", "from_hidden")


def run_case(case: dict) -> _util.Result:
    backward = case["pass"] == "forward+backward"
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, case["rows"], HIDDEN, generator=gen).requires_grad_(backward)
    weight = torch.randn(VOCAB, HIDDEN, generator=gen).mul_(3.0 / HIDDEN**0.5)
    weight.requires_grad_(backward)
    labels = torch.randint(0, VOCAB, (1, case["rows"]), generator=gen)
    variant = case["variant"]

    def once() -> None:
        if variant == "from_hidden":
            logprobs, entropy, *_ = token_stats_from_hidden(hidden, weight, labels)
        else:
            logits = hidden @ weight.T  # [1, rows, V]
            if variant == "matmul":
                if backward:
                    logits.sum().backward()
                return
            stats = naive_stats if variant == "matmul+naive" else token_stats
            logprobs, entropy, *_ = stats(logits, labels)
        if backward:
            (logprobs.sum() + entropy.sum()).backward()

    def run() -> None:
        once()
        hidden.grad = weight.grad = None

    # Not timed: the kernels that "auto" picks for this pass (compiled ones, with ~250 MiB of
    # compiler) are ready beforehand, as in a training run after its first step.
    resolve_backend("auto", hidden.device, hidden.dtype, elements=case["rows"] * VOCAB)
    return _util.measure(run, case["repeats"])


def main() -> None:
    parser = _util.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="B * T (default 2048; quick 256)")
    parser.add_argument("--passes", default="forward,forward+backward", help="comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    args = parser.parse_args()
    if args.child:
        _util.child_entry(args.child, run_case)
        return
    rows = args.rows or (256 if args.quick else 2048)
    print(
        f"bench_from_hidden: hidden [1, {rows}, {HIDDEN}], weight [{VOCAB}, {HIDDEN}] fp32, "
        f"best of {args.repeats}; {_util.machine_line(args.threads)}"
    )
    header = ["variant", "pass", "wall s", "CPU s", "CPU / matmul", "peak extra MiB"]
    table = []
    for pass_ in args.passes.split(","):
        results = {}
        for variant in args.variants.split(","):
            case = {"variant": variant, "pass": pass_, "rows": rows, "repeats": args.repeats}
            results[variant] = _util.run_child(__file__, case, args.threads, args.timeout)
        base = results.get("matmul")
        for variant, res in results.items():
            if isinstance(res, str):
                table.append([variant, pass_, res, "", "", ""])
                continue
            ratio = f"{res.cpu_s / base.cpu_s:.2f}x" if isinstance(base, _util.Result) else "n/a"
            table.append(
                [
                    variant,
                    pass_,
                    f"{res.wall_s:.3f}",
                    f"{res.cpu_s:.3f}",
                    ratio,
                    f"{res.peak_extra_mib:.0f}",
                ]
            )
    print(_util.format_table(header, table))


if __name__ == "__main__":
    main()
