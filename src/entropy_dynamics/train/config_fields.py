"""The trainer's configuration fields: one frozen dataclass per concern, every field
documented and checked once, here (``validate``, run by ``TrainConfig`` itself).
``train.config`` loads and saves them from YAML with dotted overrides, and re-exports them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEVICES",
    "DTYPES",
    "SCHEDULES",
    "STATS_FROM",
    "LoggingConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "RolloutConfig",
    "TaskConfig",
    "TrainConfig",
    "config_warnings",
    "validate",
]

SCHEDULES = ("constant", "linear", "cosine")
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16", "float16")
STATS_FROM = ("auto", "logits", "hidden")


@dataclass(frozen=True)
class ModelConfig:
    """Which policy to train.

    name: "tiny" (a small causal LM built from scratch with the character tokenizer), "smollm2"
        (the packaged SmolLM2-135M-Instruct), or any Hugging Face id / local path.
    tiny: keyword arguments for `models.build_tiny_model` (hidden size, layers, ...), used when
        name is "tiny".
    sft_steps: supervised warm-start steps on the task's reference answers before RL; 0 skips it.
        A model built from scratch needs it (it cannot answer at all otherwise).
    sft_lr / sft_batch_size: the warm start's AdamW learning rate and batch size.
    sft_cache: directory for cached warm-started weights ("" = ~/.cache/entropy-dynamics/sft).
    dtype: parameter dtype of the policy.
    stats_from: where token statistics come from: "logits" (the [B, T, V] logits), "hidden"
        (`token_stats_from_hidden`: hidden states and the output layer, never holding the logits),
        or "auto" (hidden for vocabularies of 32 768 tokens or more).
    """

    name: str = "tiny"
    tiny: dict = field(default_factory=dict)
    sft_steps: int = 0
    sft_lr: float = 3e-3
    sft_batch_size: int = 64
    sft_cache: str = ""
    dtype: str = "float32"
    stats_from: str = "auto"


@dataclass(frozen=True)
class TaskConfig:
    """The verifiable-reward task.

    name: a name known to `entropy_dynamics.tasks.get` (e.g. "arithmetic").
    options: keyword arguments for the task (digits, operators, number of terms, ...).
    n_train / n_eval: sizes of the disjoint train and held-out splits (fixed by `seed`).
    reward_timeout_s: a reward call longer than this gives reward 0 and is counted.
    """

    name: str = "arithmetic"
    options: dict = field(default_factory=dict)
    n_train: int = 2000
    n_eval: int = 64
    reward_timeout_s: float = 5.0


@dataclass(frozen=True)
class RolloutConfig:
    """Sampling of the G responses per prompt.

    prompts_per_step: prompts per training batch (the batch has prompts_per_step * group_size rows).
    group_size: G, responses sampled per prompt.
    temperature / top_p: sampling temperature and nucleus mass. Log-probabilities and token
        statistics use the same temperature (softmax(z / T)); top-p only restricts sampling.
    max_new_tokens: response length limit.
    chat_template: wrap each prompt as a user turn of the tokenizer's chat template (training
        and evaluation): "auto" (when the tokenizer defines one), true, or false (raw text).
    """

    prompts_per_step: int = 8
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    chat_template: str | bool = "auto"


@dataclass(frozen=True)
class MethodConfig:
    """What the update optimises.

    spec: a method specification for `methods.build` ("grpo", "clip_b", "ppo + clip_v(mu=8.5)").
    advantage: advantage estimator name for `advantages.get` ("grpo", "dr_grpo", "rloo").
    aggregation: loss reduction mode for `aggregate` ("token-mean", "seq-mean-token-mean", ...).
    ppo_epochs: optimiser passes over each batch; > 1 makes later passes off-policy (ratio != 1).
    micro_batch_size: rows per backward pass (gradient accumulation); 0 = the whole batch.
    A KL penalty to the frozen initial policy is a method part: spec "grpo + kl_ref(coef=0.01)"
    (the trainer then keeps the reference model).
    """

    spec: str = "grpo"
    advantage: str = "grpo"
    aggregation: str = "token-mean"
    ppo_epochs: int = 1
    micro_batch_size: int = 0


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, its schedule and gradient clipping.

    lr: peak learning rate. schedule: "constant", "linear" (decay to 0) or "cosine" (to 0),
    after `warmup_steps` of linear warm-up. grad_clip: max global grad norm (0 = off).
    max_nonfinite: stop after this many consecutive steps with a non-finite loss.
    """

    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float = 1.0
    max_nonfinite: int = 3


@dataclass(frozen=True)
class LoggingConfig:
    """Where and how often things are written (every `*_every` = 0 disables that action).

    run_dir: the run directory (layout in docs/architecture.md).
    probe_every: entropy probe (re-measure after the update, compare with the prediction).
    eval_every: held-out evaluation; the run always evaluates at its end when eval_k > 0.
    eval_k: samples per held-out problem for avg@k / pass@k (pass@k uses k = eval_k).
    checkpoint_every: checkpoint cadence; one is always written at the end.
    save_batch_every: save the training batch + plan for `entropy-dynamics lens`.
    tensorboard: also write TensorBoard events when tensorboard is installed.
    progress: show progress (a bar on a terminal, plain lines in a log file) and a final summary.
    warn_no_drop_steps: warn (once) when a filter has dropped no token for this many steps in a
        row, with the threshold that would drop its configured share (0: never).
    samples_every: append `samples_per_step` of the step's prompts with their completions and
        rewards to samples.jsonl every this many steps (0: never).
    """

    run_dir: str = "runs/run"
    probe_every: int = 1
    eval_every: int = 0
    eval_k: int = 8
    checkpoint_every: int = 50
    save_batch_every: int = 0
    tensorboard: bool = True
    progress: bool = True
    warn_no_drop_steps: int = 20
    samples_every: int = 10
    samples_per_step: int = 4


@dataclass(frozen=True)
class TrainConfig:
    """The whole run: `steps` RL steps with `seed` on `device`.

    threads: torch intra-op CPU threads (0 = torch's default). Tiny models run fastest on one
        (docs/training.md).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    steps: int = 100
    seed: int = 0
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self) -> None:
        validate(self)


MAX_SPEC_CHARS = 2000
"""The longest method spec accepted (the presets and their compositions are under 200)."""


def short_repr(value: Any, limit: int = 120) -> str:
    """A value's repr cut to `limit` characters, so a huge value gives a short message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _Shown(str):
    """A value already shortened by `short_repr`: `invalid_field` shows it as is."""

    def __repr__(self) -> str:
        return str(self)


def invalid_field(name: str, value: Any, valid: str) -> None:
    """Raise the one-line ValueError for field `name`: its (shortened) value and what is valid."""
    if not isinstance(value, _Shown):
        value = _Shown(short_repr(value))
    raise ValueError(f"config field {name}={value!r} is invalid; valid: {valid}")


def validate(cfg: TrainConfig) -> None:
    """Reject invalid values with a message naming the field and the valid choices."""
    positive = {
        "rollout.prompts_per_step": cfg.rollout.prompts_per_step,
        "rollout.group_size": cfg.rollout.group_size,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "method.ppo_epochs": cfg.method.ppo_epochs,
        "optim.max_nonfinite": cfg.optim.max_nonfinite,
        "task.n_train": cfg.task.n_train,
    }
    for name, value in positive.items():
        if value < 1:
            invalid_field(name, value, "an integer >= 1")
    non_negative = {
        "steps": cfg.steps,
        "threads": cfg.threads,
        "model.sft_steps": cfg.model.sft_steps,
        "task.n_eval": cfg.task.n_eval,
        "method.micro_batch_size": cfg.method.micro_batch_size,
        "optim.warmup_steps": cfg.optim.warmup_steps,
        "logging.probe_every": cfg.logging.probe_every,
        "logging.eval_every": cfg.logging.eval_every,
        "logging.eval_k": cfg.logging.eval_k,
        "logging.checkpoint_every": cfg.logging.checkpoint_every,
        "logging.save_batch_every": cfg.logging.save_batch_every,
        "logging.warn_no_drop_steps": cfg.logging.warn_no_drop_steps,
        "logging.samples_every": cfg.logging.samples_every,
        "logging.samples_per_step": cfg.logging.samples_per_step,
    }
    for name, value in non_negative.items():
        if value < 0:
            invalid_field(name, value, "an integer >= 0")
    floats = {  # name: (value, lowest, lowest allowed too, what is valid)
        "rollout.temperature": (cfg.rollout.temperature, 0.0, False, "a finite float > 0"),
        "optim.lr": (cfg.optim.lr, 0.0, False, "a finite float > 0, e.g. 1e-4"),
        "optim.grad_clip": (cfg.optim.grad_clip, 0.0, True,
                            "a finite float >= 0 (0 disables clipping)"),
        "optim.eps": (cfg.optim.eps, 0.0, False, "a finite float > 0, e.g. 1e-8"),
        "optim.weight_decay": (cfg.optim.weight_decay, 0.0, True, "a finite float >= 0"),
        "task.reward_timeout_s": (cfg.task.reward_timeout_s, 0.0, False,
                                  "a finite number of seconds > 0"),
        "model.sft_lr": (cfg.model.sft_lr, 0.0, False, "a finite float > 0"),
    }  # fmt: skip
    for name, (value, lowest, inclusive, valid) in floats.items():
        if not math.isfinite(value) or value < lowest or (value == lowest and not inclusive):
            invalid_field(name, value, valid)
    if not (cfg.rollout.chat_template == "auto" or isinstance(cfg.rollout.chat_template, bool)):
        invalid_field("rollout.chat_template", cfg.rollout.chat_template, "auto, true, false")
    if not 0 < cfg.rollout.top_p <= 1:
        invalid_field("rollout.top_p", cfg.rollout.top_p, "a float in (0, 1]")
    if cfg.model.sft_batch_size < 1:
        invalid_field("model.sft_batch_size", cfg.model.sft_batch_size, "an integer >= 1")
    if not cfg.logging.run_dir.strip():
        invalid_field("logging.run_dir", cfg.logging.run_dir, "a directory path, e.g. runs/my-run")
    if cfg.model.dtype == "float16" and cfg.device == "cpu":
        invalid_field("model.dtype", cfg.model.dtype, "float32 or bfloat16 on device cpu "
              "(float16 needs device=cuda)")  # fmt: skip
    if len(cfg.method.spec) > MAX_SPEC_CHARS:
        invalid_field("method.spec", cfg.method.spec, f"a spec of at most {MAX_SPEC_CHARS} "
              f"characters (this one has {len(cfg.method.spec)})")  # fmt: skip
    if cfg.optim.schedule not in SCHEDULES:
        invalid_field("optim.schedule", cfg.optim.schedule, ", ".join(SCHEDULES))
    if cfg.device not in DEVICES:
        invalid_field("device", cfg.device, ", ".join(DEVICES))
    if cfg.model.dtype not in DTYPES:
        invalid_field("model.dtype", cfg.model.dtype, ", ".join(DTYPES))
    if cfg.model.stats_from not in STATS_FROM:
        invalid_field("model.stats_from", cfg.model.stats_from, ", ".join(STATS_FROM))
    if len(cfg.optim.betas) != 2 or not all(
        isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1
        for b in cfg.optim.betas
    ):
        invalid_field("optim.betas", cfg.optim.betas, "two floats in [0, 1)")
    _validate_names(cfg)


def _validate_names(cfg: TrainConfig) -> None:
    """Names resolved through the registries; their errors list the valid names."""
    from entropy_dynamics import advantages, methods
    from entropy_dynamics.aggregation import MODES

    if cfg.method.aggregation not in MODES:
        raise ValueError(
            f"config field method.aggregation={cfg.method.aggregation!r} is invalid; "
            f"valid modes: {', '.join(MODES)}"
        )
    try:
        advantages.get(cfg.method.advantage)
        method = methods.build(cfg.method.spec)
    except ValueError as error:
        raise ValueError(f"config field method: {error}") from None
    except RecursionError:
        raise ValueError(
            f"config field method.spec={short_repr(cfg.method.spec)} is nested too deeply to parse; "
            "valid: terms joined by '+', e.g. 'ppo + clip_b(mu=2.0)'"
        ) from None
    if method.advantage is not None and cfg.method.advantage != MethodConfig.advantage:
        raise ValueError(
            f"config field method.advantage={cfg.method.advantage!r} conflicts with the method "
            f"{cfg.method.spec!r}, which prescribes its own estimator ({method.advantage.spec}); "
            "drop method.advantage or choose a method without an estimator part"
        )


def config_warnings(cfg: TrainConfig) -> list[str]:
    """Settings that are legal but make the run pointless or suspicious (the trainer prints them)."""
    found = []
    if cfg.rollout.group_size == 1:
        found.append(
            "rollout.group_size=1: every group-normalised advantage is 0, so no step changes "
            "the policy; use group_size >= 2"
        )
    if cfg.optim.lr >= 1.0:
        found.append(
            f"optim.lr={cfg.optim.lr:g} is unusually large for AdamW (typical: 1e-6 to 1e-2); "
            "the run stops if the weights diverge"
        )
    if cfg.steps == 0:
        found.append("steps=0: nothing will be trained")
    return found
