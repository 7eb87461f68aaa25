"""Tests for math-verify grading under a hard time limit, the worker process, and the math task."""

from __future__ import annotations

import pickle
import re
import threading
import time
from fractions import Fraction

import pytest

pytest.importorskip("math_verify")

from entropy_dynamics import tasks
from entropy_dynamics.tasks import MathVerifier, RewardTimeout, safe_reward
from entropy_dynamics.tasks.isolated import IsolatedWorker
from entropy_dynamics.tasks.math_answers import latex_number, math_verify_match

PATHOLOGICAL = r"\boxed{9^{9^{9^{9}}}}"  # math-verify tries to evaluate it: runs for minutes


@pytest.fixture(scope="module")
def verifier():
    grader = MathVerifier(timeout_s=1.0)
    yield grader
    grader.close()


@pytest.mark.parametrize(
    ("answer", "completion", "reward"),
    [
        (r"\frac{11}{12}", "11/12", 1.0),
        (r"\frac{11}{12}", r"so \boxed{\frac{22}{24}}", 1.0),
        (r"\frac{11}{12}", "0.916667", 1.0),
        (r"\frac{11}{12}", "12/11", 0.0),
        ("72", "The answer is 72.", 1.0),
        ("72", "71", 0.0),
        ("72", "", 0.0),
        ("-3", r"$x = -3$", 1.0),
        ("-3", "3", 0.0),
    ],
)
def test_math_verify_equivalent_forms(answer, completion, reward):
    assert float(math_verify_match(answer, completion)) == reward


def test_unparseable_reference_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="reference answer"):
        math_verify_match("", "5")


def test_pathological_output_times_out_and_the_worker_recovers(verifier):
    assert verifier("5", r"\boxed{5}") == 1.0  # the first call starts the worker
    start = time.perf_counter()
    with pytest.raises(RewardTimeout, match="ran past 1 s"):
        verifier("5", PATHOLOGICAL)
    elapsed = time.perf_counter() - start
    assert 1.0 <= elapsed < 5.0  # the limit, plus killing the process
    assert verifier.timeouts == 1
    assert verifier("5", r"\boxed{5}") == 1.0 and verifier.worker.starts == 2


def test_grading_works_off_the_main_thread(verifier):
    # math-verify's own signal-based timeouts raise ValueError outside the main thread; the
    # worker process does not care which thread calls it.
    results = []
    thread = threading.Thread(target=lambda: results.append(verifier(r"\frac{1}{2}", "0.5")))
    thread.start()
    thread.join()
    assert results == [1.0]


def test_worker_reports_errors_and_survives_them():
    worker = IsolatedWorker(timeout_s=20.0)
    try:
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            worker.call(divmod, 1, 0)
        assert worker.call(divmod, 7, 2) == (3, 1)
        assert worker.starts == 1
    finally:
        worker.close()


def test_worker_interrupted_mid_call_is_replaced(monkeypatch):
    worker = IsolatedWorker(timeout_s=20.0)
    try:
        assert worker.call(divmod, 9, 4) == (2, 1)
        monkeypatch.setattr(
            IsolatedWorker,
            "_wait",
            staticmethod(lambda process, timeout_s: (_ for _ in ()).throw(KeyboardInterrupt)),
        )
        with pytest.raises(KeyboardInterrupt):
            worker.call(divmod, 1, 1)  # its reply must not be read as the next call's
        monkeypatch.undo()
        assert worker.call(divmod, 10, 3) == (3, 1) and worker.starts == 2
    finally:
        worker.close()


def test_worker_does_not_import_torch_or_the_package_root():
    worker = IsolatedWorker(timeout_s=20.0)
    try:
        loaded = worker.call(
            eval,
            "sorted(m for m in __import__('sys').modules "
            "if m == 'torch' or m.startswith('entropy_dynamics'))",
        )
        assert loaded == [
            "entropy_dynamics",
            "entropy_dynamics._jsonl",  # json only: the JSONL task reader
            "entropy_dynamics.tasks",
            "entropy_dynamics.tasks.arithmetic",
            "entropy_dynamics.tasks.base",
            "entropy_dynamics.tasks.gym",
            "entropy_dynamics.tasks.isolated",
            "entropy_dynamics.tasks.jsonl",
            "entropy_dynamics.tasks.math_answers",
        ]
    finally:
        worker.close()


def test_worker_pickles_without_its_process():
    worker = IsolatedWorker(timeout_s=3.0)
    copy = pickle.loads(pickle.dumps(worker))
    assert copy.timeout_s == 3.0 and copy._process is None
    with pytest.raises(ValueError, match="timeout_s"):
        IsolatedWorker(timeout_s=0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Fraction(3), "3"),
        (Fraction(11, 12), r"\frac{11}{12}"),
        (Fraction(-1, 2), r"-\frac{1}{2}"),
        (Fraction(0), "0"),
    ],
)
def test_latex_number(value, text):
    assert latex_number(value) == text


def _solve_from_prompt(prompt: str) -> Fraction:
    """Independent reading of a generated prompt: parse its numbers and compute the answer."""
    fraction = re.search(
        r"\\frac\{(\d+)\}\{(\d+)\} (\+|-|\\times) \\frac\{(\d+)\}\{(\d+)\}", prompt
    )
    if fraction:
        a, b, op, c, d = fraction.groups()
        left, right = Fraction(int(a), int(b)), Fraction(int(c), int(d))
        return {"+": left + right, "-": left - right, "\\times": left * right}[op]
    a, sign, b, c = re.search(r"\$(-?\d+)x ([+-]) (\d+) = (-?\d+)\$", prompt).groups()
    b = int(b) if sign == "+" else -int(b)
    x = Fraction(int(c) - b, int(a))
    assert int(a) * x + b == int(c)
    return x


def test_math_task_answers_splits_and_rewards():
    task = tasks.get("math", timeout_s=None)  # in-process grading; the worker is tested above
    train = task.problems("train", 40, seed=0)
    test = task.problems("test", 10, seed=0)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert task.problems("test", 10, seed=0) == test
    assert {p.meta["kind"] for p in train} == {"fraction", "linear"}
    for problem in train[:12]:
        assert problem.answer == latex_number(_solve_from_prompt(problem.prompt))
        assert task.reward(problem, task.reference(problem)) == 1.0
        wrong = latex_number(_solve_from_prompt(problem.prompt) + 1)
        assert task.reward(problem, rf"\boxed{{{wrong}}}") == 0.0
    assert task.format_prompt(train[0]).endswith(r"Put the final answer in \boxed{}.")


def test_math_task_timeout_counts_as_a_failure():
    task = tasks.get("math", timeout_s=1.0)
    try:
        problem = task.problems("test", 1, seed=0)[0]
        result = safe_reward(task, problem, PATHOLOGICAL)
        assert (result.reward, result.failure) == (0.0, "timeout")
    finally:
        task.close()


def test_math_task_options_are_checked():
    with pytest.raises(ValueError, match="kinds"):
        tasks.get("math", kinds=("geometry",))
    with pytest.raises(ValueError, match="max_value"):
        tasks.get("math", max_value=1)
