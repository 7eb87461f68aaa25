"""Test helper for the trainer tests: a tiny task with a dense reward and a small config.

    from _train_fixtures import DigitTask, tiny_config

`DigitTask` rewards the fraction of digit characters in the completion, so even a randomly
initialised char model gets non-zero, varied rewards (non-zero advantages) without an SFT phase.
"""

from __future__ import annotations

import time

from entropy_dynamics.train.config import load_config


class DigitTask:
    """Prompts 'q<i>='; reward = fraction of the completion's characters that are digits."""

    def __init__(self, *, raise_on: str = "", sleep_on: str = "", sleep_s: float = 0.0):
        self.raise_on, self.sleep_on, self.sleep_s = raise_on, sleep_on, sleep_s

    def problems(self, split: str, n: int, seed: int = 0) -> list[dict]:
        offset = 0 if split == "train" else 10_000  # "test": held out
        return [{"id": offset + seed * 100_003 + i} for i in range(n)]

    def format_prompt(self, problem: dict) -> str:
        return f"q{problem['id'] % 97}="

    def reward(self, problem: dict, completion: str) -> float:
        if self.raise_on and self.raise_on in completion:
            raise RuntimeError("verifier crashed")
        if self.sleep_on and self.sleep_on in completion:
            time.sleep(self.sleep_s)
        return sum(c.isdigit() for c in completion) / max(len(completion), 1)

    def reference(self, problem: dict) -> str:
        return str(problem["id"] % 97)


TINY = [
    "model.tiny={hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=6",
    "task.n_train=32",
    "task.n_eval=4",
    "logging.eval_k=2",
    "logging.progress=false",
    "logging.tensorboard=false",
    "optim.lr=0.01",
]


def tiny_config(run_dir, *overrides: str):
    """A TrainConfig small enough for a step to take milliseconds."""
    return load_config(None, [*TINY, f"logging.run_dir={run_dir}", *overrides])
