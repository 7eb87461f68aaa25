"""The verl plugin against the real verl 0.9.1 package (runs inside `.venv-verl`).

`scripts/setup-verl-env.sh` builds that environment; `tests/test_integration_verl_env.py` runs
this file there from the main test suite. References are float64 formulas from PAPER.md and
verl's own functions (its vanilla PPO loss, agg_loss, DataProto, padding utilities).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

verl = pytest.importorskip("verl", reason="verl is installed only in .venv-verl")
warnings.filterwarnings("ignore")

from verl import DataProto  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.utils.import_utils import import_external_libs  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402

import_external_libs("entropy_dynamics.integrations.verl")  # what external_lib does in verl

from entropy_dynamics import methods  # noqa: E402
from entropy_dynamics.integrations import verl as plugin  # noqa: E402

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def random_batch(B=6, T=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 5, 3, 7, 1, 6])[:B]
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T) right-padded
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    new = old + 0.4 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    adv = torch.randn(B, 1, generator=gen, dtype=torch.float64).expand(B, T).clone()
    entropy = torch.rand(B, T, generator=gen, dtype=torch.float64) * 2
    return mask, old, new, adv, entropy


def actor_config(**kwargs):
    return ActorConfig(strategy="fsdp", rollout_n=1, use_dynamic_bsz=True, **kwargs)


def test_external_lib_registers_the_losses_in_verls_registry():
    for name in plugin.LOSS_NAMES:
        assert core_algos.get_policy_loss_fn(name) is core_algos.POLICY_LOSS_REGISTRY[name]


@pytest.mark.parametrize("mode", MODES)
def test_ed_ppo_equals_verls_vanilla_loss_and_gradient(mode):
    mask, old, new, adv, _ = random_batch()
    weights = torch.rand(mask.shape, dtype=torch.float64) + 0.5
    config = actor_config(clip_ratio_low=0.2, clip_ratio_high=0.28)
    results = []
    for name in ("vanilla", "ed_ppo"):
        log_prob = new.clone().requires_grad_(True)
        loss, metrics = core_algos.get_policy_loss_fn(name)(
            old_log_prob=old,
            log_prob=log_prob,
            advantages=adv,
            response_mask=mask,
            loss_agg_mode=mode,
            config=config,
            rollout_is_weights=weights,
        )
        loss.backward()
        results.append((loss.detach(), log_prob.grad, metrics))
    (ref_loss, ref_grad, ref_metrics), (loss, grad, metrics) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(ref_metrics["actor/pg_clipfrac"])
    assert metrics["actor/ppo_kl"] == pytest.approx(ref_metrics["actor/ppo_kl"])
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(
        ref_metrics["actor/pg_clipfrac_lower"]
    )


def test_ed_ce_gppo_and_ed_pg_equal_the_paper_formulas():
    mask, old, new, adv, _ = random_batch(seed=1)
    config = actor_config(clip_ratio_low=0.2, clip_ratio_high=0.2)
    r = torch.exp(new - old)
    # pg: -r A; token-mean over the valid tokens
    expected_pg = (-(r * adv))[mask].mean()
    loss, _ = core_algos.get_policy_loss_fn("ed_pg")(
        old, new, adv, mask, "token-mean", config=config
    )
    torch.testing.assert_close(loss, expected_pg)
    # CE-GPPO (PAPER.md sec. 5): A < 0, r < 0.8 -> -0.75 * 0.8 * A; A > 0, r > 1.2 -> -1.2 * A
    low, high = (adv < 0) & (r < 0.8), (adv > 0) & (r > 1.2)
    per_token = torch.where(low, -0.75 * 0.8 * adv, torch.where(high, -1.0 * 1.2 * adv, -r * adv))
    loss, _ = core_algos.get_policy_loss_fn("ed_ce_gppo")(
        old, new, adv, mask, "token-mean", config=config
    )
    torch.testing.assert_close(loss, per_token[mask].mean())
    assert (low | high)[mask].any(), "the batch must exercise the clipped branches"


def clip_b_reference(S, A, mask, mu):
    """Released Clip_B: A >= 0 kept; A < 0 kept iff S - mean(S) >= -mu * std(S) (population)."""
    mean, std = S[mask].mean(), S[mask].std(unbiased=False)
    return mask & ((A >= 0) | (S - mean >= -mu * std))


def test_mask_step_on_a_dataproto_drops_the_clip_b_tokens_from_response_mask():
    mask, old, _, adv, entropy = random_batch(seed=2)
    data = DataProto.from_dict(
        {
            "response_mask": mask.long(),
            "old_log_probs": old.float(),
            "entropys": entropy.float(),
            "advantages": adv.float(),
        }
    )
    metrics = plugin.apply_entropy_masks(data, "clip_b(mu=0.5)")
    S = old.exp() * (entropy + old)  # S_* = p_k (H + log p_k)
    expected = clip_b_reference(S, adv, mask, 0.5)
    assert torch.equal(data.batch["entropy_keep"].bool(), expected)
    assert torch.equal(data.batch["response_mask"].bool(), expected)
    assert torch.equal(data.batch["entropy_valid_mask"].bool(), mask)
    assert data.batch["response_mask"].dtype == torch.long
    assert (mask & ~expected).any()
    dropped = float((mask & ~expected).sum() / mask.sum())
    assert metrics["entropy_dynamics/clip_b/frac_dropped"] == pytest.approx(dropped)


def test_masked_batch_gives_the_same_loss_whole_or_in_verl_micro_batches():
    # verl's engine: batch_num_tokens = all-reduced sum of the loss mask (= response_mask)
    mask, old, new, adv, entropy = random_batch(seed=3)
    data = DataProto.from_dict(
        {
            "response_mask": mask.long(),
            "old_log_probs": old,
            "entropys": entropy,
            "advantages": adv,
            "log_probs": new,
        }
    )
    plugin.apply_entropy_masks(data, "clip_b(mu=0.5)")
    keep = data.batch["entropy_keep"].bool()
    config = actor_config()
    loss_fn = core_algos.get_policy_loss_fn("ed_ppo")
    config.global_batch_info.update(dp_size=1, batch_num_tokens=int(keep.sum()))
    total = sum(
        loss_fn(
            part.batch["old_log_probs"],
            part.batch["log_probs"],
            part.batch["advantages"],
            part.batch["response_mask"].bool(),
            "token-mean",
            config=config,
        )[0]
        for part in data.chunk(3)
    )
    r = torch.exp(new - old)
    per_token = torch.maximum(-adv * r, -adv * r.clamp(0.8, 1.2))
    per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * 3.0), per_token)
    torch.testing.assert_close(total, per_token[keep].mean())


def test_clip_v_needs_n_and_uses_it_when_given():
    mask, old, _, adv, entropy = random_batch(seed=4)
    batch = {"response_mask": mask, "old_log_probs": old, "entropy": entropy, "advantages": adv}
    with pytest.raises(ValueError, match="N"):
        plugin.apply_entropy_masks(dict(batch), "clip_v")
    S = old.exp() * (entropy + old)
    N = S - 0.01 * torch.randn(
        mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    batch["entropy_baseline"] = N
    plugin.apply_entropy_masks(batch, "clip_v(mu=1.0, max_frac=1.0)")
    d = N - S
    expected = mask & ((adv > 0) | (d <= 1.0 * d[mask].std(unbiased=False)))
    assert torch.equal(batch["entropy_keep"].bool(), expected)


def test_entropy_sync_trainer_masks_the_whole_batch_in_the_transfer_queue(monkeypatch):
    if not plugin.V1_TRAINER_REGISTERED:
        pytest.skip("verl's v1 trainer needs TransferQueue, not installed here")
    import transfer_queue as tq
    from omegaconf import OmegaConf
    from tensordict import TensorDict
    from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls
    from verl.workers.utils.padding import response_to_nested

    trainer_cls = get_trainer_cls("entropy_sync")
    assert issubclass(trainer_cls, PPOTrainerSync)
    mask, old, _, adv, entropy = random_batch(seed=6)
    # TransferQueue holds jagged [B, len_b] tensors, as verl's workers write them
    response_mask = torch.nested.as_nested_tensor(
        [row[: int(row.sum())].long() for row in mask], layout=torch.jagged
    )
    nested = {
        name: response_to_nested(value.float(), response_mask)
        for name, value in (("old_log_probs", old), ("entropy", entropy), ("advantages", adv))
    }
    nested["response_mask"] = response_mask
    nested["entropy_baseline"] = response_to_nested(entropy.float() * 0.5, response_mask)
    store = {}

    def kv_batch_get(keys, partition_id, select_fields):
        return TensorDict({k: nested[k] for k in select_fields}, batch_size=len(keys))

    def kv_batch_put(keys, partition_id, fields):
        store.update(fields.items())

    monkeypatch.setattr(tq, "kv_batch_get", kv_batch_get)
    monkeypatch.setattr(tq, "kv_batch_put", kv_batch_put)
    monkeypatch.setattr(PPOTrainerSync, "_compute_advantage", lambda self, batch, metrics: batch)
    trainer = object.__new__(trainer_cls)
    trainer.config = OmegaConf.create({"actor_rollout_ref": {"actor": {"optim": {"lr": 1e-3}}}})
    trainer.method, trainer.use_reference_policy = methods.build("clip_b(mu=0.5)"), False

    class Meta:  # the KVBatchMeta fields the trainer reads
        keys, partition_id = [f"k{i}" for i in range(mask.shape[0])], "train"

        def __len__(self):
            return len(self.keys)

    metrics = {}
    trainer._compute_advantage(Meta(), metrics)
    S = old.float().double().exp() * (entropy.float().double() + old.float().double())
    expected = clip_b_reference(S, adv.float().double(), mask, 0.5)
    written = store["response_mask"]
    padded = torch.nested.to_padded_tensor(written, 0) if written.is_nested else written
    assert torch.equal(padded.bool(), expected[:, : padded.shape[1]])
    assert "entropy_dynamics/clip_b/frac_dropped" in metrics
    assert set(store) >= {"entropy_keep", "entropy_weight", "entropy_valid_mask"}
    assert "entropy_dynamics/entropy/pred_delta" in metrics  # N was in the queue
