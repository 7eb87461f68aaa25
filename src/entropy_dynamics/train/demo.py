"""`entropy-dynamics demo`: GRPO vs Clip_B vs Clip_V on the tiny char model, with one seed and budget.

Writes OUT/{grpo,clip_b,clip_v}/ (run directories), OUT/report.md, OUT/report.html,
OUT/figures/ and OUT/summary.json:
    {"duration_s": float, "runs": [{"name": str, "method": str, "seed": int,
      "final": {"entropy": float, "reward": float, "avg@k": float, "pass@k": float, "k": int}}]}
"final" entropy and reward are means over the last `FINAL_WINDOW` training steps (one step of a
small batch is noisy); avg@k and pass@k come from the evaluation after the last step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

FINAL_WINDOW = 10
# The paper's defaults (clip_b mu=2.5; clip_v mu=8.5, max_frac=1e-4) drop no token at the demo's
# size (about 300 response tokens per batch; measured with the strict reward: neither dropped a
# token in 300 steps, and both runs were bit-identical to GRPO; twice the tokens per batch did
# not change that), so the demo uses thresholds that drop about 7 % and 5 % of the tokens.
# docs/training.md gives the measurements behind this choice.
DEFAULT_METHODS = (
    "grpo=grpo",
    "clip_b=clip_b(mu=1.0)",
    "clip_v=clip_v(mu=2.0, max_frac=0.05)",
)
DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"


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
    from entropy_dynamics.train.logging import read_jsonl

    steps = read_jsonl(run_dir / "metrics.jsonl")
    tail = [row for row in steps if dg.ENTROPY_MEAN in row][-window:]
    evals = read_jsonl(run_dir / "eval.jsonl")
    if not tail or not evals:
        raise ValueError(f"run {run_dir}: needs training metrics and an evaluation to summarise")
    last = evals[-1]
    k = int(last["k"])
    return {
        "entropy": sum(r[dg.ENTROPY_MEAN] for r in tail) / len(tail),
        "reward": sum(r[dg.REWARD_MEAN] for r in tail) / len(tail),
        "avg@k": float(last["avg@k"][str(k)]),
        "pass@k": float(last["pass@k"][str(k)]),
        "k": k,
    }


def run_demo(*, config=None, out_dir: Path = Path("runs/demo"), overrides=(), methods=None) -> dict:
    """Train each method from the same warm start and seed, then write the report and summary."""
    from entropy_dynamics.report import write_report
    from entropy_dynamics.train.config import load_config
    from entropy_dynamics.train.loop import train

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = config or DEFAULT_CONFIG
    runs, run_dirs = [], []
    for name, spec in _parse_methods(methods):
        run_dir = out_dir / name
        cfg = load_config(config, [*overrides, f"method.spec={spec}", f"logging.run_dir={run_dir}"])
        print(f"[demo] training {name} ({spec}) for {cfg.steps} steps -> {run_dir}", flush=True)
        train(cfg, overwrite=True)  # the demo owns OUT: a rerun replaces its runs
        run_dirs.append(run_dir)
        runs.append({"name": name, "method": spec, "seed": cfg.seed})
    write_report(run_dirs, out_dir, title="entropy-dynamics demo: GRPO vs Clip_B vs Clip_V")
    for run, run_dir in zip(runs, run_dirs, strict=True):
        run["final"] = final_summary(run_dir)
    summary = {"duration_s": time.perf_counter() - started, "runs": runs}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
