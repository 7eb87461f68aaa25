"""docs/results.md and the README's Results and demo blocks equal what scripts/write_results.py
renders from the committed result.json / summary.json files; the statistics behind the claims;
re-running an experiment gives the same result.json."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from entropy_dynamics import experiments
from entropy_dynamics.experiments.common import bootstrap_difference, per_problem, seed_interval

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("write_results", ROOT / "scripts/write_results.py")
write_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(write_results)


def test_committed_docs_equal_what_the_generator_renders():
    rendered = write_results.rendered()
    assert write_results.RESULTS_MD in rendered, "docs/results/*/result.json missing"
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name} is stale: run scripts/write_results.py"


def test_committed_results_are_a_full_default_size_run():
    results = write_results.load_results()
    assert [r["name"] for r in results] == experiments.names(include_long=True)
    assert not any(r["quick"] for r in results)
    for r in results:
        for figure in r["figures"]:
            assert (write_results.RESULTS / r["name"] / figure).is_file()


def test_readme_demo_block_quotes_the_committed_summary():
    summary = json.loads((write_results.RESULTS / "demo" / "summary.json").read_text())
    grpo = summary["methods"]["grpo"]
    block = write_results.README.read_text().split(write_results.BLOCKS["demo"][0])[1]
    block = block.split(write_results.BLOCKS["demo"][1])[0]
    assert f"{grpo['start']['avg@k']:.3f}" in block and f"{grpo['final']['avg@k']:.3f}" in block
    assert len(summary["seeds"]) == 3 and summary["duration_s"] < 600  # the demo fits 10 min
    for run in summary["runs"]:
        assert set(run["start"]) == {"avg@k", "pass@k", "greedy"}


def test_seed_interval_matches_a_hand_computed_t_interval():
    got = seed_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert got["mean"] == 2.0 and got["n"] == 3
    assert got["lo"] == pytest.approx(2 - 4.303 / 3**0.5) and got["hi"] == pytest.approx(
        2 + 4.303 / 3**0.5
    )
    assert seed_interval([5.0])["lo"] is None  # one seed: no interval


def test_per_problem_values_from_a_pass_count_histogram():
    hist = [2, 1, 0, 1]  # k = 3: two problems 0/3, one 1/3, one 3/3
    assert per_problem(hist, "avg").tolist() == pytest.approx([0, 0, 1 / 3, 1])
    assert per_problem(hist, "pass").tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="'avg' or 'pass'"):
        per_problem(hist, "greedy")


def test_bootstrap_difference_separates_a_real_change_from_none():
    rng = np.random.default_rng(1)
    before = [rng.binomial(1, 0.2, 200).astype(float) for _ in range(3)]
    after = [rng.binomial(1, 0.6, 200).astype(float) for _ in range(3)]
    real = bootstrap_difference(before, after)
    assert real["lo"] > 0.3 and real["lo"] < real["mean"] < real["hi"]
    same = bootstrap_difference(before, before)
    assert same["mean"] == 0.0 and same["lo"] < 0 < same["hi"]
    assert bootstrap_difference(before, after) == real  # seeded: the same interval every time


def test_rerunning_an_experiment_gives_the_same_result_json(tmp_path):
    def numbers(out):
        experiments.run("sign-test", out_dir=out, quick=True)
        data = json.loads((Path(out) / "sign-test" / "result.json").read_text())
        data.pop("duration_s")  # the one field that varies
        return data

    assert numbers(tmp_path / "a") == numbers(tmp_path / "b")
