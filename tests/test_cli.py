"""The `entropy-dynamics` command: help on every subcommand, light import, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _train_fixtures import TINY
from entropy_dynamics import cli

SUBCOMMANDS = ("train", "eval", "report", "demo", "lens")


def test_import_is_light():
    code = (
        "import sys, time; t = time.perf_counter(); import entropy_dynamics.cli as c; "
        "c.build_parser(); dt = time.perf_counter() - t; "
        "heavy = [m for m in ('transformers', 'trl', 'matplotlib', 'entropy_dynamics.train.loop') "
        "if m in sys.modules]; print(heavy, dt)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, seconds = out.stdout.rsplit(" ", 1)
    assert heavy == "[]", f"importing the CLI loaded {heavy}"
    assert float(seconds) < 10  # torch dominates; transformers would add several seconds more


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_each_subcommand(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert f"entropy-dynamics {command}" in text and len(text) > 200


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for command in (*SUBCOMMANDS, "reproduce"):
        assert command in text


def test_config_error_is_a_message_listing_valid_values(capsys):
    code = cli.main(["train", "optim.schedule=cosin"])
    assert code == 2
    err = capsys.readouterr().err
    assert "optim.schedule='cosin'" in err and "constant, linear, cosine" in err
    assert "Traceback" not in err


def test_train_eval_lens_report_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir), *TINY, "steps=2", "task.name=arithmetic",
            "task.options={digits: 1, terms: 2}", "logging.save_batch_every=2",
            "logging.probe_every=1"]  # fmt: skip
    assert cli.main(args) == 0
    assert cli.main(["eval", str(run_dir), "--k", "2", "--n", "3"]) == 0
    printed = capsys.readouterr().out
    record = json.loads(printed[printed.index("{") :])
    assert record["step"] == 2 and record["num_prompts"] == 3 and record["k"] == 2
    assert cli.main(["lens", str(run_dir), "--out", str(tmp_path / "lens.json")]) == 0
    assert "unified lens" in capsys.readouterr().out
    assert json.loads((tmp_path / "lens.json").read_text())["step"] == 2
    assert cli.main(["report", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").exists()
    assert (tmp_path / "report" / "report.html").exists()


def test_demo_writes_report_and_summary_with_the_documented_schema(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--out", str(out), "steps=2", "model.sft_steps=3",
                     f"model.sft_cache={tmp_path / 'sft'}", "model.sft_batch_size=8",
                     "task.n_eval=3", "logging.eval_k=2", "logging.eval_every=2",
                     "logging.progress=false", "logging.tensorboard=false",
                     "rollout.prompts_per_step=2", "rollout.group_size=2"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"duration_s", "seeds", "k", "runs", "methods", "versus_first"}
    assert isinstance(summary["duration_s"], float) and summary["seeds"] == [0, 1, 2]
    names = ["grpo", "clip_b", "clip_v"]
    assert [(run["name"], run["seed"]) for run in summary["runs"]] == [
        (name, seed) for name in names for seed in (0, 1, 2)
    ]
    for run in summary["runs"]:
        assert set(run) == {"name", "method", "seed", "start", "final"}
        assert isinstance(run["method"], str) and isinstance(run["seed"], int)
        assert set(run["start"]) == {"avg@k", "pass@k", "greedy"}  # the step-0 evaluation
        assert set(run["final"]) == {"entropy", "reward", "avg@k", "pass@k", "greedy", "k"}
        assert run["final"]["k"] == 2
        assert all(isinstance(run["final"][key], float) for key in ("entropy", "reward",
                                                                     "avg@k", "pass@k"))  # fmt: skip
    assert list(summary["methods"]) == names and list(summary["versus_first"]) == names[1:]
    for block in summary["methods"].values():
        for change in block["change"].values():
            assert change["lo"] <= change["mean"] <= change["hi"]
    report = (out / "report.md").read_text()
    assert "start (step 0) vs after RL, 3 seeds" in report and (out / "report.html").exists()
    assert (out / "figures" / "demo.png").exists()
    assert len(list((tmp_path / "sft").glob("*.safetensors"))) == 3  # one per seed, shared
