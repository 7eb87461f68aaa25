"""Bad configs and config files through the real CLI: each is one line naming the field, exit 2."""

from __future__ import annotations

import time

import pytest
import torch

from _reliability import assert_user_error, row, run_cli, train_args

# (id, overrides, words the one error line must hold); the table row is derived from them.
BAD_OVERRIDES = [
    ("lr-inf", ["optim.lr=.inf"], ["optim.lr=inf", "finite"]),
    ("lr-nan", ["optim.lr=.nan"], ["optim.lr=nan", "finite"]),
    ("lr-negative", ["optim.lr=-1"], ["optim.lr=-1.0", "> 0"]),
    ("lr-zero", ["optim.lr=0"], ["optim.lr=0.0"]),
    ("lr-text", ["optim.lr=fast"], ["optim.lr='fast'", "float"]),
    ("grad-clip-nan", ["optim.grad_clip=.nan"], ["optim.grad_clip=nan", "0 disables"]),
    ("grad-clip-inf", ["optim.grad_clip=.inf"], ["optim.grad_clip=inf"]),
    ("grad-clip-negative", ["optim.grad_clip=-1"], ["optim.grad_clip=-1.0"]),
    ("adam-eps-zero", ["optim.eps=0"], ["optim.eps=0.0"]),
    ("weight-decay-negative", ["optim.weight_decay=-0.1"], ["optim.weight_decay"]),
    ("betas-one-value", ["optim.betas=[0.9]"], ["optim.betas", "two floats"]),
    ("betas-above-one", ["optim.betas=[0.9, 1.5]"], ["optim.betas"]),
    ("betas-text", ["optim.betas=[a, b]"], ["optim.betas"]),
    ("schedule-typo", ["optim.schedule=cosin"], ["optim.schedule='cosin'", "cosine"]),
    ("max-nonfinite-zero", ["optim.max_nonfinite=0"], ["optim.max_nonfinite=0"]),
    ("warmup-negative", ["optim.warmup_steps=-1"], ["optim.warmup_steps=-1"]),
    ("temperature-zero", ["rollout.temperature=0"], ["rollout.temperature=0.0"]),
    ("temperature-inf", ["rollout.temperature=.inf"], ["rollout.temperature=inf"]),
    ("top-p-zero", ["rollout.top_p=0"], ["rollout.top_p=0.0", "(0, 1]"]),
    ("top-p-above-one", ["rollout.top_p=1.5"], ["rollout.top_p=1.5"]),
    ("group-size-zero", ["rollout.group_size=0"], ["rollout.group_size=0"]),
    ("prompts-zero", ["rollout.prompts_per_step=0"], ["rollout.prompts_per_step=0"]),
    ("max-new-tokens-zero", ["rollout.max_new_tokens=0"], ["rollout.max_new_tokens=0"]),
    ("max-new-tokens-past-positions", ["rollout.max_new_tokens=100000"],
     ["rollout.max_new_tokens=100000", "positions"]),
    ("float16-on-cpu", ["model.dtype=float16", "device=cpu"], ["model.dtype", "bfloat16"]),
    ("dtype-unknown", ["model.dtype=int8"], ["model.dtype='int8'", "float32"]),
    ("stats-from-unknown", ["model.stats_from=weights"], ["model.stats_from", "hidden"]),
    ("tiny-option-unknown", ["model.tiny={layers_typo: 2}"], ["model.tiny", "layers_typo"]),
    ("sft-steps-negative", ["model.sft_steps=-1"], ["model.sft_steps=-1"]),
    ("sft-batch-zero", ["model.sft_batch_size=0"], ["model.sft_batch_size=0"]),
    ("device-unknown", ["device=tpu"], ["device='tpu'", "cpu, cuda, auto"]),
    ("run-dir-empty", ["logging.run_dir="], ["logging.run_dir=''", "directory"]),
    ("probe-every-negative", ["logging.probe_every=-1"], ["logging.probe_every=-1"]),
    ("checkpoint-every-negative", ["logging.checkpoint_every=-2"], ["checkpoint_every=-2"]),
    ("n-train-zero", ["task.n_train=0"], ["task.n_train=0"]),
    ("n-train-past-distinct", ["task.n_train=1000000"], ["only 200 distinct", "task.n_train"]),
    ("task-unknown", ["task.name=nosuch"], ["nosuch", "arithmetic"]),
    ("task-option-unknown", ["task.options={colour: red}"], ["colour", "its options are"]),
    ("reward-timeout-zero", ["task.reward_timeout_s=0"], ["task.reward_timeout_s=0.0"]),
    ("reward-timeout-nan", ["task.reward_timeout_s=.nan"], ["task.reward_timeout_s=nan"]),
    ("spec-unknown", ["method.spec=clip_z"], ["method", "clip_z"]),
    ("spec-3000-terms", ["method.spec=" + " + ".join(["grpo"] * 3000)],
     ["method.spec", "at most 2000"]),
    ("spec-injection", ["method.spec=__import__('os').system('touch pwned')"], ["method"]),
    ("advantage-unknown", ["method.advantage=ppo"], ["method", "ppo"]),
    ("aggregation-unknown", ["method.aggregation=mean"], ["method.aggregation='mean'"]),
    ("ppo-epochs-zero", ["method.ppo_epochs=0"], ["method.ppo_epochs=0"]),
    ("micro-batch-negative", ["method.micro_batch_size=-1"], ["method.micro_batch_size=-1"]),
    ("steps-negative", ["steps=-1"], ["steps=-1"]),
    ("steps-text", ["steps=many"], ["steps='many'", "int"]),
    ("steps-bool", ["steps=true"], ["steps=True"]),
    ("threads-negative", ["threads=-1"], ["threads=-1"]),
    ("unknown-top-key", ["speed=3"], ["unknown config key 'speed'", "valid keys"]),
    ("unknown-field", ["optim.momentum=0.9"], ["optim.momentum", "valid fields"]),
    ("override-without-equals", ["optim.lr"], ["section.field=value"]),
    ("override-yaml-syntax", ["optim.lr=[1"], ["override", "YAML syntax error"]),
    ("override-python-tag", ["seed=!!python/object/apply:os.system ['touch pwned']"],
     ["override", "no tags"]),
    ("section-not-mapping", ["optim=3"], ["optim=3", "mapping"]),
    ("override-into-scalar", ["steps.x=1"], ["steps={'x': 1}", "int"]),
]  # fmt: skip

_CASES = [
    pytest.param(
        overrides,
        needles,
        id=row(
            f"config-{name}",
            f"`train {' '.join(o[:60] for o in overrides)}`",
            "exit 2, one line naming the field and what is valid",
        ),
    )
    for name, overrides, needles in BAD_OVERRIDES
]


@pytest.mark.parametrize(("overrides", "needles"), _CASES)
def test_bad_override_is_one_line_naming_the_field(overrides, needles, tmp_path, capsys,
                                                   monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)  # an injected command would write here
    started = time.perf_counter()
    args = train_args(tmp_path / "run", *overrides)
    if any(o.startswith("logging.run_dir") for o in overrides):
        args = ["train", *args[3:]]  # without --run-dir, which would replace the override
    code, _, err = run_cli(capsys, *args)
    line = assert_user_error(code, err, *needles)
    assert len(line) < 800
    assert time.perf_counter() - started < 30  # refused at load time, not after training
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "override",
    [pytest.param("device=cuda", id=row("config-cuda-absent", "`device=cuda` on a machine "
                                        "without CUDA", "exit 2, one line: valid here cpu, auto")),
     pytest.param("device=auto", id=row("config-float16-auto-cpu", "`device=auto model.dtype="
                                        "float16` resolving to cpu", "exit 2, one line"))],
)  # fmt: skip
def test_device_errors_name_what_is_valid_here(override, tmp_path, capsys):
    code, _, err = run_cli(capsys, *train_args(tmp_path / "run", override, "model.dtype=float16"))
    assert_user_error(code, err, "cpu")


def _write(path, text: str | bytes):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


CONFIG_FILES = [
    ("missing", None, ["not found", "YAML file"]),
    ("directory", "DIR", ["is a directory"]),
    ("yaml-syntax", "optim:\n  lr: [1e-3\n", ["line", "YAML syntax error"]),
    ("python-tag", "seed: !!python/object/apply:os.system ['touch pwned']\n",
     ["line 1", "no tags such as !!python"]),
    ("python-name-tag", "seed: !!python/name:os.system\n", ["no tags"]),
    ("top-level-list", "- optim\n- lr\n", ["must hold a mapping", "list"]),
    ("not-utf8", b"\xff\xfe\x00bad", ["not UTF-8"]),
    ("section-is-list", "optim: [1, 2]\n", ["optim", "mapping"]),
    ("deep-nesting", "a: " + "[" * 5000 + "]" * 5000 + "\n", ["config file"]),
    ("spec-1mb", "method:\n  spec: '" + "x" * 1_000_000 + "'\n", ["method.spec", "at most 2000"]),
]  # fmt: skip

_FILE_CASES = [
    pytest.param(content, needles, id=row(f"config-file-{name}", f"--config: {name}",
                                          "exit 2, one line naming the file (and line)"))
    for name, content, needles in CONFIG_FILES
]  # fmt: skip


@pytest.mark.parametrize(("content", "needles"), _FILE_CASES)
def test_bad_config_file_is_one_line_naming_the_file(content, needles, tmp_path, capsys,
                                                     monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        _write(path, content)
    code, _, err = run_cli(capsys, "train", "--config", path, "--run-dir", tmp_path / "run")
    line = assert_user_error(code, err, *needles)
    assert len(line) < 1000  # a 1 MB value gives a short message
    assert not (tmp_path / "pwned").exists()
