"""Trainer configuration: YAML + dotted overrides, type checks, errors that list valid values."""

from __future__ import annotations

from pathlib import Path

import pytest

from entropy_dynamics.train.config import TrainConfig, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout: {group_size: 4}\noptim: {lr: 1e-3}\nsteps: 7\n")
    cfg = load_config(path, ["rollout.group_size=8", "optim.lr=3e-4", "task.options.digits=3",
                             "method.spec=ppo + clip_b(mu=2.0)"])  # fmt: skip
    assert cfg.rollout.group_size == 8 and cfg.steps == 7
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)  # "3e-4" is a str in YAML 1.1
    assert cfg.task.options == {"digits": 3}
    assert cfg.method.spec == "ppo + clip_b(mu=2.0)"


def test_save_then_load_round_trips(tmp_path):
    cfg = load_config(None, ["optim.betas=[0.8, 0.95]", "model.tiny={hidden_size: 32}"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    assert isinstance(load_config(CONFIGS / name), TrainConfig)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.schedule=cosin", "valid: constant, linear, cosine"),
        ("device=tpu", "valid: cpu, cuda, auto"),
        ("rollout.group_size=0", "rollout.group_size=0 is invalid; valid: an integer >= 1"),
        ("rollout.top_p=1.5", "valid: a float in (0, 1]"),
        ("rollout.group_size=two", "valid: a value of type int"),
        (
            "rollout.groupsize=4",
            "valid fields of rollout: chat_template, group_size, max_new_tokens",
        ),
        ("optimizer.lr=1", "valid keys: model, task, rollout, method, optim, logging"),
        ("method.aggregation=mean", "valid modes: token-mean, seq-mean-token-mean"),
        ("method.advantage=ppo", "valid"),
        ("method.spec=clip_z", "valid names: adaptive_entropy_bonus"),
        ("steps", "must look like section.field=value"),
    ],
)
def test_invalid_values_name_the_field_and_the_valid_choices(override, message):
    with pytest.raises(ValueError, match=None) as error:
        load_config(None, [override])
    assert message in str(error.value)
