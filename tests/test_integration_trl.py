"""EntropyGRPOTrainer on the real TRL GRPOTrainer, CPU, a tiny Llama: masks, loss and metrics.

Every check compares with an independent float64 reference written here from PAPER.md:
the token statistics from the full logits, Clip_B / Clip_V released forms, and the loss value.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from datasets import Dataset

from entropy_dynamics.integrations.trl import (
    KEEP_KEY,
    EntropyGRPOConfig,
    EntropyGRPOTrainer,
)
from entropy_dynamics.models import build_char_tokenizer, build_tiny_model


def reward_by_chars(completions, **kwargs):
    """A reward that varies within a group: a hash of the completion's characters."""
    return [float(sum(map(ord, c)) % 7) for c in completions]


class RecordingTrainer(EntropyGRPOTrainer):
    """Keeps every generation batch's TokenBatch, plan, and float64 reference statistics."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = []

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.records.append(
            {
                "batch": self.last_token_batch,
                "plan": self.last_plan,
                "reference": reference_stats(self, output),
                "output": output,
            }
        )
        return output


@torch.no_grad()
def reference_stats(trainer, output):
    """H, S_*, N, log p_k in float64 from the model's full logits (PAPER.md sec. 1-2)."""
    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    att = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    T = output["completion_ids"].size(1)
    logits = trainer.model(input_ids=ids, attention_mask=att).logits[:, -T - 1 : -1]
    logp = torch.log_softmax(logits.double() / trainer.temperature, dim=-1)  # (B, T, V)
    p = logp.exp()
    H = -(p * logp).sum(-1)
    logp_k = logp.gather(-1, output["completion_ids"].unsqueeze(-1)).squeeze(-1)
    S = logp_k.exp() * (H + logp_k)
    N = (p.square() * (H.unsqueeze(-1) + logp)).sum(-1)
    return {"logprobs": logp_k, "entropy": H, "discriminator": S, "baseline": N}


TINY = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=1)


def make_trainer(tmp_path, method, *, steps=2, trainer_cls=RecordingTrainer, **overrides):
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, **TINY)
    dataset = Dataset.from_dict({"prompt": [f"{i}+{2 * i}=" for i in range(32)]})
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
        entropy_method=method,
        bf16=False,
    )
    options.update(overrides)
    args = EntropyGRPOConfig(**options)
    return trainer_cls(
        model=model,
        processing_class=tokenizer,
        reward_funcs=reward_by_chars,
        args=args,
        train_dataset=dataset,
    )


def clip_b_keep(S, A, mask, mu):
    """Released Clip_B: A >= 0 kept; A < 0 kept iff S - mean(S) >= -mu * std(S) (population)."""
    values = S[mask]
    mean, std = values.mean(), values.std(unbiased=False)
    return mask & ((A >= 0) | (S - mean >= -mu * std))


def clip_v_keep(S, N, A, mask, mu):
    """Released Clip_V without the cap (max_frac=1): A > 0 kept; else kept iff N - S <= mu * s_D."""
    d = N - S  # D_t of PAPER.md sec. 3
    return mask & ((A > 0) | (d <= mu * d[mask].std(unbiased=False)))


@pytest.mark.parametrize("method", ["grpo", "clip_b(mu=0.5)", "ppo + clip_v(mu=1.0, max_frac=1.0)"])
def test_masks_equal_the_reference_on_every_generation_batch(tmp_path, method):
    trainer = make_trainer(tmp_path, method)
    trainer.train()
    assert len(trainer.records) == 2
    dropped = 0
    for record in trainer.records:
        batch, plan, ref = record["batch"], record["plan"], record["reference"]
        mask = batch.mask
        for name in ("logprobs", "entropy", "discriminator", "baseline"):
            ours = getattr(batch, name)
            if ours is None:  # N is computed only for methods that need it (clip_v)
                continue
            torch.testing.assert_close(ours[mask].double(), ref[name][mask], atol=2e-6, rtol=1e-5)
        S, N, A = ref["discriminator"], ref["baseline"], batch.advantages.double()
        if method == "grpo":
            expected = mask
        elif method.startswith("clip_b"):
            expected = clip_b_keep(S, A, mask, 0.5)
        else:
            expected = clip_v_keep(S, N, A, mask, 1.0)
        assert torch.equal(plan.keep, expected)
        assert torch.equal(record["output"][KEEP_KEY], plan.keep)
        dropped += int((mask & ~plan.keep).sum())
    if method != "grpo":
        assert dropped > 0, "the test batch must make the filter drop something"
    logged = [row for row in trainer.state.log_history if "plan/frac_kept" in row]
    assert len(logged) == 2
    for key in ("entropy", "entropy/s_mean", "entropy/s_minus_n_std", "plan/num_tokens"):
        assert all(key in row for row in logged)
    assert_no_duplicate_metrics(logged)
    if method != "grpo":
        name = method.split("(")[0].split("+")[-1].strip()
        assert all(f"{name}/frac_dropped" in row for row in logged)
        fractions = [row[f"{name}/frac_dropped"] for row in logged]
        expected = [
            float((r["batch"].mask & ~r["plan"].keep).sum() / r["batch"].mask.sum())
            for r in trainer.records
        ]
        assert fractions == pytest.approx(expected)


def assert_no_duplicate_metrics(rows):
    """No metric is logged twice: TRL's `entropy` is not repeated as `entropy/mean`, nor a
    filter's S_* statistics beside `entropy/s_*` (series that vary between rows are compared)."""
    for key in ("entropy/mean", "clip_b/s_mean", "clip_b/s_std", "clip_v/d_std"):
        assert all(key not in row for row in rows), key
    ours = ("entropy/", "clip_b/", "clip_v/", "plan/", "probe/")
    series = {}
    for key in set.intersection(*(set(row) for row in rows)):
        values = tuple(row[key] for row in rows)
        if len(set(values)) > 1 and key not in ("step", "epoch"):
            series.setdefault(values, []).append(key)
    for keys in series.values():
        assert len(keys) == 1 or not any(k.startswith(ours) for k in keys), keys


def _loss_inputs(trainer):
    """One micro-batch as TRL hands it to the loss (the trainer's buffered split)."""
    return trainer._buffered_inputs[0]


def test_trl_loss_drops_masked_tokens_from_numerator_and_denominator(tmp_path):
    # loss_type "dapo" (TRL's default): sum over loss tokens / global loss-token count.
    trainer = make_trainer(tmp_path, "clip_b(mu=0.5)", steps=1, loss_type="dapo")
    trainer.train()
    inputs = _loss_inputs(trainer)
    keep, A = inputs[KEEP_KEY], inputs["advantages"].double()
    assert (inputs["completion_mask"].bool() & ~keep).any()
    # on-policy: old log-probs are the current ones, so r = 1 and the token loss is -A
    expected = -(A.unsqueeze(1) * keep).sum() / keep.sum()
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, inputs)
    torch.testing.assert_close(loss.double(), expected, atol=1e-6, rtol=1e-6)


def test_method_surrogate_path_uses_global_seq_mean_token_mean(tmp_path):
    # "pg" is not TRL's surrogate: the method's own loss with loss_type grpo aggregation.
    trainer = make_trainer(tmp_path, "pg + clip_b(mu=0.5)", steps=1, loss_type="grpo")
    assert not trainer.trl_surrogate
    trainer.train()
    inputs = _loss_inputs(trainer)
    keep, A = inputs[KEEP_KEY].double(), inputs["advantages"].double().unsqueeze(1)
    per_seq = (-A * keep).sum(-1) / keep.sum(-1).clamp(min=1)  # token-mean per sequence
    num_seqs = (keep.sum(-1) > 0).sum()  # rows with a kept token
    expected = per_seq.sum() / num_seqs
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, inputs)
    torch.testing.assert_close(loss.double(), expected, atol=1e-6, rtol=1e-6)


def test_num_iterations_reuses_the_plan_and_matches_trl_logprobs(tmp_path):
    trainer = make_trainer(tmp_path, "clip_b(mu=0.5)", steps=2, num_iterations=2)
    trainer.train()
    assert len(trainer.records) == 1  # one generation batch, trained on twice
    record = trainer.records[0]
    trl_old = record["output"]["old_per_token_logps"]  # TRL's own fused-head log-probs
    mask = record["batch"].mask
    torch.testing.assert_close(record["batch"].logprobs[mask], trl_old[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(record["batch"].old_logprobs, trl_old)


def test_options_that_cannot_be_honoured_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown|valid"):
        EntropyGRPOConfig(
            output_dir=str(tmp_path),
            entropy_method="no_such_method",
            report_to=[],
            use_cpu=True,
            bf16=False,
        )
    common = dict(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="beta"):
        EntropyGRPOConfig(entropy_method="pg + clip_b", beta=0.1, **common)
    with pytest.raises(ValueError, match="loss_type"):
        EntropyGRPOConfig(entropy_method="pg + clip_b", loss_type="sapo", **common)
    # TRL's own surrogate (plain ppo) keeps every TRL option: KL, loss types, entropy mask
    EntropyGRPOConfig(entropy_method="clip_b", beta=0.1, loss_type="sapo", **common)
    # what TRL would silently skip: the method's own advantages, our reference reset
    for method in ("qae", "w_reinforce"):
        with pytest.raises(ValueError, match="advantage estimator"):
            EntropyGRPOConfig(entropy_method=method, **common)
    with pytest.raises(ValueError, match="sync_ref_model"):
        EntropyGRPOConfig(entropy_method="ppo + kl_ref(reset_every=5)", **common)


def test_evaluation_batches_leave_the_method_state_as_training_left_it(tmp_path):
    """TRL plans its eval batches too; they must not advance a stateful filter (Clip-Cov's
    random draw here), or evaluating would change the training that follows."""
    method = "ppo(eps_low=1.0, eps_high=1.0) + clip_cov(ratio=0.5, lb=-1e9, ub=1e9)"  # draws
    trainer = make_trainer(tmp_path, method, steps=1, trainer_cls=EntropyGRPOTrainer)
    trainer.eval_dataset = Dataset.from_dict({"prompt": [f"{i}-{i}=" for i in range(8)]})
    trainer.args.per_device_eval_batch_size = 8
    start = trainer.method.state_dict()
    trainer.train()
    trained = trainer.method.state_dict()
    assert not _same_state(start, trained)  # a training plan does advance the draw
    planned = trainer.last_plan
    trainer.evaluate()
    assert trainer.last_plan is not planned  # an evaluation batch was planned
    assert _same_state(trainer.method.state_dict(), trained)


def _same_state(a, b):
    return a.keys() == b.keys() and all(
        a[p].keys() == b[p].keys() and all(torch.equal(a[p][k], b[p][k]) for k in a[p]) for p in a
    )


def test_probe_logs_the_measured_entropy_change_of_the_update(tmp_path):
    trainer = make_trainer(tmp_path, "clip_b(mu=0.5)", steps=1, entropy_probe_steps=1)
    before = build_tiny_model(trainer.processing_class, **TINY)  # the same initial weights
    trainer.train()
    inputs = _loss_inputs(trainer)  # one step, one micro-batch: the probed one
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    T, mask = inputs["completion_ids"].size(1), inputs["completion_mask"].bool()

    def entropy(model):  # H of softmax(z), float64, at the completion positions
        with torch.no_grad():
            z = model(input_ids=ids, attention_mask=att).logits[:, -T - 1 : -1].double()
        return -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)

    measured = (entropy(trainer.model) - entropy(before))[mask].mean()
    row = next(r for r in trainer.state.log_history if "entropy/measured_delta" in r)
    assert row["entropy/measured_delta"] == pytest.approx(float(measured), rel=1e-3, abs=1e-7)
    assert measured.abs() > 1e-6, "the update must move the entropy for the check to mean much"
    for key in ("entropy/pred_delta", "probe/corr_pred", "probe/sign_agree"):
        assert key in row


def test_method_loss_summed_over_micro_batches_is_the_whole_batch_token_mean(tmp_path):
    # gradient accumulation 2: TRL shuffles the generation batch and splits it in two
    trainer = make_trainer(
        tmp_path,
        "pg + clip_b(mu=0.5)",
        steps=1,
        loss_type="bnpo",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
    )
    trainer.train()
    parts = trainer._buffered_inputs
    assert len(parts) == 2
    keep = torch.cat([p[KEEP_KEY] for p in parts]).double()
    A = torch.cat([p["advantages"] for p in parts]).double().unsqueeze(1)
    expected = (-A * keep).sum() / keep.sum()  # r = 1 on-policy: token loss -A
    with torch.no_grad():
        total = sum(trainer._compute_loss(trainer.model, p) for p in parts)
    torch.testing.assert_close(total.double(), expected, atol=1e-6, rtol=1e-6)
    assert int(keep.sum()) == int(trainer.last_plan.keep.sum())


def test_tiny_model_with_a_reference_model_beta_above_zero(tmp_path, monkeypatch):
    # TRL reloads the reference from model.name_or_path; load_model("tiny") must provide one.
    from entropy_dynamics.models import CACHE_ENV, load_model

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    model, tokenizer = load_model("tiny")
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = EntropyGRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-2,
        bf16=False,
        beta=0.1,
        entropy_method="grpo",
    )
    trainer = EntropyGRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=reward_by_chars,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [f"{i}+{2 * i}=" for i in range(32)]}),
    )
    for name, p in trainer.ref_model.named_parameters():
        assert torch.equal(p, initial[name]), name
    trainer.train()
    assert any("kl" in row for row in trainer.state.log_history)


def test_dual_clip_becomes_trl_delta_with_the_same_loss_off_policy(tmp_path):
    trainer = make_trainer(
        tmp_path, "ppo(dual_clip=3.0) + clip_b(mu=0.5)", steps=1, loss_type="bnpo"
    )
    assert trainer.trl_surrogate and trainer.args.delta == 3.0
    trainer.train()
    inputs = dict(_loss_inputs(trainer))
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    att = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    T = inputs["completion_ids"].size(1)
    with torch.no_grad():
        logp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, att, T)
    g = torch.Generator().manual_seed(0)
    old = logp - 2.0 * torch.randn(logp.shape, generator=g)  # ratios from e^-6 to e^6
    inputs["old_per_token_logps"] = old
    keep, A = inputs[KEEP_KEY], inputs["advantages"].unsqueeze(1).expand_as(logp)
    assert (keep & (A < 0) & (logp - old > 1.2)).any(), "some A < 0 tokens must pass r > 3"
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trainer.model, inputs)  # TRL's loss, delta = 3
        ours, _ = trainer.method.surrogate.loss(logp, old, A)  # the method's dual-clip PPO
    expected = (ours * keep).sum() / keep.sum()  # bnpo: token mean over the loss mask
    torch.testing.assert_close(trl_loss.double(), expected.double(), atol=1e-6, rtol=1e-6)
    common = dict(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="delta"):
        EntropyGRPOConfig(entropy_method="ppo(dual_clip=3.0)", delta=2.0, **common)


@pytest.mark.parametrize(
    "method",
    [
        "ppo(eps_low=0.05, eps_high=0.05) + clip_b(mu=0.5) + entropy_bonus(coef=0.01)",
        "pg + adaptive_entropy_bonus(coef=0.01, target=50.0, step=0.01)",
    ],
)
def test_every_logged_metric_is_the_same_for_1_2_and_4_micro_batches(tmp_path, method):
    """One generation batch of 8, as 1 x 8, 2 x 4 and 4 x 2 micro-batches (gradient
    accumulation = steps_per_generation): every metric of ours is logged with the same value."""
    logged = {}
    for micro, accumulate in ((8, 1), (4, 2), (2, 4)):
        trainer = make_trainer(
            tmp_path / f"micro{micro}",
            method,
            steps=1,
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=accumulate,
            steps_per_generation=accumulate,
        )
        trainer.train()
        row = trainer.state.log_history[0]
        logged[micro] = {
            k: v
            for k, v in row.items()
            if k.split("/")[0] in ("loss", "entropy", "plan", "clip_b", "entropy_bonus")
        }
    whole = logged[8]
    assert {"loss/ratio_mean", "entropy_bonus/entropy", "entropy_bonus/coef"} <= set(whole)
    assert whole["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # on-policy
    assert whole["entropy_bonus/entropy"] == pytest.approx(whole["entropy/mean"], rel=1e-5)
    for micro in (4, 2):
        assert set(logged[micro]) == set(whole)
        for key, value in whole.items():
            assert logged[micro][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (micro, key)
