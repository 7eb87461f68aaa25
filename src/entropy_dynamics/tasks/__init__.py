"""Verifiable-reward tasks, registered by name: `tasks.get("arithmetic", digits=2)`, `tasks.names()`.

    task = tasks.get("arithmetic", digits=2, ops="+-", terms=2)
    train = task.problems("train", 256, seed=0)       # disjoint from task.problems("test", ...)
    text = task.format_prompt(train[0])               # "12+7="
    result = tasks.safe_reward(task, train[0], "19")  # RewardResult(reward=1.0, failure=None)

Heavy dependencies (reasoning-gym, math-verify, datasets) are imported only when a task needs them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

from .arithmetic import ArithmeticTask
from .base import (
    SPLITS,
    Problem,
    RewardResult,
    RewardTimeout,
    Task,
    extract_tagged_answer,
    safe_reward,
)
from .gym import GYM_TASKS, ReasoningGymTask
from .jsonl import JsonlTask, read_records
from .math_answers import MathAnswerTask, MathVerifier

_REGISTRY: dict[str, Callable[..., Task]] = {
    "arithmetic": ArithmeticTask,
    "math": MathAnswerTask,
    "jsonl": JsonlTask,
    **{name: partial(ReasoningGymTask, name) for name in GYM_TASKS},
}


def names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs) -> Task:
    """A new task instance; `kwargs` are the task's knobs (see each class's docstring).

    Raises ValueError for an unknown name (listing the valid ones) or an unknown knob.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid tasks: {names()}")
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        params = [
            p
            for p in inspect.signature(factory).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        raise ValueError(
            f"task {name!r}: {err}; its options are {[p.name for p in params]}"
        ) from err
    return factory(**kwargs)


__all__ = [
    "GYM_TASKS",
    "SPLITS",
    "ArithmeticTask",
    "JsonlTask",
    "MathAnswerTask",
    "MathVerifier",
    "Problem",
    "ReasoningGymTask",
    "RewardResult",
    "RewardTimeout",
    "Task",
    "extract_tagged_answer",
    "get",
    "names",
    "read_records",
    "safe_reward",
]
