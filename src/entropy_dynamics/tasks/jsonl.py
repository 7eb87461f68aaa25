"""User data as a task: a JSONL file (or a parquet/json/csv file read with `datasets`), offline.

Schema: one record per problem with a non-empty string `prompt` and an `answer` (a string, or a
number that is converted with str()); other fields are kept in `Problem.meta`. Key names can be
changed with `prompt_key` / `answer_key` (e.g. GSM8K's "question").
"""

from __future__ import annotations

import random
from pathlib import Path

from entropy_dynamics._jsonl import read_jsonl

from .base import (
    Problem,
    Split,
    Task,
    check_fraction,
    check_split_request,
    extract_tagged_answer,
    split_of,
)
from .math_answers import MathVerifier

GRADERS = ("math_verify", "exact")
DATASETS_FORMATS = {".parquet": "parquet", ".json": "json", ".csv": "csv"}


def _read_with_datasets(path: Path) -> list[dict]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"reading {path.suffix} files needs the `datasets` package "
            f"(or convert the file to .jsonl)"
        ) from err
    table = datasets.load_dataset(
        DATASETS_FORMATS[path.suffix], data_files=str(path), split="train"
    )
    return [dict(row) for row in table]


def read_records(
    path: str | Path, *, prompt_key: str = "prompt", answer_key: str = "answer"
) -> list[Problem]:
    """Problems from `path` (.jsonl natively; .parquet / .json / .csv through `datasets`).

    Raises ValueError naming the file and record for a missing key or a wrong type.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} is not a file")
    if path.suffix == ".jsonl":
        records = read_jsonl(path, strict=True)
    elif path.suffix in DATASETS_FORMATS:
        records = _read_with_datasets(path)
    else:
        raise ValueError(
            f"path {str(path)!r}: unsupported extension {path.suffix!r}; "
            f"use one of ['.jsonl', {', '.join(map(repr, DATASETS_FORMATS))}]"
        )
    problems = []
    for index, record in enumerate(records, start=1):
        where = f"{path} record {index}"
        missing = [key for key in (prompt_key, answer_key) if key not in record]
        if missing:
            raise ValueError(
                f"{where}: missing key(s) {missing}; each record needs "
                f"{{{prompt_key!r}: str, {answer_key!r}: str}}, got keys "
                f"{sorted(record)}"
            )
        prompt, answer = record[prompt_key], record[answer_key]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: {prompt_key!r} must be a non-empty string, got {prompt!r}")
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise ValueError(
                f"{where}: {answer_key!r} must be a string or a number, got {type(answer).__name__}"
            )
        meta = {k: v for k, v in record.items() if k not in (prompt_key, answer_key)}
        problems.append(Problem(prompt=prompt, answer=str(answer), meta=meta))
    if not problems:
        raise ValueError(f"{path} holds no records")
    return problems


class JsonlTask(Task):
    """Problems from a local file, split once into train and test.

    Split: each distinct prompt goes to test with probability `test_fraction` by a hash of
    (`split_seed`, prompt), so duplicates share a side and the split is disjoint and fixed by
    `split_seed`; `problems(..., seed=s)` returns the first `n` of the split in an order shuffled
    by `s` (no repeats; n larger than the split is an error that gives its size).
    Grader "math_verify": `MathVerifier` (time-limited, see math_answers). Grader "exact": 1.0 iff
    the last `<answer>...</answer>` content (else the whole completion), stripped, equals the
    stripped answer.
    """

    name = "jsonl"

    def __init__(
        self,
        path: str | Path,
        *,
        grader: str = "math_verify",
        test_fraction: float = 0.1,
        split_seed: int = 0,
        prompt_key: str = "prompt",
        answer_key: str = "answer",
        timeout_s: float | None = 2.0,
    ) -> None:
        if grader not in GRADERS:
            raise ValueError(f"grader must be one of {GRADERS}, got {grader!r}")
        self.path, self.grader = Path(path), grader
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        unique: dict[str, Problem] = {}
        for problem in read_records(path, prompt_key=prompt_key, answer_key=answer_key):
            unique.setdefault(problem.prompt, problem)  # first occurrence wins
        self.splits: dict[str, list[Problem]] = {"train": [], "test": []}
        for prompt, problem in unique.items():
            self.splits[split_of(prompt, self.test_fraction, salt=split_seed)].append(problem)
        self.verifier = MathVerifier(timeout_s=timeout_s) if grader == "math_verify" else None

    def problems(self, split: Split, n: int, *, seed: int = 0) -> list[Problem]:
        check_split_request(split, n)
        pool = self.splits[split]
        if n > len(pool):
            raise ValueError(
                f"{self.path}: the {split} split has {len(pool)} problems, asked for n={n}"
            )
        order = list(range(len(pool)))
        random.Random(seed).shuffle(order)
        return [pool[i] for i in order[:n]]

    def reward(self, problem: Problem, completion: str) -> float:
        if self.verifier is not None:
            return self.verifier(problem.answer, completion)
        return 1.0 if extract_tagged_answer(completion) == problem.answer.strip() else 0.0

    def start(self) -> None:
        if self.verifier is not None:
            self.verifier.start()

    def close(self) -> None:
        if self.verifier is not None:
            self.verifier.close()
