"""Tests for the reasoning-gym tasks: disjoint seeded splits and reasoning-gym's own verifiers."""

from __future__ import annotations

import pytest

pytest.importorskip("reasoning_gym")

from entropy_dynamics import tasks
from entropy_dynamics.tasks import GYM_TASKS, extract_tagged_answer, safe_reward


@pytest.fixture(scope="module", params=GYM_TASKS)
def gym_task(request):
    # scored in-process here (timeout_s=None); the worker path is tested once below
    return tasks.get(request.param, timeout_s=None)


def test_gym_splits_are_disjoint_distinct_and_seeded(gym_task):
    train = gym_task.problems("train", 24, seed=0)
    test = gym_task.problems("test", 8, seed=0)
    other_test = gym_task.problems("test", 8, seed=1)
    train_prompts = {p.prompt for p in train}
    assert len(train_prompts) == 24 and len({p.prompt for p in test}) == 8
    assert not train_prompts & {p.prompt for p in test + other_test}
    assert gym_task.problems("test", 8, seed=0) == test
    assert other_test != test


def test_gym_reward_true_answer_is_one_and_wrong_is_zero(gym_task):
    problems = gym_task.problems("test", 4, seed=2)
    for problem in problems:
        assert gym_task.reward(problem, gym_task.reference(problem)) == 1.0
        assert gym_task.reward(problem, "I think so.\n<answer>123457</answer>") == 0.0
        assert gym_task.reward(problem, "") == 0.0
    assert gym_task.format_prompt(problems[0]).startswith(problems[0].prompt)
    assert "<answer>" in gym_task.format_prompt(problems[0])


def test_gym_reward_reads_the_last_answer_tag(gym_task):
    problem = gym_task.problems("train", 1, seed=5)[0]
    completion = f"<answer>wrong</answer> thinking... <answer> {problem.answer} </answer>"
    assert gym_task.reward(problem, completion) == 1.0


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("<answer>42</answer>", "42"),
        ("a <answer>1</answer> b <answer>\n2 \n</answer>", "2"),
        ("  plain 7 \n", "plain 7"),
        ("<answer>unclosed", "<answer>unclosed"),
    ],
)
def test_extract_tagged_answer(completion, answer):
    assert extract_tagged_answer(completion) == answer


def test_worker_and_in_process_scores_agree():
    isolated = tasks.get("basic_arithmetic", timeout_s=30.0)
    inline = tasks.get("basic_arithmetic", timeout_s=None)
    try:
        problems = isolated.problems("test", 3, seed=0)
        completions = [isolated.reference(p) for p in problems] + ["<answer>0.5</answer>"] * 3
        for problem, completion in zip(problems * 2, completions, strict=True):
            assert isolated.reward(problem, completion) == inline.reward(problem, completion)
        assert isolated.worker.starts == 1
    finally:
        isolated.close()


def test_chain_sum_answer_is_the_value_of_its_expression():
    task = tasks.get("chain_sum", timeout_s=None, min_digits=1, max_digits=2)
    for problem in task.problems("train", 20, seed=0):
        expression = problem.prompt.split(":")[-1].rstrip("= \n")
        assert int(problem.answer) == eval(expression)  # independent check of the generator


def test_countdown_partial_credit_passes_reasoning_gym_scores_through():
    task = tasks.get("countdown", timeout_s=None, partial_credit=True)
    problem = task.problems("test", 1, seed=0)[0]
    # reasoning-gym's countdown: 1.0 for a correct expression, 0.05 when it uses other numbers
    # than the given ones, 0.01 for an empty answer.
    assert task.reward(problem, task.reference(problem)) == 1.0
    assert task.reward(problem, "<answer>1 + 1</answer>") == pytest.approx(0.05)
    assert task.reward(problem, "<answer></answer>") == pytest.approx(0.01)


def test_countdown_adversarial_answer_times_out_with_reward_zero():
    task = tasks.get("countdown", timeout_s=1.0, min_numbers=3, max_numbers=3)
    try:
        problem = task.problems("test", 1, seed=0)[0]
        task.start()  # the worker starts outside any per-call limit
        assert task.worker.starts == 1
        result = safe_reward(task, problem, "<answer>9**9**9**9</answer>")
        assert (result.reward, result.failure) == (0.0, "timeout")
        assert task.reward(problem, task.reference(problem)) == 1.0  # a fresh worker took over
        assert task.worker.timeouts == 1 and task.worker.starts == 2
    finally:
        task.close()


def test_gym_options_are_checked():
    with pytest.raises(ValueError, match=r"unknown chain_sum option.*'max_terms'"):
        tasks.get("chain_sum", max_term=3)
    with pytest.raises(ValueError, match="invalid chain_sum options"):
        tasks.get("chain_sum", min_terms=4, max_terms=2)
    with pytest.raises(ValueError, match="test_fraction"):
        tasks.get("countdown", test_fraction=0)


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("The final answer to the given arithmetic problem is 10.", "10"),
        ("7 - 9 = -2", "-2"),
        ("first 3, then 4.5 and finally 12", "12"),
        ("I think 3. <answer> 11 </answer> and 5", "11"),  # a tag wins over any number
        ("no number here", "no number here"),
    ],
)
def test_extract_answer_or_last_number(completion, answer):
    from entropy_dynamics.tasks.base import extract_answer_or_last_number

    assert extract_answer_or_last_number(completion) == answer


def test_last_number_extraction_scores_an_untagged_answer():
    strict = tasks.get("chain_sum", timeout_s=None, min_terms=2, max_terms=2, max_digits=1)
    lenient = tasks.get("chain_sum", timeout_s=None, min_terms=2, max_terms=2, max_digits=1,
                        extract="tag_or_last_number")  # fmt: skip
    problem = lenient.problems("test", 1, seed=0)[0]
    sentence = f"The final answer is {problem.answer}."
    assert strict.reward(problem, sentence) == 0.0 and lenient.reward(problem, sentence) == 1.0
    wrong = f"The final answer is {int(problem.answer) + 1}."
    assert lenient.reward(problem, wrong) == 0.0
    assert lenient.reward(problem, f"{problem.answer} <answer>{wrong}</answer>") == 0.0
    with pytest.raises(ValueError, match=r"valid: tag$"):
        tasks.get("countdown", extract="tag_or_last_number")  # its answers are expressions
    with pytest.raises(ValueError, match="valid: tag, tag_or_last_number"):
        tasks.get("chain_sum", extract="number")
