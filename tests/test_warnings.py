"""Warnings of idle filters and signal-free steps: the threshold helper, RunWatch, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from _batches import token_batch
from entropy_dynamics import methods
from entropy_dynamics.methods import TokenBatch, clip_b_mask, clip_v_mask
from entropy_dynamics.methods.thresholds import (
    configured_share,
    drop_share_threshold,
    share_threshold,
)
from entropy_dynamics.train.watch import RunWatch


def _batch(seed: int = 0, B: int = 8, T: int = 6, advantages=None) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) > 0.2
    logprobs = -torch.rand(B, T, generator=g) * 3
    adv = torch.randn(B, 1, generator=g).expand(B, T) if advantages is None else advantages
    entropy = torch.rand(B, T, generator=g)
    discriminator = torch.randn(B, T, generator=g) * 0.1
    baseline = torch.randn(B, T, generator=g) * 0.1
    return token_batch(mask, adv.contiguous(), logprobs, entropy=entropy,
                       discriminator=discriminator, baseline=baseline)  # fmt: skip


def test_share_threshold_by_hand():
    scores = torch.tensor([[3.0, 1.0, 2.0, 5.0]])
    assert share_threshold(scores, torch.ones(1, 4, dtype=torch.bool), 0.5) == (3.0, 2, 4)
    # a share below one token still names the top token; masked tokens never count
    mask = torch.tensor([[True, True, True, False]])
    assert share_threshold(scores, mask, 1e-4) == (3.0, 1, 3)
    threshold, k, n = share_threshold(scores, torch.zeros(1, 4, dtype=torch.bool), 0.5)
    assert (k, n) == (0, 0) and threshold != threshold


def test_configured_shares():
    assert configured_share(methods.get_part("clip_b")(mu=2.5)) == pytest.approx(0.0062097, 1e-4)
    assert configured_share(methods.get_part("clip_v")(max_frac=0.01)) == 0.01
    assert configured_share(methods.get_part("top_entropy")()) is None


@pytest.mark.parametrize("name", ["clip_b", "clip_v"])
def test_mu_needed_is_where_the_filter_starts_dropping(name):
    """A mu just below mu_needed drops the named count through the real mask; just above, none."""
    batch = _batch(1)
    part = methods.get_part(name)(mu=50.0)
    found = drop_share_threshold(part, batch)
    assert found["tokens"] == int(batch.mask.sum()) and found["drop"] == 1
    assert found["candidates"] == int((batch.mask & (batch.advantages < 0 if name == "clip_b"
                                                     else batch.advantages <= 0)).sum())  # fmt: skip

    def dropped(mu):
        if name == "clip_b":
            keep = clip_b_mask(batch.discriminator, batch.advantages, batch.mask, mu=mu)
        else:
            keep = clip_v_mask(batch.discriminator, batch.baseline, batch.advantages, batch.mask,
                               mu=mu, max_frac=0.5)  # fmt: skip
        return int((batch.mask & ~keep).sum())

    mu = found["mu_needed"]
    assert dropped(mu * 0.999) >= found["drop"] and dropped(mu * 1.001) == 0


def _observe(watch, method, batch, step, **kw):
    watch.observe(step, batch, method.plan(batch).metrics, **kw)


def test_idle_filter_warns_once_with_tokens_and_threshold():
    method = methods.build("clip_b(mu=50)")
    messages = []
    watch = RunWatch(method, no_drop_steps=3, warn=messages.append)
    for step in range(1, 8):
        _observe(watch, method, _batch(step), step, rewards=torch.ones(8))
    assert len(messages) == 1, messages
    batch = _batch(3)
    found = drop_share_threshold(method.filters[0], batch)
    assert "clip_b has dropped no token for 3 steps in a row (step 3)" in messages[0]
    assert f"{int(batch.mask.sum())} valid tokens" in messages[0]
    assert f"mu below {found['mu_needed']:.3g}" in messages[0]
    assert watch.summary() == ["clip_b dropped nothing at 7 of 7 steps"]


def test_a_drop_resets_the_count():
    method = methods.build("clip_b(mu=50)")
    messages = []
    watch = RunWatch(method, no_drop_steps=3, warn=messages.append)
    for step, dropped in enumerate([0.0, 0.0, 0.1, 0.0, 0.0], start=1):
        watch.observe(step, _batch(step), {"clip_b/frac_dropped": torch.tensor(dropped)})
    assert messages == []


def test_zero_rewards_and_zero_advantages_warn_once_each():
    method = methods.build("grpo")
    messages = []
    watch = RunWatch(method, warn=messages.append)
    zero = torch.zeros(8, 6)
    for step in (1, 2):
        _observe(watch, method, _batch(step, advantages=zero), step, rewards=torch.zeros(8))
    for step in (3, 4):
        _observe(watch, method, _batch(step, advantages=zero), step, rewards=torch.ones(8))
    _observe(watch, method, _batch(5), 5, rewards=torch.rand(8))
    assert len(messages) == 2
    assert messages[0].startswith("step 1: every reward is 0")
    assert messages[1].startswith("step 3: every advantage is 0")
    assert watch.summary() == ["every reward was 0 at 2 of 5 steps",
                               "every advantage was 0 at 2 of 5 steps"]  # fmt: skip


def test_no_drop_steps_is_checked():
    with pytest.raises(ValueError, match="no_drop_steps must be an int >= 0"):
        RunWatch(methods.build("grpo"), no_drop_steps=-1)


def test_train_in_a_log_file_warns_once_and_ends_with_a_summary(tmp_path):
    """The real CLI, stderr to a file: plain progress lines, warnings once, a summary."""
    run_dir = tmp_path / "run"
    log = tmp_path / "train.log"
    args = [sys.executable, "-m", "entropy_dynamics.cli", "train", "--run-dir", str(run_dir),
            "model.tiny={hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32}",
            "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=3",
            "task.n_train=8", "task.n_eval=2", "logging.eval_k=2", "logging.tensorboard=false",
            "logging.probe_every=0", "logging.warn_no_drop_steps=2", "method.spec=clip_b(mu=50)",
            "steps=4"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w") as err:
        out = subprocess.run(args, stderr=err, stdout=subprocess.PIPE, text=True, env=env,
                             timeout=120, check=True)  # fmt: skip
    text = log.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    progress = [line for line in lines if line.startswith("[train] ")]
    assert progress[0].startswith("[train] 1/4 steps") and progress[-1].startswith(
        "[train] 4/4 steps"
    )
    assert any(line.startswith("[eval k=2] 2/2 prompts") for line in lines)
    # a random-init model never solves arithmetic: every reward is 0, said once
    assert sum("every reward is 0" in line for line in lines) == 1
    assert sum("clip_b has dropped no token for 2 steps" in line for line in lines) == 1
    assert "trained steps 1-4 of 4 in" in text
    assert "held-out at step 4 (2 prompts): avg@2" in text
    assert "note: every reward was 0 at 4 of 4 steps" in text
    assert f"files: {run_dir}/ (metrics.jsonl, eval.jsonl, checkpoints/step-4)" in text
    assert out.stdout.strip() == f"run directory: {run_dir}"
