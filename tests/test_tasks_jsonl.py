"""Tests for the jsonl task: schema errors, the seeded disjoint split, both graders, datasets files."""

from __future__ import annotations

import json

import pytest

from entropy_dynamics import tasks
from entropy_dynamics.tasks import JsonlTask, read_records
from entropy_dynamics.tasks.base import split_of


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def data_file(tmp_path):
    records = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i), "id": i} for i in range(200)]
    return _write_jsonl(tmp_path / "data.jsonl", records)


def test_split_is_disjoint_fixed_by_split_seed_and_covers_everything(data_file):
    task = JsonlTask(data_file, grader="exact", test_fraction=0.25, split_seed=3)
    train, test = task.splits["train"], task.splits["test"]
    assert len(train) + len(test) == 200
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert 30 <= len(test) <= 70  # 200 * 0.25 = 50 expected; binomial sd ~ 6
    expected_test = {p.prompt for p in train + test if split_of(p.prompt, 0.25, salt=3) == "test"}
    assert {p.prompt for p in test} == expected_test
    again = JsonlTask(data_file, grader="exact", test_fraction=0.25, split_seed=3)
    assert again.problems("test", 10, seed=1) == task.problems("test", 10, seed=1)
    other = JsonlTask(data_file, grader="exact", test_fraction=0.25, split_seed=4)
    assert {p.prompt for p in other.splits["test"]} != {p.prompt for p in test}


def test_problems_order_follows_seed_without_repeats(data_file):
    task = JsonlTask(data_file, grader="exact")
    n_train = len(task.splits["train"])
    every = task.problems("train", n_train, seed=0)
    assert len({p.prompt for p in every}) == n_train
    assert task.problems("train", 5, seed=0) != task.problems("train", 5, seed=1)
    with pytest.raises(ValueError, match=f"train split has {n_train} problems, asked for"):
        task.problems("train", n_train + 1)


def test_extra_fields_are_kept_and_numbers_become_strings(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "answer": 72, "source": "gsm8k"}])
    (problem,) = read_records(path)
    assert problem.answer == "72" and problem.meta == {"source": "gsm8k"}


def test_duplicate_prompts_land_on_one_side_once(tmp_path):
    records = [{"prompt": f"q{i % 50}", "answer": str(i % 50)} for i in range(150)]
    task = JsonlTask(_write_jsonl(tmp_path / "dup.jsonl", records), grader="exact")
    prompts = [p.prompt for p in task.splits["train"] + task.splits["test"]]
    assert sorted(prompts) == sorted(f"q{i}" for i in range(50))


def test_exact_grader(data_file):
    task = tasks.get("jsonl", path=str(data_file), grader="exact")
    problem = task.problems("test", 1)[0]
    assert task.reward(problem, problem.answer) == 1.0
    assert task.reward(problem, f"  {problem.answer}\n") == 1.0
    assert task.reward(problem, f"work <answer>{problem.answer}</answer>") == 1.0
    assert task.reward(problem, f"{problem.answer}0") == 0.0
    assert task.reward(problem, f"The answer is {problem.answer}") == 0.0  # exact, not contains


def test_math_verify_grader(tmp_path):
    pytest.importorskip("math_verify")
    records = [
        {"prompt": "Half of one?", "answer": r"\frac{1}{2}"},
        {"prompt": "Two plus two?", "answer": "4"},
    ]
    task = JsonlTask(_write_jsonl(tmp_path / "m.jsonl", records), test_fraction=0.5, timeout_s=None)
    for problem in task.splits["train"] + task.splits["test"]:
        assert task.reward(problem, task.reference(problem)) == 1.0
        assert task.reward(problem, r"\boxed{7}") == 0.0
    half = next(p for p in task.splits["train"] + task.splits["test"] if "Half" in p.prompt)
    assert task.reward(half, "It is 0.5") == 1.0


def test_parquet_and_json_files_through_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = [{"question": f"q{i}", "answer": str(i)} for i in range(30)]
    table = datasets.Dataset.from_list(records)
    table.to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "d.json").write_text(json.dumps(records))
    for name in ("d.parquet", "d.json"):
        problems = read_records(tmp_path / name, prompt_key="question")
        assert [(p.prompt, p.answer) for p in problems] == [(f"q{i}", str(i)) for i in range(30)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "p"}\n', r"record 1: missing key\(s\) \['answer'\]"),
        (
            '{"prompt": "p", "answer": "1"}\n{"question": "q", "answer": "2"}\n',
            r"record 2: missing key\(s\) \['prompt'\].*got keys \['answer', 'question'\]",
        ),
        ('{"prompt": "", "answer": "1"}\n', "'prompt' must be a non-empty string"),
        ('{"prompt": 3, "answer": "1"}\n', "'prompt' must be a non-empty string"),
        ('{"prompt": "p", "answer": [1]}\n', "'answer' must be a string or a number, got list"),
        ('{"prompt": "p", "answer": "1"}\n{oops\n', r"d.jsonl:2: not valid JSON"),
        ('["p", "1"]\n', "d.jsonl:1: each line must be a JSON object, got list"),
        ("\n\n", "holds no records"),
    ],
)
def test_schema_errors_are_clear(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        JsonlTask(path, grader="exact")


def test_path_and_option_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        JsonlTask(tmp_path / "missing.jsonl")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported extension '\.txt'"):
        JsonlTask(tmp_path / "d.txt")
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "answer": "1"}])
    with pytest.raises(ValueError, match="grader must be one of"):
        JsonlTask(path, grader="fuzzy")
    with pytest.raises(ValueError, match="test_fraction"):
        JsonlTask(path, test_fraction=1.5)
