"""The task contract (Problem, Task), reward failures, and the hash-partitioned train/test split."""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Literal, NamedTuple

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")
_BUCKETS = 1_000_000
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclass(frozen=True)
class Problem:
    """One prompt with its reference answer; `meta` holds what the verifier needs besides."""

    prompt: str
    answer: str
    meta: dict = field(default_factory=dict)


class RewardTimeout(TimeoutError):  # noqa: N818 (the name the trainer contract uses)
    """A verifier ran past its time limit (the worker process running it was killed)."""


class Task(ABC):
    """A source of problems with a verifiable reward.

    - `problems(split, n, *, seed)`: `n` distinct problems of one split; the same arguments give
      the same list, and no prompt is ever in both splits.
    - `reward(problem, completion)`: a float in [0, 1]. It may raise `RewardTimeout` (a verifier
      ran past its limit) or another exception; `safe_reward` turns both into reward 0 plus a
      failure label the trainer can count.
    - `format_prompt(problem)`: the text given to the model (before any chat template).
    - `reference(problem)`: a completion that earns reward 1 (for SFT warm starts).
    - `start()` / `close()`: start / stop verifier worker processes (optional; lazy otherwise).
    """

    name: ClassVar[str]

    @abstractmethod
    def problems(self, split: Split, n: int, *, seed: int = 0) -> list[Problem]: ...

    @abstractmethod
    def reward(self, problem: Problem, completion: str) -> float: ...

    def format_prompt(self, problem: Problem) -> str:
        return problem.prompt

    def reference(self, problem: Problem) -> str:
        return problem.answer

    def start(self) -> None:  # noqa: B027 (an optional hook; no worker by default)
        """Start verifier worker processes now (0.5-1.5 s), so that no reward call pays for it; a
        caller with its own per-call time limit should call this before grading."""

    def close(self) -> None:  # noqa: B027 (an optional hook; nothing to release by default)
        """Release verifier worker processes, if any (they also end with the interpreter)."""


class RewardResult(NamedTuple):
    reward: float
    failure: str | None  # None, "timeout" or "error"
    detail: str = ""


def safe_reward(task: Task, problem: Problem, completion: str) -> RewardResult:
    """`task.reward` with failures turned into reward 0: ("timeout" | "error", message).

    A result outside [0, 1] or not finite also counts as an "error" (never passed on silently).
    """
    try:
        value = float(task.reward(problem, completion))
    except RewardTimeout as err:
        return RewardResult(0.0, "timeout", str(err))
    except (Exception, SystemExit) as err:  # a verifier bug (even sys.exit) must not stop
        return RewardResult(0.0, "error", f"{type(err).__name__}: {err}")  # training: counted
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return RewardResult(0.0, "error", f"reward {value!r} is not a finite value in [0, 1]")
    return RewardResult(value, None)


def extract_tagged_answer(completion: str) -> str:
    """The text inside the LAST `<answer>...</answer>` pair, stripped; else the whole completion
    stripped."""
    matches = _ANSWER_TAG.findall(completion)
    return (matches[-1] if matches else completion).strip()


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_answer_or_last_number(completion: str) -> str:
    """The text inside the LAST `<answer>...</answer>` pair, stripped; else the last number in
    the completion ("The sum is -4." -> "-4"); else the whole completion stripped."""
    if _ANSWER_TAG.search(completion):
        return extract_tagged_answer(completion)
    numbers = _NUMBER.findall(completion)
    return numbers[-1] if numbers else completion.strip()


# --------------------------------------------------------------------------- splits


def check_split_request(split: str, n: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")


def check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def stable_hash(*parts: object) -> int:
    """A 64-bit integer from sha256 of the parts' reprs: the same in every process and run."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def split_of(key: str, test_fraction: float, *, salt: object = "") -> str:
    """'test' for a fixed `test_fraction` of keys (by hash of salt and key), else 'train'."""
    bucket = stable_hash(salt, key) % _BUCKETS
    return "test" if bucket < test_fraction * _BUCKETS else "train"


def collect_split(
    candidates: Iterable[Problem],
    split: str,
    n: int,
    *,
    test_fraction: float,
    max_draws: int,
    what: str,
) -> list[Problem]:
    """The first `n` distinct candidates (by prompt) whose hash partition is `split`.

    Every prompt belongs to exactly one split whatever the seed, so train and test never share
    a prompt. Raises ValueError if `max_draws` candidates give fewer than `n` problems.
    """
    chosen: list[Problem] = []
    seen: set[str] = set()
    draws = 0
    for problem in candidates:
        if len(chosen) == n:
            break
        draws += 1
        if draws > max_draws:
            break
        if problem.prompt in seen or split_of(problem.prompt, test_fraction) != split:
            continue
        seen.add(problem.prompt)
        chosen.append(problem)
    if len(chosen) < n:
        raise ValueError(
            f"{what}: found only {len(chosen)} distinct {split} problems (asked n={n}) in "
            f"{min(draws, max_draws)} draws; ask for fewer or widen the task (more digits/terms, "
            f"another test_fraction)"
        )
    return chosen


def generated_problems(
    task: Task, split: str, n: int, *, seed: int, max_draws: int, what: str
) -> list[Problem]:
    """`n` distinct `split` problems from `task.draw(rng)`, the generator seeded by (name, split, seed).

    For tasks that generate problems (they have `draw(rng)` and `test_fraction`); the split is
    decided by `collect_split`'s hash partition, so it never depends on the seed.
    """
    check_split_request(split, n)
    rng = random.Random(stable_hash(task.name, split, seed))
    candidates = (task.draw(rng) for _ in itertools.count())
    return collect_split(
        candidates, split, n, test_fraction=task.test_fraction, max_draws=max_draws, what=what
    )
