"""EntropyDynamicsCallback on TRL's own GRPOTrainer (CPU, a tiny Llama): metrics, no side effects.

The monitored run and a run without the callback start from the same weights and seed; the
callback must leave the trained weights bit-identical while logging S_*, N, S_* - N and the
probe. The logged values are checked against float64 references from the full logits.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from entropy_dynamics.integrations.trl import EntropyDynamicsCallback, EntropyGRPOTrainer
from entropy_dynamics.models import build_char_tokenizer, build_tiny_model

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=1)
ENTROPY_KEYS = (
    "entropy/s_mean",
    "entropy/s_std",
    "entropy/n_mean",
    "entropy/s_minus_n_mean",
    "entropy/s_minus_n_std",
)
PROBE_KEYS = (
    "entropy/measured_delta",
    "entropy/pred_delta",
    "entropy/pred_delta_logit",
    "probe/corr_pred",
    "probe/sign_agree",
)


def reward_by_chars(completions, **kwargs):
    """A reward that varies within a group: a hash of the completion's characters."""
    return [float(sum(map(ord, c)) % 7) for c in completions]


def stock_trainer(tmp_path, *, steps, **overrides):
    tokenizer = build_char_tokenizer()
    options = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-2,
        seed=0,
        bf16=False,
    )
    options.update(overrides)
    return GRPOTrainer(
        model=build_tiny_model(tokenizer, **TINY),
        processing_class=tokenizer,
        reward_funcs=reward_by_chars,
        args=GRPOConfig(**options),
        train_dataset=Dataset.from_dict({"prompt": [f"{i}+{2 * i}=" for i in range(32)]}),
    )


class RecordingCallback(EntropyDynamicsCallback):
    """The callback under test, also keeping every generation batch it saw (for references)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outputs = []

    def _observe(self, output):
        super()._observe(output)
        self.outputs.append(output)


def completion_entropy(model, batch):
    """H of softmax(z), float64, at the completion positions of `batch` (TRL temperature 1)."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    att = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    T = batch["completion_ids"].size(1)
    with torch.no_grad():
        z = model(input_ids=ids, attention_mask=att).logits[:, -T - 1 : -1].double()
    return z, -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)


def test_monitored_run_trains_bit_identical_weights_and_logs_the_metrics(tmp_path):
    steps = 3
    plain = stock_trainer(tmp_path / "plain", steps=steps)
    start = time.perf_counter()
    plain.train()
    plain_s = time.perf_counter() - start

    monitored = stock_trainer(tmp_path / "monitored", steps=steps)
    callback = RecordingCallback(monitored, probe_steps=1)
    monitored.add_callback(callback)
    start = time.perf_counter()
    monitored.train()
    monitored_s = time.perf_counter() - start
    print(f"\n{steps} steps: plain {plain_s:.2f} s, with callback (probe every step) "
          f"{monitored_s:.2f} s ({100 * (monitored_s / plain_s - 1):+.0f}%)")  # fmt: skip

    for (name, a), (_, b) in zip(
        plain.model.named_parameters(), monitored.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), f"{name} differs: the callback changed the training"
    initial = build_tiny_model(build_char_tokenizer(), **TINY).parameters()
    trained = plain.model.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(initial, trained, strict=True))

    rows = [row for row in monitored.state.log_history if "entropy/s_mean" in row]
    assert len(rows) == steps
    for row in rows:
        for key in ENTROPY_KEYS + PROBE_KEYS:
            assert key in row, key
        assert "entropy" in row and "entropy/mean" not in row  # TRL's `entropy`, not a copy
    plain_rows = [row for row in plain.state.log_history if "entropy" in row]
    assert [r["entropy"] for r in plain_rows] == [r["entropy"] for r in rows]
    assert len(callback.outputs) == steps


def test_logged_statistics_and_probe_match_float64_references(tmp_path):
    # One step: one generation batch of 8 rows, the probed rows, under the initial weights.
    trainer = stock_trainer(tmp_path, steps=1)
    callback = RecordingCallback(trainer, probe_steps=1)
    trainer.add_callback(callback)
    trainer.train()
    (batch,) = callback.outputs
    before = build_tiny_model(trainer.processing_class, **TINY)  # the same initial weights
    mask = batch["completion_mask"].bool()
    z, H_before = completion_entropy(before, batch)
    logp = z.log_softmax(-1)
    logp_k = logp.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    S = logp_k.exp() * (H_before + logp_k)  # S_* = p_k (H + log p_k)
    N = (logp.exp().square() * (H_before.unsqueeze(-1) + logp)).sum(-1)
    row = next(r for r in trainer.state.log_history if "entropy/s_mean" in r)
    assert row["entropy/s_mean"] == pytest.approx(float(S[mask].mean()), rel=1e-4, abs=1e-7)
    assert row["entropy/n_mean"] == pytest.approx(float(N[mask].mean()), rel=1e-4, abs=1e-7)
    deviation = (S - N)[mask]
    assert row["entropy/s_minus_n_std"] == pytest.approx(
        float(deviation.std(unbiased=False)), rel=1e-4
    )
    torch.testing.assert_close(callback.last_stats.discriminator[mask].double(), S[mask])

    _, H_after = completion_entropy(trainer.model, batch)
    measured = (H_after - H_before)[mask].mean()
    assert measured.abs() > 1e-6, "the update must move the entropy for the check to mean much"
    assert row["entropy/measured_delta"] == pytest.approx(float(measured), rel=1e-3, abs=1e-7)
    A = batch["advantages"].double().unsqueeze(1)
    alpha = trainer.args.learning_rate * A  # the nominal step lr * A at the first step
    predicted = -(alpha * (S - N))[mask].mean()  # Theorem 3.3: dH = -alpha (S_* - N)
    assert row["entropy/pred_delta"] == pytest.approx(float(predicted), rel=1e-3, abs=1e-9)


def test_probe_every_n_steps_only(tmp_path):
    trainer = stock_trainer(tmp_path, steps=4)
    trainer.add_callback(EntropyDynamicsCallback(trainer, probe_steps=2))
    trainer.train()
    rows = [row for row in trainer.state.log_history if "entropy/s_mean" in row]
    assert [row["step"] for row in rows if "entropy/measured_delta" in row] == [2, 4]


def test_callback_refuses_what_it_cannot_monitor(tmp_path):
    with pytest.raises(ValueError, match="needs the GRPOTrainer"):
        EntropyDynamicsCallback(object())
    trainer = stock_trainer(tmp_path, steps=1)
    with pytest.raises(ValueError, match="probe_steps must be an int >= 0"):
        EntropyDynamicsCallback(trainer, probe_steps=-1)
    assert issubclass(EntropyGRPOTrainer, GRPOTrainer)  # and it is refused by name:
    with pytest.raises(ValueError, match="already logs"):
        EntropyDynamicsCallback.__init__(
            EntropyDynamicsCallback.__new__(EntropyDynamicsCallback),
            EntropyGRPOTrainer.__new__(EntropyGRPOTrainer),
        )
