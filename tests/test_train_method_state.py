"""Method state in the trainer: kill -9 + resume is bit-exact for every stateful part (and for a
KL reference reset every N steps), and every logged metric is the same for any micro-batching
(one rule: ``Method.finalize_metrics``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _train_fixtures import DigitTask, tiny_config
from entropy_dynamics import methods
from entropy_dynamics.train import loop
from entropy_dynamics.train.checkpoint import latest_checkpoint
from entropy_dynamics.train.logging import read_jsonl

# Every registered part whose init_state() is not empty, with settings that make its state move
# on this tiny task: the adaptive coefficient climbs (target far above the entropy), Clip-Cov
# draws among many candidates (wide covariance band, 20 % of tokens).
STATEFUL = {
    "adaptive_entropy_bonus": "ppo + adaptive_entropy_bonus(target=50.0, step=0.01)",
    "clip_cov": "ppo(eps_low=1.0, eps_high=1.0) + clip_cov(ratio=0.2, lb=-100.0, ub=100.0)",
    # EntroPIC: target just under the tiny model's entropy (about 4.6), a large I gain: alpha moves
    "entropic": "ppo(dual_clip=3.0) + entropic(target=4.5, kp=0.01, ki=0.2)",
    # AEnt: no warm-up, a band far above the clamped entropy, so the coefficient climbs
    "aent": "ppo + aent(coef=0.0, low=50.0, high=60.0, coef_lr=0.01, min_coef=0.0, max_coef=1.0, "
    "warmup_steps=0)",
    # target_entropy: a target scheduled across the entropy (the step moves it), a small P gain
    # so that the choice is often unsaturated: the integral moves the desired change
    "target_entropy": "ppo + target_entropy(target=4.62, target_end=4.5, schedule_steps=8, "
    "lr=50.0, gain=0.05, ki=0.1, max_drop=0.5)",
    # AEPO: the entropy (about 4.6) starts above high and stays far above low, so after the
    # first steps only the switch's state keeps the negative samples out (a fresh one is off)
    "aepo": "ppo + aepo(low=1.0, high=4.59)",
}
# ProRL's reference reset is no part state (the trainer holds the reference and the optimiser),
# but resuming must restore the reset reference: every 2 steps, with the optimiser state
RESET = "ppo + kl_ref(coef=0.1, reset_every=2, reset_optimizer=True)"
STEPS = 10

_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from _train_fixtures import DigitTask, tiny_config
from entropy_dynamics.train.loop import train
train(tiny_config({run_dir!r}, {spec!r}, "steps={steps}", "logging.checkpoint_every=1",
                  "task.n_eval=0", "logging.probe_every=0"), task=DigitTask())
"""


def _metrics(run_dir: Path) -> list[dict]:
    return [
        {k: v for k, v in row.items() if not k.startswith("time/")}
        for row in read_jsonl(run_dir / "metrics.jsonl")
    ]


def test_every_stateful_part_is_covered():
    kinds = ("surrogate", "filter", "regulariser", "reweight", "advantage")
    parts = [name for kind in kinds for name in methods.names(kind=kind)]
    assert len(parts) > 10
    # every part builds with its defaults
    stateful = {name for name in parts if methods.get_part(name)().init_state()}
    assert stateful == set(STATEFUL), "add the new stateful part to STATEFUL"


def _straight_and_resumed(tmp_path, spec: str) -> tuple[list[dict], list[dict], int]:
    """The metrics of a straight run, of a run killed (SIGKILL) after 3 steps and resumed, and
    the step it resumed from."""
    spec = f"method.spec={spec}"
    common = (spec, f"steps={STEPS}", "task.n_eval=0", "logging.probe_every=0")
    straight = tmp_path / "straight"
    loop.train(tiny_config(straight, *common), task=DigitTask())
    expected = _metrics(straight)

    killed = tmp_path / "killed"
    code = _CHILD.format(tests=str(Path(__file__).parent), run_dir=str(killed), spec=spec,
                         steps=STEPS)  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if len(read_jsonl(killed / "metrics.jsonl")) >= 3:
            break
        time.sleep(0.01)
    child.kill()  # SIGKILL: no handler runs
    child.communicate()
    assert child.returncode != 0, "the child finished before the kill; the test saw no resume"
    resumed_from = int(latest_checkpoint(killed).name.split("-")[1])
    assert 1 <= resumed_from < STEPS

    loop.train(tiny_config(killed, *common), resume=True, task=DigitTask())
    return expected, _metrics(killed), resumed_from


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_kill_9_then_resume_is_bit_exact_with_stateful_parts(tmp_path, name):
    expected, got, resumed_from = _straight_and_resumed(tmp_path, STATEFUL[name])
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert got == expected  # bit-identical on CPU, every metric of every step

    # the state really moved after the resume point, so a reset state would have shown
    if name == "adaptive_entropy_bonus":
        coefs = [r["entropy_bonus/coef"] for r in expected]
        assert coefs[resumed_from] > coefs[0] and coefs == sorted(coefs)
    elif name == "entropic":  # alpha = kp e + ki * (sum of the earlier errors), unsaturated
        errors = [r["entropic/error"] for r in expected]
        for s in range(resumed_from, STEPS):
            want = 0.01 * errors[s] + 0.2 * sum(errors[:s])
            assert expected[s]["entropic/alpha"] == pytest.approx(want, rel=1e-4, abs=1e-6)
        assert abs(sum(errors[:resumed_from])) > 1e-3
    elif name == "aent":  # the first step is step 0, not past warm-up 0: updates from step 1
        coefs = [r["aent/coef"] for r in expected]
        assert coefs[0] == coefs[1] == 0.0 and coefs[resumed_from] > 0
        assert coefs[resumed_from:] == sorted(coefs[resumed_from:]) and coefs[-1] > coefs[2]
    elif name == "target_entropy":  # the step drives the schedule, the integral the desired
        for s, row in enumerate(expected):
            want = 4.62 - 0.12 * min(s / 8, 1.0)
            assert row["target_entropy/target"] == pytest.approx(want, rel=1e-6)
        moved = [
            abs(r["target_entropy/desired"] + 0.05 * r["target_entropy/error"]) > 1e-5
            for r in expected[resumed_from:]
        ]
        assert any(moved)
    elif name == "aepo":  # on throughout; after the resume point, held by the state alone
        assert all(r["aepo/on"] == 1.0 for r in expected)
        held = [r for r in expected[resumed_from:] if r["aepo/entropy"] <= 4.59]
        assert held and all(r["aepo/frac_dropped_neg"] == 1.0 for r in held)
    else:
        assert sum(r["clip_cov/frac_dropped"] > 0 for r in expected[resumed_from:]) >= 2


def test_kill_9_then_resume_is_bit_exact_with_a_reference_reset(tmp_path):
    expected, got, resumed_from = _straight_and_resumed(tmp_path, RESET)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert got == expected  # bit-identical: the resumed run has the reset reference back
    assert resumed_from >= 2  # so the reference it restored is not the initial policy
    assert [r["kl_ref/reset"] for r in expected] == [float(s % 2 == 0) for s in range(1, 11)]
    kl = [r["kl_ref/kl"] for r in expected]
    assert all((kl[s] == 0.0) is (s % 2 == 0) for s in range(STEPS))  # 0 right after a reset


def test_resume_refuses_a_checkpoint_whose_method_state_does_not_fit(tmp_path):
    spec = f"method.spec={STATEFUL['adaptive_entropy_bonus']}"
    run_dir = tmp_path / "run"
    loop.train(tiny_config(run_dir, spec, "steps=2", "task.n_eval=0"), task=DigitTask())
    optimizer_file = latest_checkpoint(run_dir) / "optimizer.pt"
    saved = torch.load(optimizer_file, weights_only=True)
    assert set(saved["method"]) == {"adaptive_entropy_bonus"}
    assert saved["method"]["adaptive_entropy_bonus"]["coef"].dtype == torch.float64


@pytest.mark.parametrize(
    "spec",
    [
        "ppo(eps_low=0.05, eps_high=0.05) + clip_b(mu=1.0)",
        "ppo + entropy_bonus(coef=0.01)",
        STATEFUL["adaptive_entropy_bonus"],
        "pg + kl_cov(ratio=0.2, coef=1.0)",
        "ppo(dual_clip=3.0) + entropic(target=0.5)",
        STATEFUL["aent"],
    ],
)
def test_every_logged_metric_is_the_same_for_1_2_and_4_micro_batches(tmp_path, spec):
    """B = 16 rows as one batch, 2 micro-batches of 8, 4 of 4; the same first step."""
    runs = {}
    for micro in (0, 8, 4):
        run_dir = tmp_path / f"micro{micro}"
        cfg = tiny_config(run_dir, "steps=1", f"method.micro_batch_size={micro}",
                          f"method.spec={spec}", "task.n_eval=0", "method.ppo_epochs=2",
                          "logging.probe_every=0")  # fmt: skip
        loop.train(cfg, task=DigitTask())
        runs[micro] = _metrics(run_dir)[0]
    whole = runs[0]
    assert whole["loss/ratio_mean"] != pytest.approx(0.0)
    for micro in (8, 4):
        assert set(runs[micro]) == set(whole)
        for key, value in whole.items():
            # fp32 rounding: the second epoch sees weights updated from fp32 sums in another order
            assert runs[micro][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (micro, key)
