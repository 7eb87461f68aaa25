"""The project's own arithmetic task: prompts like "12+7=" and the integer answer."""

from __future__ import annotations

import random
import re

from .base import (
    Problem,
    Split,
    Task,
    check_fraction,
    generated_problems,
)

VALID_OPS = "+-*"
_FIRST_INTEGER = re.compile(r"-?\d+")


def evaluate(operands: list[int], operators: list[str]) -> int:
    """Value of `o0 op0 o1 op1 ...` with the usual precedence: '*' before '+' and '-', which
    associate to the left. Example: evaluate([2, 3, 4], ["+", "*"]) == 2 + 12 == 14."""
    terms = [operands[0]]  # products of consecutive factors
    signs = [1]
    for op, value in zip(operators, operands[1:], strict=True):
        if op == "*":
            terms[-1] *= value
        else:
            terms.append(value)
            signs.append(1 if op == "+" else -1)
    return sum(sign * term for sign, term in zip(signs, terms, strict=True))


def first_integer(text: str) -> int | None:
    """The first integer in `text`: the first maximal run of ASCII digits, negative when a '-'
    immediately precedes it. None if `text` has no digit. Examples: " 19\\n" -> 19,
    "x = -4." -> -4, "19.5" -> 19, "1 9" -> 1, "abc" -> None."""
    match = _FIRST_INTEGER.search(text)
    return int(match.group()) if match else None


class ArithmeticTask(Task):
    """Integer arithmetic with `terms` operands of at most `digits` digits (uniform in
    [0, 10**digits - 1]) joined by operators drawn uniformly from `ops`.

    Prompt: the expression followed by '=', no spaces ("12+7="). Answer: the exact integer value
    (standard precedence, so it can be negative). Reward: 1.0 if `first_integer(completion)`
    equals the answer, else 0.0 (also 0.0 when the completion has no digit). With `strict=True`
    the whole completion, stripped of surrounding whitespace, must be the answer: "19" scores 1,
    "19x", "19 19" and "=19" score 0. The trainer's completions have EOS removed, so a strict
    reward of 1 also means the sampler stopped right after the answer (or the budget ran out
    exactly there), and tokens after the answer are no longer free of reward.
    Split: each prompt string is hashed into train or test (`test_fraction` of the space goes
    to test), so the splits are disjoint whatever the seeds; `seed` fixes the draw order.
    """

    name = "arithmetic"

    def __init__(
        self,
        *,
        digits: int = 2,
        ops: str = "+-",
        terms: int = 2,
        test_fraction: float = 0.2,
        strict: bool = False,
    ) -> None:
        if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
            raise ValueError(f"digits must be an int >= 1, got {digits!r}")
        if isinstance(terms, bool) or not isinstance(terms, int) or terms < 2:
            raise ValueError(f"terms must be an int >= 2, got {terms!r}")
        if not isinstance(ops, str) or not ops or set(ops) - set(VALID_OPS):
            raise ValueError(
                f"ops must be a non-empty string of characters from {VALID_OPS!r}, got {ops!r}"
            )
        self.digits, self.terms, self.ops = digits, terms, "".join(sorted(set(ops)))
        if not isinstance(strict, bool):
            raise ValueError(f"strict must be True or False, got {strict!r}")
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        self.strict = strict

    @property
    def space_size(self) -> int:
        """Number of distinct prompts the knobs allow (both splits together)."""
        return 10 ** (self.digits * self.terms) * len(self.ops) ** (self.terms - 1)

    def draw(self, rng: random.Random) -> Problem:
        operands = [rng.randrange(10**self.digits) for _ in range(self.terms)]
        operators = [rng.choice(self.ops) for _ in range(self.terms - 1)]
        expression = "".join(
            f"{value}{op}" for value, op in zip(operands, [*operators, ""], strict=True)
        )
        value = evaluate(operands, operators)
        return Problem(
            prompt=expression + "=",
            answer=str(value),
            meta={"operands": operands, "operators": operators},
        )

    def problems(self, split: Split, n: int, *, seed: int = 0) -> list[Problem]:
        if isinstance(n, int) and n > self.space_size:  # fail now, not after millions of draws
            raise ValueError(
                f"arithmetic(digits={self.digits}, ops={self.ops!r}, terms={self.terms}) has only "
                f"{self.space_size} distinct problems (both splits); asked n={n} {split} problems; "
                "ask for fewer (task.n_train / task.n_eval) or widen the task (more digits/terms)"
            )
        return generated_problems(
            self,
            split,
            n,
            seed=seed,
            max_draws=50 * n + min(self.space_size * 20, 100_000),
            what=f"arithmetic(digits={self.digits}, ops={self.ops!r}, terms={self.terms})",
        )

    def reward(self, problem: Problem, completion: str) -> float:
        if self.strict:
            return 1.0 if completion.strip() == problem.answer else 0.0
        return 1.0 if first_integer(completion) == int(problem.answer) else 0.0
