"""What EntropyDynamicsCallback costs a stock TRL GRPOTrainer: CPU time per step, with and without.

    python examples/trl_callback_cost.py            # tiny model, CPU, one thread, about 30 s

Runs the same 20-step GRPOTrainer (same weights, seed, data) plain, with the callback, and with
the callback probing every step, interleaved, `--repeats` times each, and prints the median
process CPU time per step (CPU time, not wall time, so that other work on the machine counts
less).
"""

import argparse
import statistics
import tempfile
import time

import torch
import transformers
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from entropy_dynamics.integrations.trl import EntropyDynamicsCallback
from entropy_dynamics.models import build_char_tokenizer, build_tiny_model


def reward_by_chars(completions, **kwargs):
    return [float(sum(map(ord, c)) % 7) for c in completions]


def one_run(output_dir: str, steps: int, probe_steps: int | None) -> float:
    tokenizer = build_char_tokenizer()
    args = GRPOConfig(output_dir=output_dir, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=8, max_steps=steps, logging_steps=5, report_to=[],
                      use_cpu=True, save_strategy="no", learning_rate=1e-2, seed=0, bf16=False,
                      disable_tqdm=True)  # fmt: skip
    trainer = GRPOTrainer(
        model=build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2,
                               intermediate_size=64, seed=1),
        processing_class=tokenizer, reward_funcs=reward_by_chars, args=args,
        train_dataset=Dataset.from_dict({"prompt": [f"{i}+{2 * i}=" for i in range(64)]}),
    )  # fmt: skip
    if probe_steps is not None:
        trainer.add_callback(EntropyDynamicsCallback(trainer, probe_steps=probe_steps))
    start = time.process_time()
    trainer.train()
    return (time.process_time() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    kinds = {
        "plain GRPOTrainer": None,
        "+ callback, no probe": 0,
        "+ callback, probe every step": 1,
    }
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(cli.repeats):
        for kind, probe in kinds.items():
            with tempfile.TemporaryDirectory() as folder:
                times[kind].append(one_run(folder, cli.steps, probe))
    base = statistics.median(times["plain GRPOTrainer"])
    for kind, values in times.items():
        median = statistics.median(values)
        print(f"{kind:30s} {1000 * median:6.1f} ms/step CPU  ({100 * (median / base - 1):+.0f}%)")


if __name__ == "__main__":
    main()
