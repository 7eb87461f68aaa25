"""Experiment ``smollm2``: entropy control on a real pretrained model (SmolLM2-135M-Instruct).

``entropy-dynamics reproduce smollm2 [--quick]``; not part of ``reproduce all`` (about 100 min on
2 cores). The packaged ``configs/smollm2.yaml`` (reasoning-gym ``chain_sum``, two one-digit
terms, through the chat template, no warm start: the instruct model starts well above 0 and
below 1) with the overrides in ``SIZES``: 4 prompts x 8 samples of at most 16 tokens per step,
lr 1e-5, one fused micro-batch. Methods (``METHODS``): GRPO; Clip_B and Clip_V at the paper's
thresholds; at thresholds chosen for the share they drop (the demo's, a few % of tokens); and
our ``target_entropy`` controller (Clip_B's rule with ``mu`` chosen each step) holding
``TARGET``. Seeds pair the runs: seed s gives every method the same data order and the same
step-0 evaluation.

The controller's step (its ``lr``) is calibrated from the GRPO runs, which the trainer probes
every ``PROBE_EVERY`` steps: ``lr = optim.lr * mean |measured dH| / mean |predicted dH|``, as in
the ``entropy_target`` experiment. Held-out: ``task.n_eval`` problems x k samples before the
first update (step 0: the starting model) and after the last; avg@k, pass@k, greedy accuracy,
pass-rate histogram. Claims: GRPO's entropy falls (Student-t over seeds), each method against
GRPO on final entropy (paired over seeds), and every method's held-out avg@k and pass@k against
the start, and against GRPO (bootstrap over problems pooled over seeds).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import metric_names as mn
from ..train.config import load_config
from ..train.logging import eval_headline, read_jsonl
from .common import (
    ExperimentResult,
    bootstrap_difference,
    check_entropy_above,
    jsonable,
    markdown_table,
    per_problem,
    seed_interval,
)
from .smollm2_figures import draw_figures

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2.yaml"
TARGET = 1.0  # the start's entropy is about 2.1; GRPO's falls below 0.5 within 15 steps
CONTROLLER = (
    "ppo(dual_clip=3.0) + target_entropy(base='clip_b', target={target}, lr={lr}, gain=0.5, "
    "max_drop=0.2, mus=(3.0, 2.0, 1.5, 1.0, 0.75, 0.5, 0.25))"
)
METHODS = {  # label -> spec; "{target}" / "{lr}" are filled in after the calibration
    "GRPO": "grpo",
    "Clip_B mu 2.5 (paper)": "clip_b",
    "Clip_V mu 8.5 (paper)": "clip_v",
    "Clip_B mu 1.0": "clip_b(mu=1.0)",
    "Clip_V mu 2.0": "clip_v(mu=2.0, max_frac=0.05)",
    "target H 1.0 (Clip_B)": CONTROLLER,
}
PROBE_EVERY = 5  # GRPO's probe steps calibrate the controller
_COMMON = [
    "rollout.prompts_per_step=4",
    "rollout.max_new_tokens=16",
    "method.micro_batch_size=0",
    "optim.lr=1e-5",
    "logging.checkpoint_every=0",
    "logging.samples_every=0",
    "logging.progress=false",
    "logging.tensorboard=false",
    "threads=2",
]
SIZES = {
    "quick": {
        "seeds": [0],
        "steps": 2,
        "k": 2,
        "probe_every": 1,
        "overrides": [
            *_COMMON,
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=4",
            "task.n_eval=2",
        ],
    },
    "default": {
        "seeds": [0, 1, 2],
        "steps": 30,
        "k": 16,
        "probe_every": PROBE_EVERY,
        "overrides": [*_COMMON, "task.n_eval=32"],
    },
}
WINDOW = 5  # steps averaged for the "first" and "final" entropy and reward
LR_RATIO_RANGE = (1.0, 1e4)  # the calibration ratio is clipped into this range


def _config(run_dir: Path, size: dict, *, seed: int, spec: str, probe: int):
    return load_config(
        CONFIG,
        [
            *size["overrides"],
            f"steps={size['steps']}",
            f"seed={seed}",
            f"method.spec={spec}",
            f"logging.eval_k={size['k']}",
            f"logging.eval_every={size['steps']}",
            f"logging.probe_every={probe}",
            f"logging.run_dir={run_dir}",
        ],
    )


def _held_out(evaluation: dict) -> dict:
    return {**eval_headline(evaluation), "pass_rate_hist": list(evaluation["pass_rate_hist"])}


def _run(run_dir: Path, size: dict, *, seed: int, spec: str, probe: int) -> dict:
    from ..train.loop import train

    train(_config(run_dir, size, seed=seed, spec=spec, probe=probe))
    rows = read_jsonl(run_dir / "metrics.jsonl")
    evals = {e["step"]: e for e in read_jsonl(run_dir / "eval.jsonl")}
    entropy = [r[mn.ENTROPY_MEAN] for r in rows]
    reward = [r[mn.REWARD_MEAN] for r in rows]
    probes = [r for r in rows if mn.ENTROPY_MEASURED_DELTA in r]
    return {
        "entropy": entropy,
        "reward": reward,
        "dropped": [1.0 - r[mn.PLAN_FRAC_KEPT] for r in rows],
        "first_entropy": float(np.mean(entropy[:WINDOW])),
        "final_entropy": float(np.mean(entropy[-WINDOW:])),
        "final_reward": float(np.mean(reward[-WINDOW:])),
        "start": _held_out(evals[0]),
        "final": _held_out(evals[max(evals)]),
        "probe_measured": [r[mn.ENTROPY_MEASURED_DELTA] for r in probes],
        "probe_predicted": [r[mn.PRED_DELTA] for r in probes],
        "step_s": float(np.mean([r[mn.TIME_STEP_S] for r in rows])),
    }


def _calibration(grpo_runs: list[dict], optim_lr: float) -> dict:
    """The controller's lr from GRPO's probes: optim.lr x mean |measured| / mean |predicted|."""
    measured = float(np.mean([abs(v) for r in grpo_runs for v in r["probe_measured"]]))
    predicted = float(np.mean([abs(v) for r in grpo_runs for v in r["probe_predicted"]]))
    raw = measured / predicted if predicted else float("nan")
    ratio = float(np.clip(raw, *LR_RATIO_RANGE)) if np.isfinite(raw) else LR_RATIO_RANGE[0]
    return {
        "optim_lr": optim_lr,
        "measured": measured,
        "predicted": predicted,
        "raw_ratio": raw,
        "ratio": ratio,
        "lr": float(f"{optim_lr * ratio:.4g}"),
    }


def _saved_run(path: Path, key: dict) -> dict | None:
    """A finished run saved by an earlier invocation with the same settings (``key``), else
    None (no file, or other settings: the run is trained again and the file replaced)."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved["run"] if isinstance(saved, dict) and saved.get("key") == key else None


def _save_run(path: Path, key: dict, run: dict) -> None:
    """Write ``{"key", "run"}`` whole (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps({"key": key, "run": jsonable(run)}))
    partial.replace(path)


def _progress(done: int, total: int, label: str, seed: int, run: dict | None, left_s: float):
    """One line per run on stderr: what it reached and the time left (None: reused)."""
    head = f"[smollm2] {done}/{total} {label} seed {seed}:"
    if run is None:
        print(f"{head} reused the saved run", file=sys.stderr, flush=True)
        return
    print(
        f"{head} final entropy {run['final_entropy']:.3f}, held-out avg@k "
        f"{run['start']['avg@k']:.3f} -> {run['final']['avg@k']:.3f}, {run['step_s']:.1f} s/step;"
        f" about {left_s / 60:.0f} min left",
        file=sys.stderr,
        flush=True,
    )


def run(out_dir, *, quick: bool = False) -> ExperimentResult:
    """Train every method for every seed (GRPO first: it calibrates the controller), evaluate
    the start and the end on held-out problems, and decide the claims."""
    size = SIZES["quick" if quick else "default"]
    result = ExperimentResult("smollm2", quick)
    optim_lr = _config(Path("unused"), size, seed=0, spec="grpo", probe=0).optim.lr
    runs: dict[str, list[dict]] = {}
    specs: dict[str, str] = {}
    total, start, trained = len(METHODS) * len(size["seeds"]), time.perf_counter(), 0
    calibration = None
    saved = Path(out_dir) / "smollm2" / "runs"  # one JSON per finished run: a rerun resumes
    with tempfile.TemporaryDirectory() as tmp:
        for index, (label, template) in enumerate(METHODS.items()):
            if label != "GRPO" and calibration is None:
                calibration = _calibration(runs["GRPO"], optim_lr)
            lr = calibration["lr"] if calibration else None
            specs[label] = template.format(target=TARGET, lr=lr)
            probe = size["probe_every"] if label == "GRPO" else 0
            runs[label] = []
            for seed in size["seeds"]:
                key = {
                    "spec": specs[label],
                    "seed": seed,
                    "probe_every": probe,
                    "steps": size["steps"],
                    "k": size["k"],
                    "overrides": size["overrides"],
                }
                one, reused = _saved_run(saved / f"{index}_{seed}.json", key), True
                if one is None:
                    run_dir = Path(tmp) / f"{index}_{seed}"
                    one = _run(run_dir, size, seed=seed, spec=specs[label], probe=probe)
                    _save_run(saved / f"{index}_{seed}.json", key, one)
                    reused, trained = False, trained + 1
                runs[label].append(one)
                done = sum(map(len, runs.values()))
                per_run = (time.perf_counter() - start) / max(trained, 1)
                _progress(
                    done, total, label, seed, None if reused else one, per_run * (total - done)
                )
    result.settings = {
        "config": "configs/smollm2.yaml",
        "overrides": size["overrides"],
        "methods": specs,
        "seeds": size["seeds"],
        "steps": size["steps"],
        "k": size["k"],
        "target": TARGET,
        "window": WINDOW,
        "calibration": calibration,
    }
    same_start = all(
        r["start"] == g["start"]
        for rs in runs.values()
        for r, g in zip(rs, runs["GRPO"], strict=True)
    )
    result.metrics = {"runs": runs, "summary": _summary(runs), "same_start": same_start}
    changes = {
        label: {
            kind: _change([r["start"] for r in rs], [r["final"] for r in rs], kind)
            for kind in ("avg", "pass")
        }
        for label, rs in runs.items()
    }
    result.metrics["change_from_start"] = changes
    _claims(result, runs, changes, size["k"])
    result.notes = _table(runs, size)
    draw_figures(result, out_dir, runs, changes, k=size["k"], target=TARGET)
    return result


def _summary(runs: dict[str, list[dict]]) -> dict:
    """Per method, the mean over seeds of each scalar (the table's numbers)."""
    out = {}
    for label, rs in runs.items():
        out[label] = {
            "first_entropy": float(np.mean([r["first_entropy"] for r in rs])),
            "final_entropy": float(np.mean([r["final_entropy"] for r in rs])),
            "final_reward": float(np.mean([r["final_reward"] for r in rs])),
            "dropped": float(np.mean([np.mean(r["dropped"]) for r in rs])),
            **{
                f"{when} {m}": float(np.mean([r[when][m] for r in rs]))
                for when in ("start", "final")
                for m in ("avg@k", "pass@k", "greedy")
            },
        }
    return out


def _change(before: list[dict], after: list[dict], kind: str) -> dict:
    """after - before of a held-out metric ('avg' or 'pass'), bootstrap over problems."""
    return bootstrap_difference(
        [per_problem(b["pass_rate_hist"], kind) for b in before],
        [per_problem(a["pass_rate_hist"], kind) for a in after],
    )


def _claims(result: ExperimentResult, runs: dict, changes: dict, k: int) -> None:
    """Entropy claims by Student-t intervals over seeds (paired by seed), held-out claims by
    bootstrap intervals over problems pooled over seeds; each holds only when its interval lies
    on the claimed side (one seed: no entropy interval, no entropy claim holds)."""
    grpo = runs["GRPO"]
    ratio = seed_interval([r["final_entropy"] / r["first_entropy"] for r in grpo])
    result.check(
        f"GRPO's entropy falls clearly (last {WINDOW} steps < 0.8 x the first {WINDOW}, upper "
        "95 % bound over seeds)",
        ratio["hi"] is not None and ratio["hi"] < 0.8,
        {"final / first": ratio},
        "hi < 0.8",
        "Student-t interval over seeds of each seed's final / first entropy",
    )
    for label in runs:
        for metric in (f"avg@{k}", f"pass@{k}"):
            diff = changes[label][metric.split("@")[0]]
            result.check(
                f"{label} improves held-out {metric} over the starting model (95 % interval of "
                "the change > 0)",
                diff["lo"] > 0,
                {"final - start": diff},
                "lo > 0",
                "bootstrap over held-out problems, pooled over seeds",
            )
    for label, rs in runs.items():
        if label == "GRPO":
            continue
        check_entropy_above(result, label, rs, grpo)
        diff = _change([g["final"] for g in grpo], [r["final"] for r in rs], "pass")
        result.check(
            f"{label} beats GRPO on held-out pass@{k} (95 % interval of the difference > 0)",
            diff["lo"] > 0,
            {f"{label} - GRPO": diff},
            "lo > 0",
            "bootstrap over held-out problems, pooled over seeds",
        )


def _table(runs: dict[str, list[dict]], size: dict) -> str:
    k = size["k"]
    start = [np.mean([r["start"][m] for r in runs["GRPO"]]) for m in ("avg@k", "pass@k", "greedy")]
    rows = [("start (step 0)", "", "", "", *(f"{v:.3f}" for v in start))]
    for label, rs in runs.items():
        cell = {
            key: (np.mean(v), np.std(v))
            for key, v in {
                "entropy": [r["final_entropy"] for r in rs],
                "reward": [r["final_reward"] for r in rs],
                "dropped": [np.mean(r["dropped"]) for r in rs],
                "avg": [r["final"]["avg@k"] for r in rs],
                "pass": [r["final"]["pass@k"] for r in rs],
                "greedy": [r["final"]["greedy"] for r in rs],
            }.items()
        }
        rows.append((label, *(f"{m:.3f} ± {s:.3f}" for m, s in cell.values())))
    return (
        f"SmolLM2-135M-Instruct, reasoning-gym chain_sum (2 one-digit terms), {size['steps']} "
        f"steps of 4 prompts x 8 samples, seeds {size['seeds']}; mean ± std over seeds; "
        f"entropy and training reward over the last {WINDOW} steps; held-out k = {k} after "
        "the last step (start: before the first update).\n\n"
        + markdown_table(
            [
                "method",
                "final entropy",
                "final reward",
                "share dropped",
                f"avg@{k}",
                f"pass@{k}",
                "greedy",
            ],
            rows,
        )
    )
