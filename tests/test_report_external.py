"""`report` on other trainers' logs: a real TRL GRPOTrainer output directory and verl's tracker.

The TRL directory comes from a real 4-step GRPOTrainer run on the tiny model with
EntropyDynamicsCallback and `report_to="tensorboard"`; the verl JSONL from verl 0.9.1's own
`Tracking` file logger (in .venv-verl, skipped without it) or in the format that logger writes
(`{"step": N, "data": {...}}` per line, verl/utils/tracking.py `FileLogger.log`); verl's
TensorBoard files from torch's `SummaryWriter`, the writer verl's adapter uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("tensorboard")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from entropy_dynamics.cli import main as cli_main
from entropy_dynamics.integrations.trl import EntropyDynamicsCallback
from entropy_dynamics.models import build_char_tokenizer, build_tiny_model
from entropy_dynamics.report import load_run, write_report

ROOT = Path(__file__).resolve().parents[1]
VERL_PYTHON = ROOT / os.environ.get("VERL_VENV", ".venv-verl") / "bin" / "python"
STEPS = 4


def reward_by_chars(completions, **kwargs):
    return [float(sum(map(ord, c)) % 7) for c in completions]


@pytest.fixture(scope="module")
def trl_dir(tmp_path_factory) -> Path:
    """A real TRL output directory: trainer_state.json, checkpoint-N/, TensorBoard events."""
    out = tmp_path_factory.mktemp("trl") / "grpo_tiny"
    tokenizer = build_char_tokenizer()
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=STEPS,
        logging_steps=1,
        report_to=["tensorboard"],
        use_cpu=True,
        save_strategy="steps",
        save_steps=2,
        learning_rate=1e-2,
        seed=0,
        bf16=False,
    )
    trainer = GRPOTrainer(
        model=build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=1),
        processing_class=tokenizer,
        reward_funcs=reward_by_chars,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [f"{i}+{2 * i}=" for i in range(32)]}),
    )
    trainer.add_callback(EntropyDynamicsCallback(trainer, probe_steps=1))
    trainer.train()
    trainer.save_state()  # output_dir/trainer_state.json
    return out


def _logged(trl_dir: Path, key: str) -> list[float]:
    state = json.loads((trl_dir / "trainer_state.json").read_text())
    return [row[key] for row in state["log_history"] if key in row]


def test_trl_output_directory_gives_the_report_its_figures(trl_dir, tmp_path):
    run = load_run(trl_dir)
    assert run.name == "grpo_tiny" and "read from TRL's trainer_state.json" in run.notes[0]
    steps, entropy = run.series("entropy/mean")  # TRL's `entropy`
    assert steps.tolist() == list(range(1, STEPS + 1))
    assert entropy.tolist() == _logged(trl_dir, "entropy")
    assert run.series("reward/mean")[1].tolist() == _logged(trl_dir, "reward")
    for key in ("entropy/s_mean", "entropy/measured_delta", "entropy/pred_delta"):
        assert run.series(key)[1].tolist() == _logged(trl_dir, key), key

    md = write_report([trl_dir], tmp_path / "out")
    text = md.read_text()
    for name in ("entropy.png", "reward_accuracy.png", "entropy_prediction.png"):
        assert (tmp_path / "out" / "figures" / name).stat().st_size > 10_000, name
        assert f"figures/{name}" in text
    assert "read from TRL's trainer_state.json log_history" in text
    assert (tmp_path / "out" / "report.html").stat().st_size > 30_000


def test_trl_checkpoint_state_and_tensorboard_events_are_read_too(trl_dir, tmp_path):
    copy = tmp_path / "grpo_tiny"
    shutil.copytree(trl_dir, copy)
    (copy / "trainer_state.json").unlink()  # the latest checkpoint's state is then read
    run = load_run(copy)
    assert "checkpoint-4" in run.notes[0]
    assert run.series("entropy/mean")[1].tolist() == _logged(trl_dir, "entropy")
    for state in copy.glob("checkpoint-*/trainer_state.json"):
        state.unlink()
    run = load_run(copy)  # only the TensorBoard events are left (tags train/<key>)
    assert "TensorBoard" in run.notes[0]
    for key, trl_key in (("entropy/mean", "entropy"), ("entropy/s_mean", "entropy/s_mean")):
        steps, values = run.series(key)
        assert steps.tolist() == list(range(1, STEPS + 1))
        assert values.tolist() == pytest.approx(_logged(trl_dir, trl_key), rel=1e-6)  # float32


def test_cli_report_on_a_trl_output_directory(trl_dir, tmp_path, capsys):
    assert cli_main(["report", str(trl_dir), "--out", str(tmp_path / "cli")]) == 0
    assert "report:" in capsys.readouterr().out
    assert (tmp_path / "cli" / "figures" / "entropy_prediction.png").is_file()


def _verl_metrics(step: int) -> dict[str, float]:
    """Keys as verl 0.9.1 logs them, and our verl adapter's under `entropy_dynamics/`."""
    return {
        "actor/entropy": 1.2 - 0.05 * step,
        "critic/score/mean": 0.1 * step,
        "actor/pg_clipfrac": 0.002 * step,
        "entropy_dynamics/clip_b/frac_dropped": 0.01 + 0.001 * step,
        "entropy_dynamics/entropy/s_mean": 1e-3 * step,
        "timing_s/step": 3.0,
    }


def _check_verl_run(run, steps: int) -> None:
    got_steps, entropy = run.series("entropy/mean")
    assert got_steps.tolist() == list(range(1, steps + 1))
    assert entropy.tolist() == pytest.approx([1.2 - 0.05 * s for s in got_steps], rel=1e-6)
    assert run.series("reward/mean")[1].tolist() == pytest.approx([0.1 * s for s in got_steps])
    assert run.series("clip_b/frac_dropped")[1].tolist() == pytest.approx(
        [0.01 + 0.001 * s for s in got_steps], rel=1e-6
    )


def test_verl_file_logger_jsonl(tmp_path):
    project = tmp_path / "my_project"
    project.mkdir()
    with open(project / "exp1.jsonl", "w") as f:  # FileLogger.log: {"step", "data"} per line
        for step in range(1, 11):
            f.write(json.dumps({"step": step, "data": _verl_metrics(step)}) + "\n")
    run = load_run(project / "exp1.jsonl")
    assert run.name == "exp1" and "verl's file logger" in run.notes[0]
    _check_verl_run(run, 10)
    _check_verl_run(load_run(project), 10)  # the project folder holding it
    md = write_report([project / "exp1.jsonl"], tmp_path / "out")
    text = md.read_text()
    for name in ("entropy.png", "reward_accuracy.png", "drop_fractions.png"):
        assert f"figures/{name}" in text, name
    assert "actor/pg_clipfrac" in text or (tmp_path / "out/figures/drop_fractions.png").is_file()


def test_verl_tensorboard_events(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "tensorboard_log" / "my_project" / "exp1"
    writer = SummaryWriter(str(folder))  # what verl's _TensorboardAdapter does
    for step in range(1, 8):
        for key, value in _verl_metrics(step).items():
            writer.add_scalar(key, value, step)
    writer.close()
    run = load_run(folder)
    assert run.name == "exp1" and "TensorBoard" in run.notes[0]
    _check_verl_run(run, 7)


def test_verl_own_file_logger_output_is_read(tmp_path):
    if not VERL_PYTHON.exists():
        pytest.skip(f"{VERL_PYTHON.parent.parent.name} is absent (scripts/setup-verl-env.sh)")
    script = (
        "import json, sys\n"
        "from verl.utils.tracking import Tracking\n"
        "t = Tracking(project_name='my_project', experiment_name='exp1', default_backend=['file'])\n"
        "for step, data in json.loads(sys.argv[1]):\n"
        "    t.log(data, step=step)\n"
        "t.finish()\n"
    )
    rows = [(step, _verl_metrics(step)) for step in range(1, 6)]
    subprocess.run(
        [str(VERL_PYTHON), "-c", script, json.dumps(rows)],
        cwd=tmp_path,
        env=dict(os.environ, VERL_FILE_LOGGER_ROOT=str(tmp_path)),
        check=True,
        capture_output=True,
        timeout=120,
    )
    _check_verl_run(load_run(tmp_path / "my_project" / "exp1.jsonl"), 5)


def test_a_path_with_no_known_log_says_what_is_read(tmp_path):
    (tmp_path / "notes.jsonl").write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match=r"holds no log the report reads.*TRL output directory"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_run(tmp_path / "missing")
