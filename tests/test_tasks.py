"""Tests for the task contract, the registry, the hash split and the arithmetic task."""

from __future__ import annotations

import math
import re

import pytest

from entropy_dynamics import tasks
from entropy_dynamics.tasks import Problem, RewardTimeout, Task, safe_reward
from entropy_dynamics.tasks.arithmetic import ArithmeticTask, evaluate, first_integer
from entropy_dynamics.tasks.base import collect_split, split_of, stable_hash

# --------------------------------------------------------------------------- registry


def test_registry_names_and_unknown_name():
    assert tasks.names() == sorted(
        [
            "arithmetic",
            "basic_arithmetic",
            "chain_sum",
            "countdown",
            "gsm_symbolic",
            "jsonl",
            "math",
        ]
    )
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*'arithmetic'.*'math'"):
        tasks.get("nope")


def test_registry_rejects_unknown_options_and_lists_valid_ones():
    with pytest.raises(ValueError, match=r"arithmetic.*digits.*ops.*terms"):
        tasks.get("arithmetic", digit=3)
    task = tasks.get("arithmetic", digits=3, ops="*", terms=3)
    assert isinstance(task, ArithmeticTask) and (task.digits, task.ops, task.terms) == (3, "*", 3)


def test_task_base_is_abstract():
    with pytest.raises(TypeError):
        Task()


# --------------------------------------------------------------------------- safe_reward


class _Scripted(Task):
    name = "scripted"

    def __init__(self, outcome):
        self.outcome = outcome

    def problems(self, split, n, *, seed=0):
        return []

    def reward(self, problem, completion):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (1.0, (1.0, None)),
        (0.25, (0.25, None)),
        (RewardTimeout("slow"), (0.0, "timeout")),
        (KeyError("boom"), (0.0, "error")),
        (math.nan, (0.0, "error")),
        (1.5, (0.0, "error")),
        (-0.1, (0.0, "error")),
    ],
)
def test_safe_reward_turns_failures_into_zero_and_a_label(outcome, expected):
    result = safe_reward(_Scripted(outcome), Problem("p", "a"), "c")
    assert (result.reward, result.failure) == expected
    if expected[1] == "error":
        assert result.detail


def test_reward_timeout_is_a_timeout_error():
    assert issubclass(RewardTimeout, TimeoutError)


# --------------------------------------------------------------------------- split helpers


def test_stable_hash_is_fixed_across_processes():
    # sha256 of "'abc'" (repr of the single part), first 8 bytes big-endian: a fixed number, so
    # the split never depends on PYTHONHASHSEED.
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"'abc'").digest()[:8], "big")
    assert stable_hash("abc") == expected


def test_split_of_sends_the_requested_fraction_to_test():
    keys = [f"key-{i}" for i in range(20_000)]
    share = sum(split_of(k, 0.2) == "test" for k in keys) / len(keys)
    assert abs(share - 0.2) < 0.015  # binomial sd = sqrt(.2 * .8 / 20000) = 0.0028
    salted = [split_of(k, 0.2, salt=1) for k in keys[:2000]]
    assert salted != [split_of(k, 0.2) for k in keys[:2000]]


def test_collect_split_raises_when_the_split_is_too_small():
    candidates = (Problem(str(i % 10), "0") for i in range(1000))
    with pytest.raises(ValueError, match=r"found only \d+ distinct test problems \(asked n=50\)"):
        collect_split(candidates, "test", 50, test_fraction=0.5, max_draws=1000, what="demo")


# --------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    ("operands", "operators", "value"),
    [
        ([2, 3, 4], ["+", "*"], 14),  # 2 + (3 * 4)
        ([10, 2, 3], ["-", "-"], 5),  # (10 - 2) - 3, left to right
        ([2, 3, 4, 5], ["*", "+", "*"], 26),  # 6 + 20
        ([7, 8], ["-"], -1),
        ([9, 0, 5], ["*", "-"], -5),
    ],  # 0 - 5
)
def test_evaluate_by_hand(operands, operators, value):
    assert evaluate(operands, operators) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (" 19\n", 19),
        ("x = -4.", -4),
        ("19.5", 19),
        ("1 9", 1),
        ("abc", None),
        ("", None),
        ("= 0042", 42),
        ("-", None),
        ("a-7b", -7),
    ],
)
def test_first_integer(text, value):
    assert first_integer(text) == value


def test_arithmetic_answers_match_python_eval():
    task = ArithmeticTask(digits=2, ops="+-*", terms=3)
    for problem in task.problems("train", 200, seed=3):
        assert re.fullmatch(r"\d{1,2}[+\-*]\d{1,2}[+\-*]\d{1,2}=", problem.prompt)
        assert int(problem.answer) == eval(problem.prompt[:-1])  # Python's own precedence


@pytest.mark.parametrize("seeds", [(0, 0), (0, 1), (5, 2)])
def test_arithmetic_splits_are_disjoint_for_any_seeds(seeds):
    task = ArithmeticTask(digits=2, ops="+-", terms=2)
    train = task.problems("train", 500, seed=seeds[0])
    test = task.problems("test", 200, seed=seeds[1])
    train_prompts, test_prompts = {p.prompt for p in train}, {p.prompt for p in test}
    assert len(train_prompts) == 500 and len(test_prompts) == 200  # distinct within a split
    assert not train_prompts & test_prompts


def test_arithmetic_is_deterministic_by_seed():
    task = ArithmeticTask()
    assert task.problems("train", 50, seed=4) == ArithmeticTask().problems("train", 50, seed=4)
    assert task.problems("train", 50, seed=4) != task.problems("train", 50, seed=5)
    assert task.problems("test", 0) == []


def test_arithmetic_small_space_exhausts_and_says_so():
    task = ArithmeticTask(digits=1, ops="+", terms=2, test_fraction=0.2)
    assert task.space_size == 100
    in_test = sum(split_of(f"{a}+{b}=", 0.2) == "test" for a in range(10) for b in range(10))
    test = task.problems("test", in_test, seed=0)  # every test prompt of the space is reachable
    assert len({p.prompt for p in test}) == in_test
    with pytest.raises(ValueError, match="found only"):
        task.problems("test", in_test + 1, seed=0)


def test_arithmetic_reward_true_and_wrong_answers():
    task = ArithmeticTask(digits=2, ops="-", terms=2)
    problem = Problem("10-98=", "-88")
    assert task.reward(problem, "-88") == 1.0
    assert task.reward(problem, " -88 is the answer") == 1.0
    assert task.reward(problem, "88") == 0.0
    assert task.reward(problem, "-87") == 0.0
    assert task.reward(problem, "") == 0.0
    for p in task.problems("train", 20):
        assert task.reward(p, task.reference(p)) == 1.0
        assert task.reward(p, str(int(p.answer) + 1)) == 0.0
    assert task.format_prompt(problem) == "10-98="


def test_arithmetic_strict_reward_needs_exactly_the_answer():
    loose = ArithmeticTask(digits=2, ops="-", terms=2)
    strict = ArithmeticTask(digits=2, ops="-", terms=2, strict=True)
    problem = Problem("10-98=", "-88")
    # completion -> (loose reward, strict reward): the loose one reads only the first integer.
    cases = {
        "-88": (1.0, 1.0),
        " -88\n": (1.0, 1.0),
        "-88x": (1.0, 0.0),
        "-88 -88": (1.0, 0.0),
        "-88.": (1.0, 0.0),
        "=-88": (1.0, 0.0),
        "- 88": (0.0, 0.0),
        "88": (0.0, 0.0),
        "-8": (0.0, 0.0),
        "": (0.0, 0.0),
    }
    for completion, (want_loose, want_strict) in cases.items():
        assert loose.reward(problem, completion) == want_loose, completion
        assert strict.reward(problem, completion) == want_strict, completion
    for p in strict.problems("train", 20):
        assert strict.reward(p, strict.reference(p)) == 1.0
        assert strict.reward(p, strict.reference(p) + "0") == 0.0
    # through the registry, as configs pass it (task.options.strict)
    assert tasks.get("arithmetic", digits=1, strict=True).reward(Problem("3+4=", "7"), "7 ") == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"digits": 0}, "digits"),
        ({"strict": 1}, "strict"),
        ({"terms": 1}, "terms"),
        ({"ops": "/"}, "ops"),
        ({"ops": ""}, "ops"),
        ({"test_fraction": 1.0}, "test_fraction"),
    ],
)
def test_arithmetic_rejects_bad_knobs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArithmeticTask(**kwargs)


def test_problems_rejects_bad_split_and_n():
    task = ArithmeticTask()
    with pytest.raises(ValueError, match="split"):
        task.problems("valid", 3)
    with pytest.raises(ValueError, match="n must be"):
        task.problems("train", -1)
