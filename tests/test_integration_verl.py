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


# --------------------------------------------------------------------------- example configs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "verl"


@pytest.mark.parametrize("name", ["entropy_grpo", "entropy_clip_b", "entropy_clip_v"])
def test_example_config_passes_verls_own_validation(name):
    hydra = pytest.importorskip("hydra")
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.workers.config import RolloutConfig

    with hydra.initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        cfg = hydra.compose(config_name=name)
    assert OmegaConf.missing_keys(cfg) == set()  # every mandatory (???) value is set
    # what verl's main_ppo runs before anything starts (raised the micro-batch error before)
    validate_config(
        cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg)
    )
    assert isinstance(omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout), RolloutConfig)
    assert cfg.actor_rollout_ref.model.external_lib == "entropy_dynamics.integrations.verl"
    assert cfg.trainer.use_v1 and cfg.trainer.v1.trainer_mode == "entropy_sync"
    env = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    assert env.VERL_ENGINE_VENDOR == plugin.VENDOR
    plugin.build_method(cfg)  # the method parses and fits the actor settings


def test_verls_engine_registry_gives_our_engine_for_the_vendor(monkeypatch):
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    monkeypatch.setenv("VERL_ENGINE_DEVICE", "cuda")
    monkeypatch.setenv("VERL_ENGINE_VENDOR", plugin.VENDOR)
    for backend in ("fsdp", "fsdp2"):
        assert EngineRegistry.get_engine_cls("language_model", backend) is plugin.EntropyFSDPEngine
    assert EngineRegistry.get_engine_cls("value_model", "fsdp").__name__ != "EntropyFSDPEngine"
    monkeypatch.setenv("VERL_ENGINE_VENDOR", "nvidia")
    assert EngineRegistry.get_engine_cls("language_model", "fsdp") is FSDPEngineWithLMHead


# --------------------------------------------------------------------------- the actor engine

PROMPT_LENS, RESPONSE_LENS, TEMPERATURE = (4, 2, 3), (5, 3, 2), 0.7


@pytest.fixture(scope="module")
def tiny_actor():
    """A config-built Llama and verl's FSDP LM engine around it (no FSDP wrap: one CPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from verl.utils import torch_functional as verl_F
    from verl.workers.config import FSDPEngineConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, initializer_range=0.6,
    )  # fmt: skip
    model = LlamaForCausalLM(config).double()
    engine = object.__new__(plugin.EntropyFSDPEngine)  # the fields prepare_model_* read
    engine.engine_config = FSDPEngineConfig(use_torch_compile=False)
    engine.compute_entropy_from_logits = verl_F.entropy_from_logits
    engine.ulysses_sequence_parallel_size, engine.use_ulysses_sp = 1, False
    engine.pad_to_length, engine.pad_to_length_bucket, engine.module = False, None, model
    return engine, model


def padded_rollout(seed=0):
    """verl's left-right padded rollout batch: left-padded prompts, right-padded responses."""
    gen = torch.Generator().manual_seed(seed)
    B, P, R = len(PROMPT_LENS), max(PROMPT_LENS), max(RESPONSE_LENS)
    ids = torch.randint(1, 64, (B, P + R), generator=gen)
    attention = torch.zeros(B, P + R, dtype=torch.long)
    for b, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS, strict=True)):
        attention[b, P - p : P + r] = 1
    response_mask = (torch.arange(R) < torch.tensor(RESPONSE_LENS)[:, None]).long()
    return {
        "prompts": ids[:, :P], "responses": ids[:, P:], "input_ids": ids,
        "attention_mask": attention, "response_mask": response_mask,
        "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
    }  # fmt: skip


def reference_stats(model, rollout):
    """float64 log p_k, H, N of every response token from one dense forward per sequence."""
    P = rollout["prompts"].shape[1]
    out = {k: torch.zeros(rollout["response_mask"].shape, dtype=torch.float64) for k in "lhn"}
    with torch.no_grad():
        for b, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS, strict=True)):
            ids = rollout["input_ids"][b, P - p : P + r]
            z = model(input_ids=ids[None], use_cache=False).logits[0].double() / TEMPERATURE
            logp = z[p - 1 : p + r - 1].log_softmax(-1)  # position t predicts token t + 1
            prob = logp.exp()
            H = -(prob * logp).sum(-1)
            out["l"][b, :r] = logp.gather(-1, ids[p:, None]).squeeze(-1)
            out["h"][b, :r] = H
            out["n"][b, :r] = (prob.square() * (H[:, None] + logp)).sum(-1)  # PAPER.md Thm 3.3
    return out


def engine_forward(engine, model, micro_batch, *, grad=False):
    """verl's own prepare_model_inputs -> model -> prepare_model_outputs (ours wraps it)."""
    inputs, output_args = engine.prepare_model_inputs(micro_batch)
    with torch.set_grad_enabled(grad):
        raw = model(**inputs, use_cache=False)
        return engine.prepare_model_outputs(raw, output_args, micro_batch, None)


def no_padding_batch(extra=None, **flags):
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    data = {**padded_rollout(), **(extra or {})}
    td = left_right_2_no_padding(TensorDict(data, batch_size=len(PROMPT_LENS)))
    tu.assign_non_tensor(td, temperature=TEMPERATURE, **flags)
    return td


@pytest.mark.parametrize("remove_padding", [True, False])
def test_engine_returns_n_beside_verls_entropy_from_the_same_logits(tiny_actor, remove_padding):
    from verl.workers.utils.padding import no_padding_2_padding

    engine, model = tiny_actor
    td = no_padding_batch(
        use_remove_padding=remove_padding, calculate_entropy=True, calculate_entropy_baseline=True
    )
    output = engine_forward(engine, model, td)
    ref = reference_stats(model, padded_rollout())
    mask = td["response_mask"].bool()
    N = no_padding_2_padding(output["entropy_baseline"], td).double()
    H = no_padding_2_padding(output["entropy"], td).double()
    torch.testing.assert_close(N[mask], ref["n"][mask], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(H[mask], ref["h"][mask], rtol=1e-5, atol=1e-7)
    assert ref["n"][mask].abs().min() > 1e-3  # peaked distributions: N is not trivially 0
    # without the flag the output is verl's, unchanged
    td = no_padding_batch(use_remove_padding=remove_padding, calculate_entropy=True)
    assert "entropy_baseline" not in engine_forward(engine, model, td)


# --------------------------------------------------------------------------- the whole method in verl's loss


def test_actor_loss_carries_reweights_and_regularisers_through_verls_engine(tiny_actor):
    """w_reinforce weights + entropy bonus, in verl's micro-batch loss, vs the paper's formula."""
    engine, model = tiny_actor
    rollout, ref = padded_rollout(), reference_stats(model, padded_rollout())
    mask = rollout["response_mask"].bool()
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)[:, None].expand(mask.shape).clone()
    old = ref["l"] - 0.05  # a stale policy: r != 1
    method = methods.build("pg + adv_weight(pos_weight=0.1) + entropy_bonus(coef=0.01)")
    data = {"response_mask": mask.long(), "old_log_probs": old, "advantages": adv,
            "entropy": ref["h"]}  # fmt: skip
    plugin.apply_entropy_masks(data, method)
    td = no_padding_batch(
        {k: v for k, v in data.items() if k.startswith("entropy_") or k in ("old_log_probs", "advantages")},
        use_remove_padding=True, calculate_entropy=True,
    )  # fmt: skip
    td.set_non_tensor("dp_size", 1)
    td.set_non_tensor("batch_num_tokens", int(mask.sum()))
    td.set_non_tensor("global_batch_size", mask.shape[0])
    output = engine_forward(engine, model, td, grad=True)
    config = actor_config(entropy_coeff=0.0, calculate_entropy=True)
    loss, metrics = plugin.method_loss(config, output, td, method=method)
    r = torch.exp(ref["l"] - old)
    weight = torch.where(adv > 0, 0.1, 1.0)
    expected = (-weight * r * adv - 0.01 * ref["h"])[mask].mean()  # token-mean over kept tokens
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-7)
    loss.backward()  # the gradient reaches the model through verl's log_probs and entropy
    assert model.lm_head.weight.grad.abs().sum() > 0
    assert "entropy_dynamics/entropy_bonus/entropy" in metrics


def test_actor_loss_refuses_verl_settings_it_would_ignore():
    from omegaconf import OmegaConf

    actor = OmegaConf.create({"entropy_coeff": 0.01, "use_kl_loss": False})
    with pytest.raises(ValueError, match="entropy_bonus"):
        plugin.build_method(OmegaConf.create(
            {"entropy_dynamics": {"method": "grpo"}, "actor_rollout_ref": {"actor": actor}}
        ))  # fmt: skip
    actor = OmegaConf.create({"entropy_coeff": 0, "use_kl_loss": False, "calculate_entropy": False})
    with pytest.raises(ValueError, match="calculate_entropy"):
        plugin.build_method(OmegaConf.create(
            {"entropy_dynamics": {"method": "entropy_bonus"}, "actor_rollout_ref": {"actor": actor}}
        ))  # fmt: skip
    with pytest.raises(ValueError, match="use_kl_loss"):
        plugin.build_method(OmegaConf.create(
            {"entropy_dynamics": {"method": "ppo + kl_ref"}, "actor_rollout_ref": {"actor": actor}}
        ))  # fmt: skip
    actor = OmegaConf.create({"entropy_coeff": 0, "use_kl_loss": False, "calculate_entropy": True})
    for spec in (
        "adaptive_entropy_bonus",
        "entropic",
        "target_entropy",
    ):  # state moves after a step
        with pytest.raises(ValueError, match="do not feed back"):
            plugin.build_method(OmegaConf.create(
                {"entropy_dynamics": {"method": spec}, "actor_rollout_ref": {"actor": actor}}
            ))  # fmt: skip
    # what verl would silently skip: the method's own advantages, our reference reset
    for spec, message in (("qae", "advantage estimator"), ("w_reinforce", "advantage estimator"),
                          ("ppo + kl_ref(reset_every=4)", "reset_every")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            plugin.build_method(OmegaConf.create(
                {"entropy_dynamics": {"method": spec}, "actor_rollout_ref": {"actor": actor}}
            ))  # fmt: skip
    # Clip-Cov's state moves in the driver's plan, so it runs
    plugin.build_method(OmegaConf.create(
        {"entropy_dynamics": {"method": "clip_cov"}, "actor_rollout_ref": {"actor": actor}}
    ))  # fmt: skip


# --------------------------------------------------------------------------- the legacy trainer


def test_legacy_trainer_keeps_n_and_h_and_plans_clip_v_before_the_update(tiny_actor):
    """verl's RayPPOTrainer._compute_old_log_prob / _update_actor with our overrides.

    The worker group stands in for Ray: it runs verl's engine path on the tiny model in-process.
    """
    from omegaconf import OmegaConf
    from tensordict import TensorDict

    engine, model = tiny_actor
    sent = {}

    class InProcessWorkers:  # the two RPCs the driver calls, run in this process
        def compute_log_prob(self, td):
            output = engine_forward(engine, model, td)
            return TensorDict(output, batch_size=len(PROMPT_LENS)).set_non_tensor(
                "metrics", {"mfu": 0.0}
            )

        def update_actor(self, td):
            sent["update"] = td
            return TensorDict({}, batch_size=[]).set_non_tensor("metrics", {"mfu": 0.0})

    trainer = object.__new__(plugin.EntropyRayPPOTrainer)
    trainer.config = OmegaConf.create({"actor_rollout_ref": {
        "actor": {"optim": {"lr": 1e-3}, "calculate_entropy": False, "entropy_coeff": 0,
                  "ppo_mini_batch_size": 3, "ppo_epochs": 1, "data_loader_seed": 0, "shuffle": False},
        "rollout": {"n": 1, "temperature": TEMPERATURE, "multi_turn": {"enable": False}},
    }})  # fmt: skip
    trainer.method, trainer.actor_rollout_wg = (
        methods.build("clip_v(mu=0.5, max_frac=1.0)"),
        InProcessWorkers(),
    )
    batch = DataProto.from_dict(padded_rollout(), meta_info={"temperature": TEMPERATURE})
    old, _ = trainer._compute_old_log_prob(batch)
    ref = reference_stats(model, padded_rollout())
    mask = batch.batch["response_mask"].bool()
    torch.testing.assert_close(
        old.batch["entropy_baseline"][mask].double(), ref["n"][mask], rtol=1e-5, atol=1e-7
    )
    old.batch.pop("entropys")  # what verl's legacy fit does right after logging it
    batch = batch.union(old)
    batch.batch["advantages"] = torch.tensor([1.0, -1.0, -1.0])[:, None].expand(mask.shape).clone()
    output = trainer._update_actor(batch)
    keep = (
        sent["update"]["entropy_keep"].to_padded_tensor(0).bool()
        if sent["update"]["entropy_keep"].is_nested
        else sent["update"]["entropy_keep"].bool()
    )
    d = ref["n"] - (ref["l"].exp() * (ref["h"] + ref["l"]))  # D = N - S_*
    adv = batch.batch["advantages"]
    expected = mask & ((adv > 0) | (d <= 0.5 * d[mask].std(unbiased=False)))
    assert torch.equal(keep[:, : mask.shape[1]], expected)
    assert (mask & ~expected).any(), "clip_v must drop tokens here"
    assert torch.equal(batch.batch["response_mask"].bool(), mask)  # restored after the update
    logged = output.meta_info["metrics"]
    for name in (
        "clip_v/frac_dropped",
        "entropy/n_mean",
        "entropy/s_minus_n_mean",
        "entropy/pred_delta",
    ):
        assert "entropy_dynamics/" + name in logged


# --------------------------------------------------------------------------- the legacy launcher


def tiny_model_dir(path):
    """A config-built Llama and a word-level tokenizer with a chat template, saved (offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "user", "assistant", ":", "what", "is", "1", "+", "2", "?"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    tokenizer.save_pretrained(path)
    LlamaConfig(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, architectures=["LlamaForCausalLM"],
    ).save_pretrained(path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def legacy_run_files(tmp_path_factory):
    """One batch of the examples' 32 prompts (examples' parquet format) and a tiny model."""
    import pandas as pd

    path = tmp_path_factory.mktemp("legacy")
    row = {
        "data_source": "reasoning_gym/basic_arithmetic",
        "prompt": [{"role": "user", "content": "what is 1 + 2 ?"}],
        "ability": "reasoning",
        "reward_model": {"style": "rule", "ground_truth": "3"},
    }
    for split in ("train", "test"):
        pd.DataFrame([dict(row, extra_info={"index": i}) for i in range(32)]).to_parquet(
            path / f"{split}.parquet"
        )
    return path, tiny_model_dir(path / "model")


def test_legacy_runner_builds_our_trainer_through_verls_task_runner(legacy_run_files, monkeypatch):
    """verl's own TaskRunner.run on an example config with trainer.use_v1=false, in-process.

    It runs verl's validate_config, HFModelConfig (tokenizer), RLHFDataset on the parquet and
    RayPPOTrainer.__init__ (dataloaders), then stops where verl needs a Ray cluster:
    ResourcePoolManager asks Ray for its GPUs in init_workers. Nothing is replaced.
    """
    hydra = pytest.importorskip("hydra")
    import ray
    from verl.trainer import main_ppo_v0
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer, Role
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from entropy_dynamics.integrations import verl_main

    data, model = legacy_run_files
    monkeypatch.setenv("ED_VERL_DATA", str(data))  # what run.sh exports
    with hydra.initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        cfg = hydra.compose(
            config_name="entropy_clip_v",
            overrides=["trainer.use_v1=false", f"actor_rollout_ref.model.path={model}"],
        )

    assert not ray.is_initialized()
    with pytest.raises(ray.exceptions.RaySystemError, match="Ray has not been started") as raised:
        verl_main.EntropyTaskRunner().run(cfg)
    assert not ray.is_initialized()
    tb, frames = raised.value.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    where = [("/".join(f.f_code.co_filename.split("/")[-3:]), f.f_code.co_name) for f in frames]
    assert ("verl/trainer/main_ppo_v0.py", "run") in where  # verl's TaskRunner.run did the work
    (trainer,) = [f.f_locals["self"] for f in frames if f.f_code.co_name == "init_workers"][:1]
    assert type(trainer) is plugin.EntropyRayPPOTrainer
    assert trainer.method.needs_baseline and "clip_v(" in repr(trainer.method)
    assert trainer.config.trainer.use_v1 is False
    assert len(trainer.train_dataloader) == 1 and trainer.total_training_steps == 40
    worker = trainer.role_worker_mapping[Role.ActorRollout]
    assert worker.__ray_metadata__.modified_class.__ray_actor_class__ is ActorRolloutRefWorker
    # verl's module is unchanged; the Ray actor that run_ppo starts is this runner
    assert main_ppo_v0.RayPPOTrainer is RayPPOTrainer
    actor = verl_main.TaskRunner.__ray_metadata__.modified_class.__ray_actor_class__
    assert actor is verl_main.EntropyTaskRunner
    assert issubclass(actor, main_ppo_v0.BaseTaskRunner)


def test_launcher_runs_the_legacy_trainer_in_a_ray_actor_up_to_the_gpus(legacy_run_files, tmp_path):
    """The documented command, `trainer.use_v1=false`, on a local CPU Ray cluster (1 CPU).

    Hydra composes the example; verl's main checks run; verl's run_ppo starts our TaskRunner as
    a Ray actor (pickled by reference into its process); verl's TaskRunner.run there builds
    EntropyRayPPOTrainer, whose init_workers stops at verl's check for the GPUs it needs.
    """
    import os
    import subprocess
    import sys

    data, model = legacy_run_files
    command = [
        sys.executable, "-m", "entropy_dynamics.integrations.verl_main",
        f"--config-path={EXAMPLES}", "--config-name=entropy_clip_v", "trainer.use_v1=false",
        f"actor_rollout_ref.model.path={model}", "ray_kwargs.ray_init.num_cpus=1",
        f"hydra.run.dir={tmp_path / 'hydra'}",  # Hydra's outputs/ stay out of the repository
    ]  # fmt: skip
    env = dict(
        os.environ,
        ED_VERL_DATA=str(data),
        ED_VERL_EXAMPLES=str(EXAMPLES),
        VERL_USE_EXTERNAL_MODULES="entropy_dynamics.integrations.verl",
        VERL_ENGINE_VENDOR=plugin.VENDOR,
        RAY_USAGE_STATS_ENABLED="0",
        HYDRA_FULL_ERROR="1",
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    log = done.stdout + done.stderr
    assert done.returncode != 0
    assert "'use_v1': False" in done.stdout and "checks passed successfully" in done.stdout
    assert "ray::EntropyTaskRunner.run()" in log, log[-3000:]
    assert "verl_trainers.py" in log and "in init_workers" in log  # our trainer, in the actor
    assert "Total available GPUs 0 is less than total desired GPUs 1" in log, log[-3000:]


def test_launcher_refuses_a_verl_run_that_no_longer_names_ray_ppo_trainer():
    from entropy_dynamics.integrations import verl_main

    def run(self, config):  # a verl whose TaskRunner.run builds its trainer some other way
        return config

    with pytest.raises(RuntimeError, match="no longer constructs RayPPOTrainer"):
        verl_main._with_trainer(run, plugin.EntropyRayPPOTrainer)
    bound = verl_main._with_trainer(verl_main.VerlTaskRunner.run, plugin.EntropyRayPPOTrainer)
    assert bound.__globals__["RayPPOTrainer"] is plugin.EntropyRayPPOTrainer
    assert verl_main.VerlTaskRunner.run.__globals__["RayPPOTrainer"].__name__ == "RayPPOTrainer"
