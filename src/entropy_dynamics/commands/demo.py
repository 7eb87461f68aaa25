"""`entropy-dynamics demo`: GRPO vs Clip_B vs Clip_V on the tiny char model, 3 seeds each.

The methods of one seed share its cached SFT warm start; every run has the same budget. The
loop evaluates the held-out split before the first update (step 0) and every
`logging.eval_every` steps. Writes
OUT/NAME/seedS/ (run directories), OUT/report.md (the per-run report plus the demo's start-vs-
final table), OUT/report.html, OUT/figures/ (with figures/demo.png: seed bands) and
OUT/summary.json:
    {"duration_s": float, "seeds": [int], "k": int,
     "runs": [{"name": str, "method": str, "seed": int,
       "start": {"avg@k", "pass@k", "greedy"}, "final": {"entropy", "reward", "avg@k", "pass@k",
       "greedy", "k"}}],
     "methods": {NAME: {"start": {metric: mean}, "final": {metric: mean},
       "change": {metric: {"mean", "lo", "hi"}}, "per_seed_change": {metric: [float]}}},
     "versus_first": {NAME: {metric or "entropy": {"mean", "lo", "hi"}}}}
"final" entropy and reward are means over the last `FINAL_WINDOW` training steps; the held-out
metrics come from the evaluation after the last step, "start" from the one at step 0. "change"
is final - start, mean over seeds, with a 95 % bootstrap interval over held-out problems
(`experiments.common.bootstrap_difference`); "versus_first" is each method's final minus the
first method's (GRPO's), the same way, and for entropy a Student-t interval over seeds of the
per-seed difference (`seed_interval`). A difference is real when its interval excludes 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from entropy_dynamics.commands.demo_figure import draw_demo
from entropy_dynamics.experiments.common import bootstrap_difference, per_problem, seed_interval
from entropy_dynamics.train.config import load_config
from entropy_dynamics.train.logging import eval_headline, read_jsonl

FINAL_WINDOW = 10
# The paper's defaults (clip_b mu=2.5; clip_v mu=8.5, max_frac=1e-4) drop no token at the demo's
# batch size, so the demo uses thresholds chosen for the share of tokens they drop (a few %);
# docs/training.md gives the measurements behind this choice.
DEFAULT_METHODS = (
    "grpo=grpo",
    "clip_b=clip_b(mu=1.0)",
    "clip_v=clip_v(mu=2.0, max_frac=0.05)",
)
DEFAULT_SEEDS = (0, 1, 2)
# package data (configs/ at the repository root links here), so an installed wheel has it too
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
HELD_OUT = ("avg@k", "pass@k", "greedy")  # the held-out metrics compared with the start


def _parse_methods(methods) -> list[tuple[str, str]]:
    pairs = []
    for item in methods or DEFAULT_METHODS:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ValueError(f"methods: {item!r} must look like name=spec, e.g. clip_b=clip_b")
        pairs.append((name, spec))
    return pairs


def final_summary(run_dir: Path, *, window: int = FINAL_WINDOW) -> dict:
    """The run's "final" block of summary.json, read from its metrics.jsonl and eval.jsonl."""
    from entropy_dynamics import diagnostics as dg

    steps = read_jsonl(run_dir / "metrics.jsonl")
    tail = [row for row in steps if dg.ENTROPY_MEAN in row][-window:]
    evals = read_jsonl(run_dir / "eval.jsonl")
    if not tail or not evals:
        raise ValueError(f"run {run_dir}: needs training metrics and an evaluation to summarise")
    return {
        "entropy": sum(r[dg.ENTROPY_MEAN] for r in tail) / len(tail),
        "reward": sum(r[dg.REWARD_MEAN] for r in tail) / len(tail),
        **eval_headline(evals[-1]),
        "k": int(evals[-1]["k"]),
    }


def _last_step(run_dir: Path) -> int:
    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    return int(rows[-1]["step"]) if rows else 0


def _problem_values(evaluation: dict, metric: str):
    """Per-problem values of one evaluation for `metric` (greedy: one 0/1 per problem)."""
    import numpy as np

    if metric == "greedy":
        n = int(evaluation["num_prompts"])
        right = round(float(evaluation["greedy_acc"]) * n)
        return np.array([1.0] * right + [0.0] * (n - right))
    return per_problem(evaluation["pass_rate_hist"], metric.split("@")[0])


def compare_to_start(run_dirs: list[Path]) -> dict:
    """One method's seeds: mean start and final held-out metrics and the change with its interval.

    Needs an evaluation at step 0 (`logging.eval_every` > 0) and one after the last step.
    """
    firsts, lasts = [], []
    for run_dir in run_dirs:
        evals = read_jsonl(Path(run_dir) / "eval.jsonl")
        if not evals or evals[0]["step"] != 0:
            raise ValueError(f"run {run_dir}: no evaluation at step 0; set logging.eval_every > 0")
        firsts.append(evals[0])
        lasts.append(evals[-1])
    mean = lambda rows, m: sum(eval_headline(r)[m] for r in rows) / len(rows)  # noqa: E731
    return {
        "start": {m: mean(firsts, m) for m in HELD_OUT},
        "final": {m: mean(lasts, m) for m in HELD_OUT},
        "change": {
            m: bootstrap_difference(
                [_problem_values(e, m) for e in firsts], [_problem_values(e, m) for e in lasts]
            )
            for m in HELD_OUT
        },
        "per_seed_change": {
            m: [
                eval_headline(b)[m] - eval_headline(a)[m]
                for a, b in zip(firsts, lasts, strict=True)
            ]
            for m in HELD_OUT
        },
    }


def compare_methods(first: list[Path], other: list[Path]) -> dict:
    """`other`'s seeds minus `first`'s: final held-out metrics with bootstrap intervals over
    problems, and final entropy with a Student-t interval over seeds (paired by seed)."""
    last = lambda dirs: [read_jsonl(Path(d) / "eval.jsonl")[-1] for d in dirs]  # noqa: E731
    a, b = last(first), last(other)
    out = {
        m: bootstrap_difference(
            [_problem_values(e, m) for e in a], [_problem_values(e, m) for e in b]
        )
        for m in HELD_OUT
    }
    gaps = [
        final_summary(Path(o))["entropy"] - final_summary(Path(f))["entropy"]
        for f, o in zip(first, other, strict=True)
    ]
    out["entropy"] = seed_interval(gaps)
    return out


def run_demo(
    *,
    config=None,
    out_dir: Path = Path("runs/demo"),
    overrides=(),
    methods=None,
    seeds=DEFAULT_SEEDS,
) -> dict:
    """Train each method for each seed from the same warm start, then write report and summary."""
    from entropy_dynamics.report import write_report
    from entropy_dynamics.train.loop import train

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = config or DEFAULT_CONFIG
    runs, groups = [], {}
    for name, spec in _parse_methods(methods):
        for seed in seeds:
            run_dir = out_dir / name / f"seed{seed}"
            cfg = load_config(
                config,
                [*overrides, f"method.spec={spec}", f"seed={seed}", f"logging.run_dir={run_dir}"],
            )
            if not cfg.logging.eval_every:
                raise ValueError(
                    "demo: logging.eval_every must be > 0: the demo compares every run with its "
                    "evaluation at step 0, before the first update"
                )
            print(f"[demo] training {name} ({spec}) seed {seed}, {cfg.steps} steps", flush=True)
            train(cfg, overwrite=True)  # the demo owns OUT: a rerun replaces its runs
            if _last_step(run_dir) < cfg.steps:  # Ctrl-C / SIGTERM stopped the run: stop here
                raise KeyboardInterrupt(f"demo stopped during {name} seed {seed}")
            groups.setdefault(name, []).append(run_dir)
            runs.append({"name": name, "method": spec, "seed": seed, "run_dir": run_dir})
    run_dirs = [run.pop("run_dir") for run in runs]
    write_report(run_dirs, out_dir, title="entropy-dynamics demo: GRPO vs Clip_B vs Clip_V")

    for run, run_dir in zip(runs, run_dirs, strict=True):
        run["start"] = eval_headline(read_jsonl(run_dir / "eval.jsonl")[0])
        run["final"] = final_summary(run_dir)
    names = list(groups)
    summary = {
        "seeds": list(seeds),
        "k": runs[0]["final"]["k"],
        "runs": runs,
        "methods": {name: compare_to_start(dirs) for name, dirs in groups.items()},
        "versus_first": {n: compare_methods(groups[names[0]], groups[n]) for n in names[1:]},
    }

    draw_demo(groups, out_dir / "figures" / "demo.png")
    with (out_dir / "report.md").open("a", encoding="utf-8") as report:
        report.write("\n" + demo_markdown(summary))
    summary = {"duration_s": time.perf_counter() - started, **summary}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _interval(change: dict) -> str:
    if change["lo"] is None:  # one seed: no interval
        return f"{change['mean']:+.3f} (one seed, no interval)"
    return f"{change['mean']:+.3f} [{change['lo']:+.3f}, {change['hi']:+.3f}]"


def demo_markdown(summary: dict) -> str:
    """The demo's held-out table: start (step 0) vs final per method, changes with intervals."""
    k, n = summary["k"], len(summary["seeds"])
    label = {"avg@k": f"avg@{k}", "pass@k": f"pass@{k}", "greedy": "greedy"}
    lines = [
        f"## Held-out accuracy: start (step 0) vs after RL, {n} seeds",
        "",
        "Mean over seeds; the change is final - start with a 95 % bootstrap interval over the "
        "held-out problems (pooled over seeds); it is real when the interval excludes 0.",
        "",
        "| method | "
        + " | ".join(f"{label[m]} start -> final (change [95 % CI])" for m in HELD_OUT)
        + " | seeds that rose (avg) |",
        "|---|" + "---|" * (len(HELD_OUT) + 1),
    ]
    for name, block in summary["methods"].items():
        cells = [
            f"{block['start'][m]:.3f} -> {block['final'][m]:.3f} ({_interval(block['change'][m])})"
            for m in HELD_OUT
        ]
        rose = sum(c > 0 for c in block["per_seed_change"]["avg@k"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rose}/{n} |")
    first = next(iter(summary["methods"]))
    if summary["versus_first"]:
        lines += [
            "",
            f"Final values minus {first}'s: held-out metrics with a 95 % bootstrap interval over "
            f"problems; entropy (mean of the last {FINAL_WINDOW} steps) with a 95 % Student-t "
            "interval over seeds of the per-seed difference:",
            "",
            "| method | " + " | ".join(label[m] for m in HELD_OUT) + " | entropy |",
            "|---|" + "---|" * (len(HELD_OUT) + 1),
        ]
        for name, block in summary["versus_first"].items():
            cells = [_interval(block[m]) for m in (*HELD_OUT, "entropy")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
