"""Trainer throughput: our GRPO step vs TRL's GRPOTrainer, and the per-step cost of Clip_V.

    .venv/bin/python benchmarks/bench_trainer.py [--quick] [--steps 12] [--threads 1] [--repeats 3]

Same tiny char model (random init, same seed), same batch (8 prompts x 8 completions), same
generation length (16 new tokens, EOS allowed), same temperature, CPU, one process. Throughput
is completion tokens per second over the steps after the first (warm-up); both wall-clock and
process CPU time are reported, and the ratios use CPU time (steadier on a shared machine).
TRL is measured twice: with gradient checkpointing off (the fair, faster setting for a tiny
model) and with its default (on). TRL is imported only here. Our loop is also run with the
sampler calling the HF model at every decoding step (the code before `train/decode.py`), to
show that step's share. Every configuration runs `--repeats` times, interleaved, and keeps its
best run (the machine is shared: the best run is the least disturbed one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import _util  # benchmarks/ is on sys.path when a script here runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PROMPTS, GROUP, NEW_TOKENS, LR = 8, 8, 16, 1e-4
TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 256}


def _prompts(n: int) -> list[str]:
    return [f"{i % 10}+{(3 * i) % 10}-{(7 * i) % 10}=" for i in range(n)]


class _PromptTask:
    """The benchmark's task: fixed prompts; reward = 1 if the completion has a digit."""

    def __init__(self):
        self.prompts = _prompts(256)

    def problems(self, split, n, *, seed=0):
        return self.prompts[:n]

    def format_prompt(self, problem):
        return problem

    def reward(self, problem, completion):
        return float(any(c.isdigit() for c in completion))


def _digit_reward(completions, **kwargs):
    return [float(any(c.isdigit() for c in text)) for text in completions]


def _config(spec: str, steps: int, threads: int, run_dir: str):
    from entropy_dynamics.train.config import load_config

    return load_config(None, [
        f"model.tiny={TINY}".replace("'", ""), f"method.spec={spec}", f"steps={steps}",
        f"rollout.prompts_per_step={PROMPTS}", f"rollout.group_size={GROUP}",
        f"rollout.max_new_tokens={NEW_TOKENS}", f"optim.lr={LR}", "task.n_train=256",
        "task.n_eval=0", "logging.probe_every=0", "logging.checkpoint_every=0",
        "logging.progress=false", "logging.tensorboard=false", f"threads={threads}",
        f"logging.run_dir={run_dir}",
    ])  # fmt: skip


def run_ours(spec: str, steps: int, threads: int, *, lean_decoding: bool = True) -> dict:
    """Per-step (wall, cpu, tokens) of our loop, from its own metrics."""
    from entropy_dynamics.train import rollout
    from entropy_dynamics.train.logging import read_jsonl
    from entropy_dynamics.train.loop import train

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = _config(spec, steps, threads, run_dir)
        lean = rollout.llama_decoder
        if not lean_decoding:
            rollout.llama_decoder = lambda *args, **kwargs: None  # HF forward at every step
        try:
            train(cfg, task=_PromptTask())
        finally:
            rollout.llama_decoder = lean
        rows = read_jsonl(Path(run_dir) / "metrics.jsonl")[1:]
    return {
        "wall": [r["time/step_s"] for r in rows],
        "cpu": [r["time/step_cpu_s"] for r in rows],
        "tokens": [r["response/length"] * PROMPTS * GROUP for r in rows],
    }


def run_paired(specs: tuple[str, ...], steps: int, threads: int) -> dict[str, list[float]]:
    """CPU seconds per completion token of each method, its steps alternating in one process.

    Each method has its own run (same seed, same problems per step); interleaving the steps
    exposes both to the same machine load, so their ratio is steadier than across runs.
    """
    from entropy_dynamics.train.loop import train_step
    from entropy_dynamics.train.setup import build_run, problem_order

    with tempfile.TemporaryDirectory() as run_dir:
        runs = [build_run(_config(s, steps, threads, run_dir), task=_PromptTask()) for s in specs]
        costs = {spec: [] for spec in specs}
        for step in range(steps):
            for spec, run in zip(specs, runs, strict=True):
                order = problem_order(len(run.train_problems), run.cfg, run.step)
                metrics = train_step(run, [run.train_problems[i] for i in order])
                run.step += 1
                tokens = metrics["response/length"] * PROMPTS * GROUP
                if step:  # the first step warms up
                    costs[spec].append(metrics["time/step_cpu_s"] / tokens)
    return costs


def run_trl(steps: int, threads: int, *, gradient_checkpointing: bool = False) -> dict:
    """Per-step (wall, cpu, tokens) of TRL's GRPOTrainer, timed by a callback."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from entropy_dynamics.models import build_char_tokenizer, build_tiny_model

    torch.set_num_threads(threads)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, **TINY, seed=0)
    times = {"wall": [], "cpu": []}

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
            max_completion_length=NEW_TOKENS, max_steps=steps, learning_rate=LR, logging_steps=1,
            report_to=[], use_cpu=True, save_strategy="no", seed=0, bf16=False,
            gradient_checkpointing=gradient_checkpointing, disable_tqdm=True,
        )  # fmt: skip
        dataset = Dataset.from_dict({"prompt": _prompts(256)})
        trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=_digit_reward,
                              args=args, train_dataset=dataset, callbacks=[_util.trl_step_timer(times)])  # fmt: skip
        trainer.train()
        lengths = [row["completions/mean_length"] for row in trainer.state.log_history
                   if "completions/mean_length" in row]  # fmt: skip
    return {
        "wall": times["wall"][1:],
        "cpu": times["cpu"][1:],
        "tokens": [length * PROMPTS * GROUP for length in lengths][1:],
    }


def _rate(result: dict, clock: str) -> float:
    """Completion tokens per second (median over steps of tokens / time)."""
    return statistics.median(t / s for t, s in zip(result["tokens"], result[clock], strict=True))


def _best(runs: list[dict]) -> dict:
    """The run with the highest CPU-time throughput."""
    return max(runs, key=lambda run: _rate(run, "cpu"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per loop; the best is kept")
    parser.add_argument("--quick", action="store_true", help="4 steps, 1 repeat (a smoke run)")
    args, _ = parser.parse_known_args()  # run_all.py passes options meant for other scripts
    steps, repeats = (4, 1) if args.quick else (args.steps, args.repeats)
    print(f"batch {PROMPTS} prompts x {GROUP} completions, {NEW_TOKENS} new tokens, "
          f"{steps} steps (first dropped), {args.threads} thread(s), best of {repeats}")  # fmt: skip
    loops = {
        "ours grpo": lambda: run_ours("grpo", steps, args.threads),
        "ours clip_v": lambda: run_ours("clip_v", steps, args.threads),
        "ours grpo, HF forward at every decoding step": lambda: run_ours(
            "grpo", steps, args.threads, lean_decoding=False
        ),
        "trl GRPOTrainer": lambda: run_trl(steps, args.threads),
        "trl GRPOTrainer, its default gradient checkpointing": lambda: run_trl(
            steps, args.threads, gradient_checkpointing=True
        ),
    }
    runs = {name: [] for name in loops}
    for _ in range(repeats):
        for name, loop in loops.items():
            runs[name].append(loop())
    results = {name: _best(r) for name, r in runs.items()}
    print("\n| loop | tokens/s (wall) | tokens/s (cpu) | s/step (cpu, median) |\n|---|---|---|---|")
    for name, result in results.items():
        print(f"| {name} | {_rate(result, 'wall'):.0f} | {_rate(result, 'cpu'):.0f} | "
              f"{statistics.median(result['cpu']):.3f} |")  # fmt: skip
    ours, trl = results["ours grpo"], results["trl GRPOTrainer"]
    print(f"\nthroughput ours / TRL: {_rate(ours, 'cpu') / _rate(trl, 'cpu'):.2f}x cpu, "
          f"{_rate(ours, 'wall') / _rate(trl, 'wall'):.2f}x wall (goal >= 2x)")  # fmt: skip
    trl_default = results["trl GRPOTrainer, its default gradient checkpointing"]
    print(f"throughput ours / TRL with its defaults: "
          f"{_rate(ours, 'cpu') / _rate(trl_default, 'cpu'):.2f}x cpu")  # fmt: skip
    hf_steps = results["ours grpo, HF forward at every decoding step"]
    print(f"lean decoding step: {_rate(ours, 'cpu') / _rate(hf_steps, 'cpu'):.2f}x cpu "
          f"(ours with HF decoding steps / TRL: "
          f"{_rate(hf_steps, 'cpu') / _rate(trl, 'cpu'):.2f}x)")  # fmt: skip
    clip_v = results["ours clip_v"]
    cost = _rate(ours, "cpu") / _rate(clip_v, "cpu") - 1
    print(f"Clip_V cost over GRPO per token: {cost:+.1%} cpu (goal <= 5 %)")
    paired = run_paired(("grpo", "clip_v"), 4 * steps, args.threads)
    paired_cost = statistics.median(paired["clip_v"]) / statistics.median(paired["grpo"]) - 1
    print(f"Clip_V cost over GRPO per token, steps alternating in one process: "
          f"{paired_cost:+.1%} cpu (median of {len(paired['grpo'])} steps each)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
