"""Tests for the trainer-driven experiments: their helpers by hand, and every quick run's result.json.

The quick runs train the tiny model for a few steps (the SFT warm start is cached after the first
run), so they are marked slow; the helper tests are fast.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from _batches import token_batch
from entropy_dynamics import experiments, methods
from entropy_dynamics.experiments import corollary, sign_test, smollm2


def _batch(advantages, discriminator, mask):
    return token_batch(mask, advantages, discriminator=discriminator, baseline=0.0)


def test_sign_condition_filter_keeps_one_quadrant():
    assert "sign_condition" in methods.names()
    batch = _batch(
        advantages=[[1.0, 1.0, -1.0, -1.0, 0.0, 1.0]],
        discriminator=[[0.2, -0.1, 0.3, -0.4, 0.5, 0.7]],
        mask=[[True, True, True, True, True, False]],
    )
    # (A, S) per token: (+,+) (+,-) (-,+) (-,-) (0,+) (+,+ but padding)
    expected = {
        (1, 1): [1, 0, 0, 0, 0, 0],
        (1, -1): [0, 1, 0, 0, 0, 0],
        (-1, 1): [0, 0, 1, 0, 0, 0],
        (-1, -1): [0, 0, 0, 1, 0, 0],
    }
    for (sample, side), keep in expected.items():
        plan = methods.build(f"grpo + sign_condition(sample={sample}, side={side})").plan(batch)
        assert plan.keep[0].int().tolist() == keep
        assert float(plan.metrics["sign_condition/frac_dropped"]) == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="sample must be 1 or -1"):
        methods.build("grpo + sign_condition(sample=0)")
    assert sign_test.CONDITIONS[0][1:] == (1, 1)


def test_corollary_per_step_statistics_by_hand(tmp_path):
    # S = [0.3, 0.1, 0.2], N = [0.1, 0.2, 0.1] -> deviation [0.2, -0.1, 0.1]: mean 0.2/3,
    # population std sqrt(((0.2-m)^2 + (-0.1-m)^2 + (0.1-m)^2) / 3), SE = std / sqrt(3).
    (tmp_path / "dist").mkdir()
    np.savez(
        tmp_path / "dist" / "step-2.npz",
        discriminator=np.array([0.3, 0.1, 0.2]),
        baseline=np.array([0.1, 0.2, 0.1]),
    )
    np.savez(
        tmp_path / "dist" / "step-10.npz",
        discriminator=np.array([0.5, 0.5]),
        baseline=np.array([0.5, 0.5]),
    )
    rows = corollary._per_step(tmp_path)
    assert [r["step"] for r in rows] == [2, 10]
    m = 0.2 / 3
    std = np.sqrt(((0.2 - m) ** 2 + (-0.1 - m) ** 2 + (0.1 - m) ** 2) / 3)
    assert rows[0]["mean_dev"] == pytest.approx(m)
    assert rows[0]["se_dev"] == pytest.approx(std / np.sqrt(3))
    assert rows[0]["ratio"] == pytest.approx(m / 0.2)
    assert rows[1]["mean_dev"] == 0.0 and rows[1]["z"] == 0.0


def test_smollm2_controller_step_is_optim_lr_times_measured_over_predicted():
    grpo = [
        {"probe_measured": [0.2, -0.4], "probe_predicted": [0.001, -0.003]},
        {"probe_measured": [0.3], "probe_predicted": [0.002]},
    ]
    got = smollm2._calibration(grpo, 1e-5)  # mean |measured| 0.3, mean |predicted| 0.002
    assert got["ratio"] == pytest.approx(150.0) and got["lr"] == pytest.approx(1.5e-3)
    no_move = smollm2._calibration([{"probe_measured": [0.0], "probe_predicted": [0.0]}], 1e-5)
    assert no_move["ratio"] == 1.0 and no_move["lr"] == 1e-5  # nothing measured: no scaling


def _check(out, name):
    data = json.loads((out / name / "result.json").read_text())
    assert data["name"] == name and data["quick"] is True and data["claims"]
    for claim in data["claims"]:
        assert set(claim) == {"claim", "holds", "measured", "threshold", "note"}
        assert isinstance(claim["holds"], bool)
    for fig in data["figures"]:
        assert (out / name / fig).read_bytes()[:4] == b"\x89PNG"
    assert f"## {name}" in (out / "report.md").read_text()
    return data


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sign-test", "corollary", "clipped-tokens", "methods", "mu"])
def test_quick_trainer_experiment_writes_its_result(tmp_path, name):
    experiments.run(name, out_dir=tmp_path, quick=True)
    data = _check(tmp_path, name)
    assert data["figures"], f"{name} drew no figure"


@pytest.mark.slow
def test_quick_network_first_order_claims_hold(tmp_path):
    experiments.run("network", out_dir=tmp_path, quick=True)
    data = _check(tmp_path, "network")
    by_claim = {c["claim"]: c for c in data["claims"]}
    # The logit-space first order is a Taylor expansion: it must hold even at quick size.
    logit = [c for text, c in by_claim.items() if text.startswith("(b)")]
    assert len(logit) == 2 and all(c["holds"] for c in logit), logit


@pytest.mark.slow
def test_quick_smollm2_experiment_runs_every_method_from_one_start(tmp_path):
    """The long SmolLM2 experiment at quick size (1 seed, 2 steps): every method trains, each
    run's step-0 evaluation is the same model on the same problems, and ``all`` leaves it out."""
    assert "smollm2" not in experiments.names()
    assert experiments.names(include_long=True)[-1] == "smollm2"
    experiments.run("smollm2", out_dir=tmp_path, quick=True)
    data = _check(tmp_path, "smollm2")
    assert set(data["metrics"]["runs"]) == set(smollm2.METHODS)
    assert data["metrics"]["same_start"] is True
    assert len(data["figures"]) == 3
    for runs in data["metrics"]["runs"].values():
        assert [len(r["entropy"]) for r in runs] == [2]
