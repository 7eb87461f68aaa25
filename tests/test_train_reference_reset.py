"""ProRL's reference reset (``kl_ref(reset_every=N, reset_optimizer=...)``) in the trainer: the
schedule as stated, the KL of every step against a float64 loop over the saved batches, and what
the checkpoints hold. Kill -9 + resume: tests/test_train_method_state.py."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from _train_fixtures import DigitTask, tiny_config
from entropy_dynamics import diagnostics as dg
from entropy_dynamics.methods import build
from entropy_dynamics.train import checkpoint as ckpt
from entropy_dynamics.train import loop
from entropy_dynamics.train.logging import read_jsonl


def test_the_schedule_is_every_n_steps_counted_from_one():
    method = build("ppo + kl_ref(reset_every=3, reset_optimizer=True)")
    want = [(step % 3 == 0, step % 3 == 0) for step in range(1, 13)]  # after steps 3, 6, 9, 12
    assert [method.reference_reset(step) for step in range(1, 13)] == want
    assert build("ppo + kl_ref(reset_every=2)").reference_reset(4) == (True, False)
    assert build("ppo + kl_ref").reference_reset(4) == (False, False)
    assert build("ppo + kl_ref").reference_reset_every == 0
    assert build("grpo").reference_reset_every == 0
    with pytest.raises(ValueError, match="reset_optimizer=True needs reset_every > 0"):
        build("ppo + kl_ref(reset_optimizer=True)")
    with pytest.raises(ValueError, match="reset_every must be an int >= 0"):
        build("ppo + kl_ref(reset_every=-1)")


def _k3_mean(batch: dict) -> float:
    """Mean over valid tokens of exp(ref - logp) - (ref - logp) - 1 (Schulman's k3), float64."""
    mask, logp, ref = batch["mask"], batch["logprobs"].double(), batch["ref_logprobs"].double()
    values = [
        float(torch.exp(ref[b, t] - logp[b, t]) - (ref[b, t] - logp[b, t]) - 1.0)
        for b, t in mask.nonzero().tolist()
    ]
    return sum(values) / len(values)


def test_kl_and_checkpoints_follow_the_resets(tmp_path):
    """reset_every=2: the reference is the policy of steps 0, 2, 4; on the step after a reset
    its log-probs equal the policy's bit for bit (KL 0), otherwise they differ; every logged KL
    is the float64 k3 mean of that step's saved batch; the checkpoint of a reset step holds the
    reference equal to the policy and an empty optimiser state, the others do not."""
    steps = 5
    cfg = tiny_config(tmp_path, "method.spec=ppo + kl_ref(coef=0.1, reset_every=2, "
                      "reset_optimizer=True)", f"steps={steps}", "task.n_eval=0",
                      "logging.probe_every=0", "logging.save_batch_every=1",
                      "logging.checkpoint_every=1")  # fmt: skip
    loop.train(cfg, task=DigitTask())
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r[dg.KL_REF_RESET] for r in rows] == [0.0, 1.0, 0.0, 1.0, 0.0]
    for step, row in enumerate(rows, start=1):
        batch = torch.load(tmp_path / "batches" / f"step-{step}.pt", weights_only=True)["batch"]
        fresh = step == 1 or (step - 1) % 2 == 0  # the reference was reset after step - 1
        same = torch.equal(batch["ref_logprobs"][batch["mask"]], batch["logprobs"][batch["mask"]])
        assert same is fresh, step
        assert row[dg.KL_REF] == pytest.approx(_k3_mean(batch), rel=1e-4, abs=1e-6), step
        assert (row[dg.KL_REF] == 0.0) is fresh
    for step in (3, 4, 5):  # keep_last = 3
        folder = tmp_path / "checkpoints" / f"step-{step}"
        policy, reference = (
            load_file(folder / "model.safetensors"),
            load_file(folder / ckpt.REFERENCE),
        )
        equal = all(torch.equal(policy[name], reference[name]) for name in policy)
        optimizer = torch.load(folder / "optimizer.pt", weights_only=True)["optimizer"]
        assert equal is (step == 4) and (optimizer["state"] == {}) is (step == 4), step
        ckpt.verify_checkpoint(folder)  # the digest lists the reference


def test_a_run_without_resets_keeps_its_checkpoint_files(tmp_path):
    cfg = tiny_config(tmp_path, "method.spec=ppo + kl_ref(coef=0.1)", "steps=1", "task.n_eval=0")
    loop.train(cfg, task=DigitTask())
    folder = ckpt.latest_checkpoint(tmp_path)
    assert not (folder / ckpt.REFERENCE).exists()
    assert dg.KL_REF_RESET not in read_jsonl(tmp_path / "metrics.jsonl")[0]
