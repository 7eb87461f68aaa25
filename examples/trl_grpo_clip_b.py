"""GRPO with Clip_B in TRL: swap GRPOConfig/GRPOTrainer for the Entropy* ones, name a method.

    python examples/trl_grpo_clip_b.py                         # tiny char model, CPU, < 1 minute
    python examples/trl_grpo_clip_b.py --method clip_v --steps 60
    python examples/trl_grpo_clip_b.py --model smollm2 --steps 50
    accelerate launch --num_processes 2 examples/trl_grpo_clip_b.py   # 2 GPUs, same masks

The task is the demo's (configs/demo.yaml): one-digit addition and subtraction ("7-9="), reward
1 when the whole completion is the answer. The tiny model starts from the demo's SFT warm start
(cached after the first run), right about 13 % of the time at temperature 1, and 150 steps of
16 prompts x 8 completions at lr 5e-4 (the demo's budget per step, half its steps) raise the
training reward (docs/trl.md has the measured reward per logging window). Clip_B uses the
demo's mu = 1.0: at this batch size the paper's 2.5 drops no token (the trainer warns). Everything
else is plain TRL: any GRPOConfig option works, and our metrics (clip_b/frac_dropped,
entropy/s_mean, entropy/s_minus_n_mean, ...) go wherever `report_to` sends TRL's.
"""

import argparse
from pathlib import Path

from datasets import Dataset

from entropy_dynamics import tasks
from entropy_dynamics.integrations.trl import EntropyGRPOConfig, EntropyGRPOTrainer
from entropy_dynamics.models import load_model
from entropy_dynamics.train.config import load_config
from entropy_dynamics.train.setup import build_policy

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def task_dataset(task, n: int, seed: int = 0) -> Dataset:
    """The task's training prompts, with the answer as a column TRL hands to the reward."""
    problems = task.problems("train", n, seed=seed)
    return Dataset.from_dict(
        {
            "prompt": [task.format_prompt(p) for p in problems],
            "answer": [p.answer for p in problems],
        }
    )


def exact_answer(completions, answer, **kwargs):
    """1.0 when the whole completion is the answer (TRL passes dataset columns by name)."""
    return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]


def policy(name: str):
    """(model, tokenizer): the tiny model warm-started as in the demo, or a named model."""
    if name != "tiny":
        return load_model(name)
    return build_policy(load_config(DEMO_CONFIG))  # SFT on the task's reference answers, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', 'smollm2', or a local HF path")
    parser.add_argument("--method", default="clip_b(mu=1.0)", help="any entropy_dynamics spec")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate (constant)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step (x 8 samples)")
    parser.add_argument("--output-dir", default="runs/trl_grpo_clip_b")
    cli = parser.parse_args()

    cfg = load_config(DEMO_CONFIG)
    task = tasks.get(cfg.task.name, **cfg.task.options)
    model, tokenizer = policy(cli.model)
    args = EntropyGRPOConfig(
        output_dir=cli.output_dir,
        entropy_method=cli.method,  # the one new option
        num_generations=8,
        per_device_train_batch_size=cli.prompts * 8,  # prompts x 8 completions per step
        max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        learning_rate=cli.lr,
        lr_scheduler_type="constant",
        max_steps=cli.steps,
        logging_steps=5,
        report_to=["tensorboard"],
        save_strategy="no",
        bf16=False,
        use_cpu=True,
    )
    trainer = EntropyGRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[exact_answer],
        args=args,
        train_dataset=task_dataset(task, cfg.task.n_train),
    )
    trainer.train()
    logged = [row for row in trainer.state.log_history if "reward" in row]
    for row in logged:
        print(f"step {row['step']:4d}  reward {row['reward']:.3f}  entropy {row['entropy']:.3f}")
    last = logged[-1]
    print({key: round(value, 4) for key, value in last.items()
           if key.startswith(("clip_b/", "clip_v/", "entropy/", "plan/"))})  # fmt: skip


if __name__ == "__main__":
    main()
