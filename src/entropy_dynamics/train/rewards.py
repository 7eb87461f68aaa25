"""Safe reward calls: a verifier that raises or runs past its time limit scores 0 and is counted.

The time limit uses SIGALRM (Unix, main thread only); elsewhere the call runs without one and
only exceptions are caught. Tasks that grade with math-verify also apply their own limit.
"""

from __future__ import annotations

import math
import signal
import threading

import torch


class RewardTimeoutError(Exception):
    """A reward call ran past its time limit."""


def _alarm(signum, frame):
    raise RewardTimeoutError


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
            value = float(self.task.reward(problem, completion))
        except RewardTimeoutError:
            self.timeouts += 1
            return 0.0
        except Exception:
            self.errors += 1
            return 0.0
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        if not math.isfinite(value):
            self.errors += 1
            return 0.0
        return value

    def score_groups(self, problems: list, texts: list[str], group_size: int):
        """Rewards [B] (fp32) for B = len(problems) * group_size responses, and batch metrics."""
        if len(texts) != len(problems) * group_size:
            raise ValueError(
                f"texts: expected {len(problems)} * {group_size} responses, got {len(texts)}"
            )
        errors, timeouts = self.errors, self.timeouts
        values = [self(problems[i // group_size], text) for i, text in enumerate(texts)]
        metrics = {
            "reward/errors": float(self.errors - errors),
            "reward/timeouts": float(self.timeouts - timeouts),
        }
        return torch.tensor(values, dtype=torch.float32), metrics
