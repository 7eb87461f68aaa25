"""Safe reward calls: a verifier that raises or runs past its time limit scores 0 and is counted.

`tasks.safe_reward` turns exceptions, `RewardTimeout` and out-of-range values into reward 0 with
a label; this wrapper adds a wall-clock limit for tasks that have none of their own (SIGALRM,
Unix main thread only; elsewhere only the task's own limit applies) and counts the labels.
"""

from __future__ import annotations

import signal
import threading

import torch

from entropy_dynamics.diagnostics import REWARD_ERRORS, REWARD_TIMEOUTS
from entropy_dynamics.tasks import RewardTimeout, safe_reward


class RewardTimeoutError(RewardTimeout):
    """A reward call ran past the trainer's time limit (task.reward_timeout_s)."""


def _alarm(signum, frame):
    raise RewardTimeoutError("reward call exceeded task.reward_timeout_s")


class SafeReward:
    """`SafeReward(task, timeout_s=5.0)(problem, completion) -> float`, never raising.

    Counters `errors` and `timeouts` accumulate over calls; `score_groups` reports them per batch
    as the metrics `reward/errors` and `reward/timeouts`.
    """

    def __init__(self, task, *, timeout_s: float = 5.0):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s}: must be > 0 seconds")
        self.task = task
        self.timeout_s = timeout_s
        self.errors = 0
        self.timeouts = 0

    def __call__(self, problem, completion: str) -> float:
        use_alarm = threading.current_thread() is threading.main_thread() and hasattr(
            signal, "setitimer"
        )
        previous = signal.signal(signal.SIGALRM, _alarm) if use_alarm else None
        try:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
            result = safe_reward(self.task, problem, completion)
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        self.timeouts += result.failure == "timeout"
        self.errors += result.failure == "error"
        return result.reward

    def score_groups(self, problems: list, texts: list[str], group_size: int):
        """Rewards [B] (fp32) for B = len(problems) * group_size responses, and batch metrics."""
        if len(texts) != len(problems) * group_size:
            raise ValueError(
                f"texts: expected {len(problems)} * {group_size} responses, got {len(texts)}"
            )
        errors, timeouts = self.errors, self.timeouts
        values = [self(problems[i // group_size], text) for i, text in enumerate(texts)]
        metrics = {
            REWARD_ERRORS: float(self.errors - errors),
            REWARD_TIMEOUTS: float(self.timeouts - timeouts),
        }
        return torch.tensor(values, dtype=torch.float32), metrics
