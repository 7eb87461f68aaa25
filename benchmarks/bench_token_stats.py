"""Speed and peak memory of `token_stats` against the naive full-softmax path and one logsumexp.

    .venv/bin/python benchmarks/bench_token_stats.py [--quick] [--repeats 3] [--threads N] [--sweep]

Logits `[4, 1024, 151936]` (Qwen's vocabulary; `--quick`: `[1, 256, 151936]`), N(0, 3^2), in fp32
and bf16. Variants, each in a fresh subprocess (see _util.py):
  exp floor    `torch.exp` over the logits in 8-row chunks into one fp32 buffer (in cache): one
               `exp` per logit and nothing else, the floor of any statistic of the softmax.
  logsumexp    `torch.logsumexp(logits, -1)` (forward only).
  naive        `log_softmax` over `[B, T, V]` (upcast to fp32), gather, `p = exp(log p)`,
               `H = -sum p log p`, `S_*`, `N = sum p^2 (H + log p)`; gradients through log p_k, H.
  token_stats  `entropy_dynamics.token_stats` (default chunk size) with `backend="torch"`
               (eager chunks) and `backend="inductor"` (compiled chunks, ready before timing).
  first call   a fresh process's first `backend="inductor"` call on 2 rows (wall s): loads the
               kernels from inductor's cache, or compiles them on a machine's first run.
"forward+backward" backpropagates `logprobs.sum() + entropy.sum()`; its peak includes the
`[B, T, V]` gradient of the logits, which every path must produce.
Goals (issue 2): token_stats forward time <= 1.5x logsumexp; peak extra memory <= 5 % of naive.
Goals (issue 17): compiled forward <= 1.3x the exp floor (1 thread), forward+backward <= 2.5x.
`--sweep` adds forward-only token_stats rows for chunk sizes 1 ... 32.
"""

from __future__ import annotations

import torch

import _util  # benchmarks/ is on sys.path when a script here runs
from entropy_dynamics.token_stats import token_stats

FULL_SHAPE = (4, 1024, 151936)
QUICK_SHAPE = (1, 256, 151936)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def naive_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The straightforward full-softmax path: every `[B, T, V]` intermediate materialised."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    p = logp.exp()  # [B, T, V]
    entropy = -(p * logp).sum(-1)
    logprobs = logp.gather(-1, labels[..., None]).squeeze(-1)
    with torch.no_grad():  # statistics for masks: no graph
        h = entropy.detach()
        discriminator = logprobs.detach().exp() * (h + logprobs.detach())
        baseline = (p.detach() ** 2 * (h[..., None] + logp.detach())).sum(-1)
    return logprobs, entropy, discriminator, baseline


def make_inputs(shape: tuple[int, int, int], dtype: torch.dtype, grad: bool):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, dtype=dtype, generator=gen).mul_(3.0)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    return logits.requires_grad_(grad), labels


def run_case(case: dict) -> _util.Result:
    shape, dtype = tuple(case["shape"]), DTYPES[case["dtype"]]
    backward = case["pass"] == "forward+backward"
    logits, labels = make_inputs(shape, dtype, backward)

    rows = logits.detach().view(-1, shape[-1])
    buffer = torch.empty(8, shape[-1])
    variant, backend = case["variant"], case.get("backend", "torch")

    def once() -> None:
        if variant == "exp floor":
            for start in range(0, rows.shape[0], 8):
                torch.exp(rows[start : start + 8], out=buffer)
            return
        if variant == "logsumexp":
            torch.logsumexp(logits, dim=-1)
            return
        if variant == "naive":
            logprobs, entropy, *_ = naive_stats(logits, labels)
        else:
            logprobs, entropy, *_ = token_stats(
                logits, labels, chunk_size=case.get("chunk"), backend=backend
            )
        if backward:
            (logprobs.sum() + entropy.sum()).backward()
            logits.grad = None

    if variant == "first call":  # a fresh process's first call: loads (or compiles) kernels
        return _util.measure(
            lambda: token_stats(logits[:1, :2], labels[:1, :2], backend=backend), 1
        )
    if variant == "token_stats":  # not timed: the kernels are ready before the timed calls
        token_stats(logits[:1, :2], labels[:1, :2], backend=backend)
    return _util.measure(once, case["repeats"])


def naive_fits(shape: tuple[int, int, int], backward: bool) -> tuple[bool, float]:
    """The naive path holds about 5 (forward) to 7 (with backward) fp32 `[B, T, V]` tensors."""
    need = (7 if backward else 5) * torch.Size(shape).numel() * 4 / _util.MiB + 3 * 1024
    free = _util.available_mib()
    return (free is None or free > need), need


def main() -> None:
    parser = _util.arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="token_stats chunk sizes 1 ... 32")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive path (slow)")
    args = parser.parse_args()
    if args.child:
        _util.child_entry(args.child, run_case)
        return
    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    print(
        f"bench_token_stats: logits {list(shape)}, best of {args.repeats}; {_util.machine_line(args.threads)}"
    )
    header = [
        "variant",
        "dtype",
        "pass",
        "wall s",
        "CPU s",
        "CPU / exp floor",
        "CPU / logsumexp",
        "peak extra MiB",
        "% of naive",
    ]
    rows = []
    for dtype in DTYPES:
        cases = [("exp floor", "forward", None), ("logsumexp", "forward", None)]
        cases += [("first call inductor", "forward", None)]
        for pass_ in ("forward", "forward+backward"):
            if not args.no_naive:
                cases += [("naive", pass_, None)]
            cases += [("token_stats", pass_, None), ("token_stats inductor", pass_, None)]
        if args.sweep:
            cases += [("token_stats", "forward", c) for c in (1, 2, 4, 8, 16, 32)]
        results = {}
        for name, pass_, chunk in cases:
            variant = name.partition(" inductor")[0]
            variant = name if name == "exp floor" else variant
            fits, need = naive_fits(shape, pass_ != "forward")
            if variant == "naive" and not fits:
                results[(variant, pass_, chunk)] = f"skipped: needs ~{need / 1024:.0f} GiB free"
                continue
            case = {
                "variant": variant,
                "backend": "inductor" if name.endswith("inductor") else "torch",
                "pass": pass_,
                "dtype": dtype,
                "shape": list(shape),
                "chunk": chunk,
                "repeats": args.repeats,
            }
            results[(name, pass_, chunk)] = _util.run_child(
                __file__, case, args.threads, args.timeout
            )
        rows += _rows(results, dtype)
    print(_util.format_table(header, rows))


def _rows(results: dict, dtype: str) -> list[list[str]]:
    lse = results[("logsumexp", "forward", None)]
    floor = results[("exp floor", "forward", None)]
    rows = []
    for (variant, pass_, chunk), res in results.items():
        name = variant if chunk is None else f"{variant} (chunk {chunk})"
        if isinstance(res, str):
            rows.append([name, dtype, pass_, res, "", "", "", "", ""])
            continue
        naive = results.get(("naive", pass_, None))
        ratio = f"{res.cpu_s / lse.cpu_s:.2f}x" if isinstance(lse, _util.Result) else "n/a"
        to_floor = f"{res.cpu_s / floor.cpu_s:.2f}x" if isinstance(floor, _util.Result) else "n/a"
        share = (
            f"{100 * res.peak_extra_mib / naive.peak_extra_mib:.1f} %"
            if isinstance(naive, _util.Result) and naive.peak_extra_mib > 0
            else "n/a"
        )
        rows.append(
            [
                name,
                dtype,
                pass_,
                f"{res.wall_s:.3f}",
                f"{res.cpu_s:.3f}",
                to_floor,
                ratio,
                f"{res.peak_extra_mib:.0f}",
                share,
            ]
        )
    return rows


if __name__ == "__main__":
    main()
