"""The GRPO loop: resume equals an uninterrupted run, micro-batching, reliability, the probe."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from _train_fixtures import DigitTask, tiny_config
from entropy_dynamics.train import loop, rollout, step
from entropy_dynamics.train.checkpoint import latest_checkpoint
from entropy_dynamics.train.logging import read_jsonl


def _training_metrics(run_dir):
    """metrics.jsonl without wall-clock entries."""
    return [
        {k: v for k, v in row.items() if not k.startswith("time/")}
        for row in read_jsonl(run_dir / "metrics.jsonl")
    ]


def _interrupt_after(monkeypatch, n_steps: int):
    """Make the loop receive a real SIGINT right after its n-th step."""
    real_step, calls = loop.train_step, {"n": 0}

    def step_then_interrupt(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n_steps:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(loop, "train_step", step_then_interrupt)


def test_interrupt_then_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    overrides = ("steps=4", "optim.schedule=cosine", "optim.warmup_steps=1",
                 "method.spec=ppo + clip_b(mu=1.0)")  # fmt: skip
    straight = tmp_path / "straight"
    loop.train(tiny_config(straight, *overrides), task=DigitTask())

    resumed = tmp_path / "resumed"
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(loop.TrainInterrupted) as stop:  # a caller never takes it for finished
        loop.train(tiny_config(resumed, *overrides), task=DigitTask())
    assert stop.value.step == 2 and stop.value.run_dir == resumed
    assert latest_checkpoint(resumed).name == "step-2"  # Ctrl-C saved a checkpoint
    assert [r["step"] for r in read_jsonl(resumed / "metrics.jsonl")] == [1, 2]
    monkeypatch.undo()
    loop.train(tiny_config(resumed, *overrides), resume=True, task=DigitTask())

    expected, got = _training_metrics(straight), _training_metrics(resumed)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert got == expected  # bit-identical on CPU, not approximately equal
    assert any(r["loss/total"] != 0 for r in expected)  # the comparison covers real updates


def test_micro_batches_give_the_same_update_as_one_batch(tmp_path, monkeypatch):
    runs, shared = {}, {}
    real_shared = rollout.shared_prompt_hidden

    def recording(model, input_ids, attention_mask, response_len, group_size):
        shared[micro].add(group_size)
        return real_shared(model, input_ids, attention_mask, response_len, group_size)

    monkeypatch.setattr(rollout, "shared_prompt_hidden", recording)
    # 0 = whole batch (one fused forward); 4 = four micro-batches of one group (G = 4);
    # 2 = eight half-group micro-batches, whose two rows still share one prompt pass
    for micro in (0, 4, 2):
        shared[micro] = set()
        run_dir = tmp_path / f"micro{micro}"
        cfg = tiny_config(run_dir, "steps=2", f"method.micro_batch_size={micro}",
                          "method.spec=ppo + clip_b(mu=1.0)", "task.n_eval=0")  # fmt: skip
        loop.train(cfg, task=DigitTask())
        runs[micro] = _training_metrics(run_dir)
    # the prompt runs once per group, or per half group in the half-group micro-batches (their
    # batch-global statistics come from a no-gradient pass over whole groups)
    assert shared == {0: {4}, 4: {4}, 2: {4, 2}}
    for micro in (4, 2):
        for whole, split in zip(runs[0], runs[micro], strict=True):
            for key in ("loss/total", "optim/grad_norm", "entropy/mean", "clip_b/frac_dropped",
                        "entropy/measured_delta"):  # fmt: skip
                assert split[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), (micro, key)


def test_non_finite_loss_skips_steps_then_stops(tmp_path, monkeypatch, capsys):
    def nan_loss(cfg, method, plan, batch, rows, stats):
        return stats.logprobs.sum() * float("nan"), {}

    monkeypatch.setattr(step, "micro_batch_loss", nan_loss)
    cfg = tiny_config(tmp_path, "steps=10", "optim.max_nonfinite=3", "task.n_eval=0")
    before = torch.nn.utils.parameters_to_vector(loop.build_policy(cfg)[0].parameters())
    with pytest.raises(loop.NonFiniteLossError, match="max_nonfinite=3"):
        loop.train(cfg, task=DigitTask())
    assert capsys.readouterr().err.count("non-finite loss, update skipped") == 3
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]  # the third failure stops before logging
    assert all(r["loss/nonfinite"] == 1.0 for r in rows)
    model, _ = loop.build_policy(cfg)
    from entropy_dynamics.train.checkpoint import load_checkpoint

    load_checkpoint(latest_checkpoint(tmp_path), model=model, restore_rng=False)
    after = torch.nn.utils.parameters_to_vector(model.parameters())
    assert torch.equal(before, after)  # no skipped step touched the weights


def test_reward_errors_and_timeouts_score_zero_and_are_counted(tmp_path):
    # A completion containing "1" crashes the verifier; one containing "2" hangs past the limit.
    task = DigitTask(raise_on="1", sleep_on="2", sleep_s=1.0)
    cfg = tiny_config(tmp_path, "steps=2", "task.reward_timeout_s=0.05", "task.n_eval=0")
    loop.train(cfg, task=task)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert sum(r["reward/errors"] for r in rows) > 0
    assert sum(r["reward/timeouts"] for r in rows) > 0
    assert all(np.isfinite(r["reward/mean"]) for r in rows)


def test_probe_logit_prediction_matches_measurement_for_small_steps(tmp_path):
    # With a tiny learning rate the logits move little, so -sum_j S_j dz_j (first order, from
    # theory) must match the measured entropy change closely; the nominal -alpha (S - N) only
    # has to agree in sign more often than chance is not asserted (Adam rescales the step).
    cfg = tiny_config(tmp_path, "steps=2", "optim.lr=1e-5", "task.n_eval=0")
    loop.train(cfg, task=DigitTask())
    for row in read_jsonl(tmp_path / "metrics.jsonl"):
        measured, predicted = row["entropy/measured_delta"], row["entropy/pred_delta_logit"]
        assert measured != 0
        assert predicted == pytest.approx(measured, rel=0.05)
        assert row["probe/corr_pred_logit"] > 0.99


def test_run_directory_layout(tmp_path):
    cfg = tiny_config(tmp_path, "steps=2", "logging.save_batch_every=1", "method.spec=clip_v",
                      "logging.eval_every=1")  # fmt: skip
    loop.train(cfg, task=DigitTask())
    assert (tmp_path / "config.yaml").exists()
    evals = read_jsonl(tmp_path / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 1, 2]
    assert sum(evals[-1]["pass_rate_hist"]) == evals[-1]["num_prompts"] == 4
    dist = np.load(tmp_path / "dist" / "step-2.npz")
    n_valid = read_jsonl(tmp_path / "metrics.jsonl")[-1]["response/length"] * 16  # B = 4 * 4
    assert dist["discriminator"].shape == dist["baseline"].shape == (round(n_valid),)
    saved = torch.load(tmp_path / "batches" / "step-2.pt", weights_only=True)
    assert saved["method"] == "clip_v" and saved["batch"]["baseline"] is not None
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step-2"
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors", "optimizer.pt", "rng.json", "state.json", "digest.json"}  # fmt: skip
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2


_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from _train_fixtures import DigitTask, tiny_config
from entropy_dynamics.train.loop import TrainInterrupted, train
try:
    train(tiny_config({run_dir!r}, "steps=400", "logging.checkpoint_every=2", "task.n_eval=0",
                      "logging.probe_every=0"), resume={resume}, task=DigitTask())
except TrainInterrupted:  # raised after the checkpoint: a clean stop for this caller
    pass
"""


def _start_child(run_dir, *, resume: bool):
    import subprocess
    import sys
    from pathlib import Path

    code = _CHILD.format(tests=str(Path(__file__).parent), run_dir=str(run_dir), resume=resume)
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def _wait_for_steps(run_dir, n: int, child, timeout_s: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None:
        if len(read_jsonl(run_dir / "metrics.jsonl")) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the child did not reach {n} steps (exit code {child.poll()})")


@pytest.mark.slow
def test_kill_9_then_resume_loses_only_steps_after_the_last_checkpoint(tmp_path):
    child = _start_child(tmp_path, resume=False)
    _wait_for_steps(tmp_path, 5, child)
    child.kill()  # SIGKILL: no handler runs
    child.wait()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["step"] == i + 1 for i, line in enumerate(lines))  # no torn line
    checkpoint = int(latest_checkpoint(tmp_path).name.split("-")[1])
    assert checkpoint % 2 == 0 and len(lines) - checkpoint <= 2  # at most the steps since it

    child = _start_child(tmp_path, resume=True)
    _wait_for_steps(tmp_path, checkpoint + 3, child)
    os.kill(child.pid, signal.SIGINT)  # Ctrl-C in a real process: checkpoint, clean exit
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "Traceback" not in err and "checkpoint saved" in err
    steps = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1))  # truncated to the checkpoint, then resumed
    assert int(latest_checkpoint(tmp_path).name.split("-")[1]) == steps[-1]


def test_statistics_from_hidden_states_equal_those_from_logits(tmp_path):
    runs = {}
    for source in ("logits", "hidden"):
        run_dir = tmp_path / source
        cfg = tiny_config(run_dir, "steps=2", f"model.stats_from={source}", "task.n_eval=0",
                          "method.spec=clip_v(mu=1.0, max_frac=1.0)")  # fmt: skip
        loop.train(cfg, task=DigitTask())
        runs[source] = _training_metrics(run_dir)
    for from_logits, from_hidden in zip(runs["logits"], runs["hidden"], strict=True):
        for key in ("entropy/mean", "entropy/s_mean", "entropy/n_mean", "loss/total",
                    "clip_v/frac_dropped", "entropy/measured_delta", "entropy/pred_delta"):  # fmt: skip
            assert from_hidden[key] == pytest.approx(from_logits[key], rel=1e-4, abs=1e-7), key


def test_resume_of_a_finished_run_changes_nothing_and_resume_without_checkpoint_restarts(
    tmp_path, capsys
):
    cfg = tiny_config(tmp_path, "steps=2", "task.n_eval=0")
    loop.train(cfg, task=DigitTask())
    before = (tmp_path / "metrics.jsonl").read_text()
    loop.train(cfg, resume=True, task=DigitTask())
    assert (tmp_path / "metrics.jsonl").read_text() == before

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "metrics.jsonl").write_text('{"step": 1, "stale": 1.0}\n{"step": 2, "sta')
    loop.train(tiny_config(fresh, "steps=1", "task.n_eval=0"), resume=True, task=DigitTask())
    assert "no checkpoint" in capsys.readouterr().err
    rows = read_jsonl(fresh / "metrics.jsonl")  # the stale lines are gone, one new step
    assert [r["step"] for r in rows] == [1] and "stale" not in rows[0]


def test_ppo_epochs_make_later_passes_off_policy(tmp_path):
    cfg = tiny_config(tmp_path, "steps=1", "method.ppo_epochs=3", "task.n_eval=0")
    loop.train(cfg, task=DigitTask())
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    # loss/ratio_mean is averaged over the 3 passes: 1 exactly in the first (on-policy), not
    # 1 in the later two, after the weights moved.
    assert row["loss/ratio_mean"] != pytest.approx(1.0, abs=1e-6)
    assert row["plan/frac_kept"] == 1.0


def test_kl_to_the_frozen_initial_policy(tmp_path):
    cfg = tiny_config(tmp_path, "steps=2", "method.spec=grpo + kl_ref(coef=0.1)", "task.n_eval=0")
    loop.train(cfg, task=DigitTask())
    first, second = read_jsonl(tmp_path / "metrics.jsonl")
    assert first["kl_ref/kl"] == pytest.approx(0.0, abs=1e-7)  # the policy is the reference
    assert second["kl_ref/kl"] > 1e-6  # after one update they differ
