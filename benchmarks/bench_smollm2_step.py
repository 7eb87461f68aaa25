"""One GRPO step on SmolLM2-135M-Instruct: our loop against TRL's GRPOTrainer, time and peak memory.

    .venv/bin/python benchmarks/bench_smollm2_step.py [--steps 1] [--lengths 16 64] [--threads 2]
        [--loops ours ours-half ours-fused trl]

Same model (the packaged SmolLM2-135M-Instruct, fp32), same prompts (the task of
configs/smollm2.yaml, through the tokenizer's chat template on both sides), same batch (8 prompts
x 8 completions), same completion limit (each of --lengths; EOS ends a completion early), same
temperature (1.0), CPU, no KL (beta = 0). Loops:
- `ours`: configs/smollm2.yaml as it is (micro-batches of one prompt group);
- `ours-half`: the same with micro-batches of half a group (method.micro_batch_size=4; the four
  rows still share one prompt pass), for less activation memory;
- `ours-fused`: the same with method.micro_batch_size=0 (one forward for statistics and loss);
- `trl`: GRPOTrainer with TRL's defaults otherwise (gradient checkpointing on, loss "dapo"),
  per_device_train_batch_size 64, so one optimiser step = one generation of 64 completions.
Every (loop, length) runs in a fresh interpreter: one warm-up step, then --steps timed steps
(mean wall-clock seconds and process CPU seconds per step); its peak memory is the process's
peak resident set (VmHWM) over its whole life, model loading included. Our step time is the
loop's own `time/step_s`; TRL's is timed by a callback from step begin to step end. Ratios are
within this one run, so a loaded machine slows both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _util  # benchmarks/ is on sys.path when a script here runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "smollm2.yaml"
PROMPTS, GROUP = 8, 8


def _config(length: int, threads: int, run_dir: str, micro: int | None):
    from entropy_dynamics.train.config import load_config

    overrides = [f"rollout.max_new_tokens={length}", "logging.probe_every=0",
                 "logging.eval_every=0", "logging.samples_every=0", "logging.progress=false",
                 "logging.tensorboard=false", f"threads={threads}", f"logging.run_dir={run_dir}",
                 f"rollout.prompts_per_step={PROMPTS}", f"rollout.group_size={GROUP}"]  # fmt: skip
    if micro is not None:  # else the config's own (one prompt group)
        overrides.append(f"method.micro_batch_size={micro}")
    return load_config(CONFIG, overrides)


def run_ours(length: int, steps: int, threads: int, *, micro: int | None) -> dict:
    """Per-step wall / CPU seconds and completion lengths of our loop (after one warm-up step)."""
    from entropy_dynamics.train.loop import train_step
    from entropy_dynamics.train.setup import build_run, problem_order

    with tempfile.TemporaryDirectory() as run_dir:
        run = build_run(_config(length, threads, run_dir, micro))
        rows = []
        for _ in range(1 + steps):
            order = problem_order(len(run.train_problems), run.cfg, run.step)
            rows.append(train_step(run, [run.train_problems[i] for i in order]))
            run.step += 1
        if hasattr(run.task, "close"):
            run.task.close()
    rows = rows[1:]
    return {"wall": [r["time/step_s"] for r in rows], "cpu": [r["time/step_cpu_s"] for r in rows],
            "length": [r["response/length"] for r in rows]}  # fmt: skip


def run_trl(length: int, steps: int, threads: int) -> dict:
    """Per-step wall / CPU seconds and completion lengths of TRL's GRPOTrainer."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from entropy_dynamics.models import load_model
    from entropy_dynamics.train.setup import get_task

    torch.set_num_threads(threads)
    cfg = _config(length, threads, "unused", None)
    task = get_task(cfg)
    problems = task.problems("train", PROMPTS * (1 + steps), seed=cfg.seed)
    answers = {task.format_prompt(p): p for p in problems}

    def reward(prompts, completions, **kwargs):
        return [task.reward(answers[p[-1]["content"]], c[-1]["content"])
                for p, c in zip(prompts, completions, strict=True)]  # fmt: skip

    model, tokenizer = load_model("smollm2")
    times = {"wall": [], "cpu": []}

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
            max_completion_length=length, max_steps=1 + steps, learning_rate=cfg.optim.lr,
            logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0, bf16=False,
            disable_tqdm=True, temperature=cfg.rollout.temperature, shuffle_dataset=False,
        )  # fmt: skip
        prompts = [[{"role": "user", "content": task.format_prompt(p)}] for p in problems]
        trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=reward,
                              args=args, train_dataset=Dataset.from_dict({"prompt": prompts}),
                              callbacks=[_util.trl_step_timer(times)])  # fmt: skip
        trainer.train()
        lengths = [row["completions/mean_length"] for row in trainer.state.log_history
                   if "completions/mean_length" in row]  # fmt: skip
    if hasattr(task, "close"):
        task.close()
    return {"wall": times["wall"][1:], "cpu": times["cpu"][1:], "length": lengths[1:]}


LOOPS = {
    "ours": lambda n, s, t: run_ours(n, s, t, micro=None),
    "ours-half": lambda n, s, t: run_ours(n, s, t, micro=GROUP // 2),
    "ours-fused": lambda n, s, t: run_ours(n, s, t, micro=0),
    "trl": run_trl,
}


def _child(case: dict) -> None:
    result = LOOPS[case["loop"]](case["length"], case["steps"], case["threads"])
    print("RESULT " + json.dumps({**result, "peak_mib": _util.peak_rss_mib()}), flush=True)


def _run_case(case: dict) -> dict | None:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    print(f"{case}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
    return None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loops", nargs="+", default=list(LOOPS), choices=list(LOOPS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()  # run_all.py passes options meant for other scripts
    if args.child:
        _child(json.loads(args.child))
        return 0
    print(f"SmolLM2-135M-Instruct fp32, {PROMPTS} prompts x {GROUP} completions, "
          f"{args.threads} thread(s), 1 warm-up + {args.steps} timed step(s) per case; "
          f"load average {os.getloadavg()[0]:.1f} at the start")  # fmt: skip
    results = {}
    for length in args.lengths:
        for loop in args.loops:
            case = {"loop": loop, "length": length, "steps": args.steps, "threads": args.threads}
            results[loop, length] = _run_case(case)
    print(
        "\n| loop | max new tokens | mean length | s/step (wall) | s/step (CPU) | "
        "x TRL (wall) | peak MiB |\n|---|---|---|---|---|---|---|"
    )
    for (loop, length), r in results.items():
        if r is None:
            print(f"| {loop} | {length} | failed | | | | |")
            continue
        trl = results.get(("trl", length))
        ratio = _mean(r["wall"]) / _mean(trl["wall"]) if trl else float("nan")
        print(f"| {loop} | {length} | {_mean(r['length']):.1f} | {_mean(r['wall']):.1f} | "
              f"{_mean(r['cpu']):.1f} | {ratio:.2f}x | {r['peak_mib']:.0f} |")  # fmt: skip
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0 if all(r is not None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
