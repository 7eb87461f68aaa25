"""Tasks and verifier functions for the reliability tests (importable by verifier workers)."""

from __future__ import annotations

import sys
import time

from _train_fixtures import DigitTask
from entropy_dynamics.tasks.isolated import IsolatedWorker


def digit_fraction(completion: str, delay_s: float = 0.0) -> float:
    time.sleep(delay_s)
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


def busy_in_c() -> int:
    return sum(range(10**12))  # one C call holding the GIL for minutes


def calls_sys_exit() -> None:
    sys.exit(3)


class IsolatedDigitTask(DigitTask):
    """DigitTask whose reward runs in an IsolatedWorker (as math-verify and reasoning-gym do)."""

    def __init__(self, delay_s: float = 0.005):
        super().__init__()
        self.delay_s = delay_s
        self.worker = IsolatedWorker(timeout_s=5.0)

    def start(self) -> None:
        self.worker.start()

    def close(self) -> None:
        self.worker.close()

    def reward(self, problem, completion: str) -> float:
        return self.worker.call(digit_fraction, completion, self.delay_s)


class ExitingDigitTask(DigitTask):
    """A reward function that calls sys.exit on every other problem (whatever was sampled)."""

    def reward(self, problem, completion: str) -> float:
        if problem["id"] % 2 == 0:
            sys.exit(3)
        return super().reward(problem, completion)
