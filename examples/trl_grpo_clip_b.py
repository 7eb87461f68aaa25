"""GRPO with Clip_B in TRL: swap GRPOConfig/GRPOTrainer for the Entropy* ones, name a method.

    python examples/trl_grpo_clip_b.py                         # tiny char model, CPU, 1-2 minutes
    python examples/trl_grpo_clip_b.py --model smollm2 --steps 50
    accelerate launch --num_processes 2 examples/trl_grpo_clip_b.py   # 2 GPUs, same masks

The task: add two numbers; reward 1 when the completion starts with the sum, plus a shaping
reward for answering in digits (so a random-init model gets a signal). Everything else is
plain TRL: any GRPOConfig option works, and our metrics (clip_b/frac_dropped, entropy/s_mean,
entropy/s_minus_n_mean, ...) go wherever `report_to` sends TRL's.
"""

import argparse
import random

from datasets import Dataset

from entropy_dynamics.integrations.trl import EntropyGRPOConfig, EntropyGRPOTrainer
from entropy_dynamics.models import load_model


def addition_prompts(n: int, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    pairs = [(rng.randint(0, 49), rng.randint(0, 49)) for _ in range(n)]
    return Dataset.from_dict({"prompt": [f"{a}+{b}=" for a, b in pairs],
                              "answer": [str(a + b) for a, b in pairs]})


def correct_sum(completions, answer, **kwargs):
    """1.0 when the completion starts with the right sum (TRL passes dataset columns by name)."""
    return [float(c.strip().startswith(a)) for c, a in zip(completions, answer, strict=True)]


def digits_only(completions, **kwargs):
    """Fraction of the completion's characters that are digits: a shaping reward."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', 'smollm2', or a local HF path")
    parser.add_argument("--method", default="clip_b(mu=2.5)", help="any entropy_dynamics spec")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output-dir", default="runs/trl_grpo_clip_b")
    cli = parser.parse_args()

    model, tokenizer = load_model(cli.model)
    args = EntropyGRPOConfig(
        output_dir=cli.output_dir,
        entropy_method=cli.method,        # the one new option
        num_generations=8,
        per_device_train_batch_size=8,
        max_completion_length=8,
        learning_rate=1e-3,
        max_steps=cli.steps,
        logging_steps=5,
        report_to=["tensorboard"],
        save_strategy="no",
        bf16=False,
    )
    trainer = EntropyGRPOTrainer(model=model, processing_class=tokenizer,
                                 reward_funcs=[correct_sum, digits_only], args=args,
                                 train_dataset=addition_prompts(256))
    trainer.train()
    last = [row for row in trainer.state.log_history if "plan/frac_kept" in row][-1]
    print({key: round(value, 4) for key, value in last.items()
           if key.startswith(("clip_b/", "entropy/", "plan/", "reward"))})


if __name__ == "__main__":
    main()
