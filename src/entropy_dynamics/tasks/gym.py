"""reasoning-gym tasks (countdown, chain_sum, basic_arithmetic, gsm_symbolic) with its own verifiers.

Needs the `tasks` extra (`pip install 'entropy-dynamics[tasks]'`, reasoning-gym 0.1.25).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator
from typing import Any

from .base import (
    Problem,
    Split,
    Task,
    check_fraction,
    check_split_request,
    collect_split,
    extract_answer_or_last_number,
    extract_tagged_answer,
    stable_hash,
)
from .isolated import IsolatedWorker

GYM_TASKS = ("countdown", "chain_sum", "basic_arithmetic", "gsm_symbolic")
EXTRACTORS = {"tag": extract_tagged_answer, "tag_or_last_number": extract_answer_or_last_number}
"""How the answer is read from a completion (the `extract` option)."""
NUMERIC_TASKS = ("chain_sum", "basic_arithmetic", "gsm_symbolic")
ANSWER_INSTRUCTION = "Put only the final answer between <answer> and </answer>."


def _import_reasoning_gym():
    try:
        import reasoning_gym
    except ImportError as err:
        raise ImportError(
            "reasoning-gym tasks need the 'tasks' extra: pip install 'entropy-dynamics[tasks]'"
        ) from err
    return reasoning_gym


@functools.cache
def _scorer(dataset: str, config: tuple) -> Any:
    """A dataset instance used only for `score_answer` (which does not depend on its seed)."""
    return _import_reasoning_gym().create_dataset(dataset, seed=0, size=1, **dict(config))


def _score(dataset: str, config: tuple, answer: str | None, entry: dict) -> float:
    """reasoning-gym's own verifier; runs in the worker process."""
    return float(_scorer(dataset, config).score_answer(answer, entry))


class ReasoningGymTask(Task):
    """A reasoning-gym dataset as a Task; `config` goes to its config dataclass unchanged.

    Prompt: the dataset's question; `format_prompt` appends `ANSWER_INSTRUCTION`.
    Reward: the answer is the text in the last `<answer>...</answer>` of the completion (else the
    whole completion, stripped; with `extract="tag_or_last_number"`, else the last number in it,
    for small instruct models that answer "The sum is 7." and ignore the tags; numeric datasets
    only), scored by the dataset's own `score_answer`. By default the reward
    is binary, 1.0 iff that score is 1 (reasoning-gym gives e.g. 0.01 / 0.05 partial credit for
    malformed or wrong countdown answers); `partial_credit=True` passes its score through.
    The verifier runs in a worker process killed after `timeout_s` seconds (`RewardTimeout`);
    countdown parses model output with sympy, which adversarial text can make hang.
    `timeout_s=None` scores in-process without a limit.
    Split: problems come from seeds derived from (task, split, seed, chunk); each question is then
    hashed into train or test, and duplicates are dropped, so splits are disjoint.
    """

    def __init__(
        self,
        dataset: str,
        *,
        test_fraction: float = 0.2,
        partial_credit: bool = False,
        timeout_s: float | None = 2.0,
        extract: str = "tag",
        **config: Any,
    ) -> None:
        if dataset not in GYM_TASKS:
            raise ValueError(f"dataset must be one of {GYM_TASKS}, got {dataset!r}")
        if extract not in EXTRACTORS or (extract != "tag" and dataset not in NUMERIC_TASKS):
            valid = list(EXTRACTORS) if dataset in NUMERIC_TASKS else ["tag"]
            raise ValueError(f"extract={extract!r} for {dataset}; valid: {', '.join(valid)}")
        gym = _import_reasoning_gym()
        _, config_cls = gym.factory.DATASETS[dataset]
        allowed = sorted(
            f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")
        )
        unknown = sorted(set(config) - set(allowed))
        if unknown:
            raise ValueError(f"unknown {dataset} option(s) {unknown}; valid options: {allowed}")
        try:
            gym.create_dataset(dataset, seed=0, size=1, **config)
        except AssertionError as err:  # reasoning-gym validates with assert
            raise ValueError(f"invalid {dataset} options {config}: {err}") from err
        self.name = dataset
        self.dataset = dataset
        self.config = tuple(sorted(config.items()))
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        self.partial_credit = bool(partial_credit)
        self.extract = extract
        self.worker = (
            None
            if timeout_s is None
            else IsolatedWorker(timeout_s=timeout_s, preload=("reasoning_gym",))
        )

    def _candidates(self, split: str, seed: int, chunk_size: int) -> Iterator[Problem]:
        gym = _import_reasoning_gym()
        for chunk in itertools.count():
            ds_seed = stable_hash("reasoning_gym", self.dataset, split, seed, chunk) % 2**31
            ds = gym.create_dataset(
                self.dataset, seed=ds_seed, size=chunk_size, **dict(self.config)
            )
            for index in range(chunk_size):
                item = ds[index]
                yield Problem(
                    prompt=item["question"],
                    answer=str(item["answer"]),
                    meta={"dataset": self.dataset, "metadata": item["metadata"]},
                )

    def problems(self, split: Split, n: int, *, seed: int = 0) -> list[Problem]:
        check_split_request(split, n)
        share = self.test_fraction if split == "test" else 1.0 - self.test_fraction
        chunk_size = max(16, int(1.5 * n / share))
        return collect_split(
            self._candidates(split, seed, chunk_size),
            split,
            n,
            test_fraction=self.test_fraction,
            max_draws=20 * chunk_size,
            what=self.dataset,
        )

    def format_prompt(self, problem: Problem) -> str:
        return f"{problem.prompt}\n{ANSWER_INSTRUCTION}"

    def reference(self, problem: Problem) -> str:
        return f"<answer>{problem.answer}</answer>"

    def reward(self, problem: Problem, completion: str) -> float:
        entry = {
            "question": problem.prompt,
            "answer": problem.answer,
            "metadata": problem.meta.get("metadata", {}),
        }
        args = (self.dataset, self.config, EXTRACTORS[self.extract](completion), entry)
        score = _score(*args) if self.worker is None else self.worker.call(_score, *args)
        if self.partial_credit:
            return min(max(score, 0.0), 1.0)
        return 1.0 if score >= 1.0 else 0.0

    def start(self) -> None:
        if self.worker is not None:
            self.worker.start()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
