"""Free-form math answers graded by math-verify under a hard time limit, and a generated `math` task."""

from __future__ import annotations

import random
from fractions import Fraction

from .base import (
    Problem,
    Split,
    Task,
    check_fraction,
    generated_problems,
)
from .isolated import IsolatedWorker

MATH_KINDS = ("fraction", "linear")


def _gold_text(answer: str) -> str:
    """Reference answers are LaTeX or plain; math-verify extracts LaTeX only inside $...$ or
    \\boxed{}, so a bare answer is wrapped in $...$."""
    return answer if ("$" in answer or "\\boxed" in answer) else f"${answer}$"


def math_verify_match(answer: str, completion: str) -> bool:
    """math-verify's `verify(parse(gold), parse(completion))`, with its own (signal-based)
    timeouts off: the caller limits time. Runs in the worker process."""
    from math_verify import parse, verify

    gold = parse(_gold_text(answer), parsing_timeout=None)
    if not gold:
        raise ValueError(f"math-verify could not parse the reference answer {answer!r}")
    return bool(verify(gold, parse(completion, parsing_timeout=None), timeout_seconds=None))


class MathVerifier:
    """Grades completions against reference answers with math-verify in a worker process.

    `__call__(answer, completion) -> float` gives 1.0 / 0.0 and raises `RewardTimeout` when a call
    takes longer than `timeout_s` (the worker is killed and restarted on the next call).
    `timeouts` counts those calls. A completion math-verify cannot parse scores 0.0.
    `timeout_s=None` grades in-process with no limit (trusted input only).
    """

    def __init__(self, *, timeout_s: float | None = 2.0) -> None:
        self.worker = (
            None
            if timeout_s is None
            else IsolatedWorker(timeout_s=timeout_s, preload=("math_verify",))
        )

    @property
    def timeouts(self) -> int:
        return 0 if self.worker is None else self.worker.timeouts

    def __call__(self, answer: str, completion: str) -> float:
        if self.worker is None:
            return float(math_verify_match(answer, completion))
        return float(self.worker.call(math_verify_match, answer, completion))

    def start(self) -> None:
        if self.worker is not None:
            self.worker.start()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


def latex_number(value: Fraction) -> str:
    """3 -> '3', 11/12 -> '\\frac{11}{12}', -1/2 -> '-\\frac{1}{2}'."""
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


class MathAnswerTask(Task):
    """Generated problems with exact rational answers, graded by math-verify (free-form answers:
    '11/12', '\\frac{11}{12}', '\\boxed{11/12}', '0.916667' all match).

    Kinds (uniform): "fraction": `a/b op c/d` with op in +, -, * and 1 <= a, c <= max_value,
    2 <= b, d <= max_value; "linear": solve `a x + b = c` (a != 0) for rational x.
    Answer: LaTeX of the exact value (`latex_number`). Reward: `MathVerifier` (time-limited).
    Split: hash partition of the prompt text, as in `ArithmeticTask`.
    """

    name = "math"

    def __init__(
        self,
        *,
        kinds: tuple[str, ...] | list[str] = MATH_KINDS,
        max_value: int = 12,
        test_fraction: float = 0.2,
        timeout_s: float | None = 2.0,
    ) -> None:
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        if not kinds or set(kinds) - set(MATH_KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {MATH_KINDS}, got {kinds!r}")
        if isinstance(max_value, bool) or not isinstance(max_value, int) or max_value < 2:
            raise ValueError(f"max_value must be an int >= 2, got {max_value!r}")
        self.kinds, self.max_value = kinds, max_value
        self.test_fraction = check_fraction("test_fraction", test_fraction)
        self.verifier = MathVerifier(timeout_s=timeout_s)

    def draw(self, rng: random.Random) -> Problem:
        kind = rng.choice(self.kinds)
        top = self.max_value
        if kind == "fraction":
            a, c = rng.randint(1, top), rng.randint(1, top)
            b, d = rng.randint(2, top), rng.randint(2, top)
            op = rng.choice("+-*")
            left, right = Fraction(a, b), Fraction(c, d)
            value = left + right if op == "+" else left - right if op == "-" else left * right
            symbol = {"+": "+", "-": "-", "*": "\\times"}[op]
            prompt = (
                f"Compute $\\frac{{{a}}}{{{b}}} {symbol} \\frac{{{c}}}{{{d}}}$ and give the "
                f"result as a fraction in lowest terms."
            )
        else:
            a = rng.choice([v for v in range(-top, top + 1) if v != 0])
            b, c = rng.randint(-top, top), rng.randint(-top, top)
            value = Fraction(c - b, a)
            b_text = f"+ {b}" if b >= 0 else f"- {-b}"
            prompt = f"Solve for $x$: ${a}x {b_text} = {c}$."
        return Problem(prompt=prompt, answer=latex_number(value), meta={"kind": kind})

    def problems(self, split: Split, n: int, *, seed: int = 0) -> list[Problem]:
        return generated_problems(
            self,
            split,
            n,
            seed=seed,
            max_draws=50 * n + 10_000,
            what=f"math(kinds={self.kinds})",
        )

    def format_prompt(self, problem: Problem) -> str:
        return f"{problem.prompt} Put the final answer in \\boxed{{}}."

    def reference(self, problem: Problem) -> str:
        return f"\\boxed{{{problem.answer}}}"

    def reward(self, problem: Problem, completion: str) -> float:
        return self.verifier(problem.answer, completion)

    def start(self) -> None:
        self.verifier.start()

    def close(self) -> None:
        self.verifier.close()
