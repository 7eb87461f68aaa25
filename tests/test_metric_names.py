"""Every key a training step logs is declared in `metric_names` (one definition of each name)."""

from __future__ import annotations

import pytest

from _train_fixtures import DigitTask, tiny_config
from entropy_dynamics import metric_names
from entropy_dynamics.methods import names
from entropy_dynamics.train import loop
from entropy_dynamics.train.logging import read_jsonl

DECLARED = {v for k, v in vars(metric_names).items() if k.isupper()}


class BinaryDigitTask(DigitTask):
    """0/1 rewards (mostly digits or not), for estimators defined only on verifiable rewards."""

    def reward(self, problem: dict, completion: str) -> float:
        return float(super().reward(problem, completion) > 0.5)


@pytest.mark.parametrize("preset", names("preset"))
def test_every_logged_key_of_a_step_is_declared(tmp_path, preset):
    cfg = tiny_config(tmp_path, f"method.spec={preset}", "steps=2", "task.n_eval=0",
                      "logging.probe_every=1", "method.ppo_epochs=2")  # fmt: skip
    loop.train(cfg, task=BinaryDigitTask())
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) == 2
    logged = set().union(*rows) - {"step"}
    assert logged - DECLARED == set(), f"{preset} logs undeclared keys"
