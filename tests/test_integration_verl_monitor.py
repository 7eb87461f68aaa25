"""verl's monitor-only mode (`verl_monitor`) against verl 0.9.1's real actor worker (in `.venv-verl`).

verl's own `TrainingWorker` (its FSDP2 engine, `ppo_loss`, mini- and micro-batching, AdamW and
scheduler) runs in this process on CPU: `verl_cpu.CpuPlatform` is registered through verl's
platform registry, and the legacy trainer's own `_compute_old_log_prob` / `_update_actor` reach
the worker through `verl_cpu.InProcessActor` instead of Ray. References: verl without the plugin
(its `FSDPEngineWithLMHead` and `RayPPOTrainer`), and float64 formulas from PAPER.md.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

verl = pytest.importorskip("verl", reason="verl is installed only in .venv-verl")
warnings.filterwarnings("ignore")

from omegaconf import OmegaConf  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.plugin.platform import platform_manager  # noqa: E402
from verl.trainer.ppo.ray_trainer import RayPPOTrainer  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.utils.import_utils import import_external_libs  # noqa: E402
from verl.utils.metric import reduce_metrics  # noqa: E402

import_external_libs("entropy_dynamics.integrations.verl")  # what external_lib does in verl

from entropy_dynamics import methods  # noqa: E402
from entropy_dynamics.integrations import verl as plugin  # noqa: E402
from entropy_dynamics.integrations import verl_cpu  # noqa: E402
from entropy_dynamics.integrations.verl_monitor import (  # noqa: E402
    PROBE_NAMES,
    Settings,
    lift_probe_metrics,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "verl"
TEMPERATURE, LR = 0.7, 0.05
PROMPT_LENS, RESPONSE_LENS = (3, 5, 2, 4), (6, 3, 5, 4)
WATCHED = "clip_b(mu=0.5) + clip_v(mu=1.0, max_frac=1.0)"


@pytest.fixture(scope="module")
def cpu():
    previous = verl_cpu.use_cpu_platform()
    yield
    platform_manager._current_platform = previous  # verl's singleton, as it was
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A config-built Llama (12 ids) with weights, saved for verl's HFModelConfig."""
    return verl_cpu.save_config_model(tmp_path_factory.mktemp("monitor") / "model")


def rollout(seed):
    """verl's left-right padded rollout batch (left-padded prompts, right-padded responses)."""
    gen = torch.Generator().manual_seed(seed)
    B, P, R = len(PROMPT_LENS), max(PROMPT_LENS), max(RESPONSE_LENS)
    ids = torch.randint(3, 12, (B, P + R), generator=gen)
    attention = torch.zeros(B, P + R, dtype=torch.long)
    for b, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS, strict=True)):
        attention[b, P - p : P + r] = 1
    response_mask = (torch.arange(R) < torch.tensor(RESPONSE_LENS)[:, None]).long()
    data = {
        "prompts": ids[:, :P], "responses": ids[:, P:], "input_ids": ids,
        "attention_mask": attention, "response_mask": response_mask,
        "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
    }  # fmt: skip
    meta = {"temperature": TEMPERATURE, "global_token_num": attention.sum(-1).tolist()}  # as fit
    return DataProto.from_dict(data, meta_info=meta)


ADVANTAGES = torch.tensor([1.0, -1.0, 0.5, -0.5])


def trainer_config(mini_batch=2, **entropy_dynamics):
    """The config keys verl's legacy `_compute_old_log_prob` / `_update_actor` read."""
    config = {"actor_rollout_ref": {
        "actor": {"optim": {"lr": LR}, "calculate_entropy": False, "entropy_coeff": 0,
                  "ppo_mini_batch_size": mini_batch, "ppo_epochs": 1, "data_loader_seed": 0,
                  "shuffle": False, "loss_agg_mode": "token-mean"},
        "rollout": {"n": 1, "temperature": TEMPERATURE, "multi_turn": {"enable": False}},
    }}  # fmt: skip
    if entropy_dynamics:
        config["entropy_dynamics"] = entropy_dynamics
    return OmegaConf.create(config)


class Recorded(verl_cpu.InProcessActor):
    """The in-process actor, keeping what the trainer sent to `update_actor`."""

    def update_actor(self, data):
        self.sent = data.clone()
        return super().update_actor(data)


def legacy_trainer(cls, config, worker):
    trainer = object.__new__(cls)  # the fields verl's two stage methods read
    trainer.config, trainer.actor_rollout_wg = config, Recorded(worker)
    if cls is not RayPPOTrainer:
        trainer.method = plugin.build_method(config)
    return trainer


def legacy_step(trainer, step):
    """verl's legacy fit, the actor part: old log-probs, advantages, update (`ray_trainer.fit`)."""
    trainer.global_steps = step
    batch = rollout(seed=step)
    old, _ = trainer._compute_old_log_prob(batch)
    old.batch.pop("entropys")  # what fit does right after logging it
    batch = batch.union(old)
    batch.batch["advantages"] = ADVANTAGES[:, None].expand_as(batch.batch["response_mask"]).clone()
    before = batch.batch.clone()  # the whole batch as the update step receives it
    output = trainer._update_actor(batch)
    return before, output.meta_info["metrics"]  # per mini-batch lists; fit reduces them


def same(a, b) -> bool:
    """Equal tensors (dense or jagged) or equal non-tensor values."""
    a, b = tu.unwrap_non_tensor_data(a), tu.unwrap_non_tensor_data(b)
    if isinstance(a, torch.Tensor) and a.is_nested:
        return torch.equal(a.values(), b.values()) and torch.equal(a.offsets(), b.offsets())
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def parameters(worker) -> dict[str, torch.Tensor]:
    return {
        name: p.full_tensor().detach().clone() if hasattr(p, "full_tensor") else p.detach().clone()
        for name, p in worker.engine.module.named_parameters()
    }


def clip_b_drops(batch, mu):
    """Released Clip_B on the batch's S_* = p_k (H + log p_k): the share of valid tokens dropped."""
    mask = batch["response_mask"].bool()
    logp, H = batch["old_log_probs"].double(), batch["entropy"].double()
    S = logp.exp() * (H + logp)
    mean, std = S[mask].mean(), S[mask].std(unbiased=False)
    A = batch["advantages"]
    keep = mask & ((A >= 0) | (S - mean >= -mu * std))
    return float((mask & ~keep).sum() / mask.sum())


# --------------------------------------------------------------------------- the weights


@pytest.mark.parametrize("remove_padding", [False, True])
def test_monitor_mode_leaves_verls_update_bit_identical(cpu, model_path, remove_padding):
    """Two steps of verl's legacy stages on verl's real worker: stock verl (its engine, its
    trainer) against the monitor (our engine and trainer, probing every step)."""
    worker_args = dict(lr=LR, use_remove_padding=remove_padding)
    stock_worker = verl_cpu.cpu_training_worker(model_path, vendor=None, **worker_args)
    ours_worker = verl_cpu.cpu_training_worker(model_path, vendor=plugin.VENDOR, **worker_args)
    assert type(ours_worker.engine) is plugin.EntropyFSDPEngine
    assert type(stock_worker.engine).__name__ == "FSDPEngineWithLMHead"
    start = parameters(stock_worker)
    assert all(torch.equal(start[k], v) for k, v in parameters(ours_worker).items())
    stock = legacy_trainer(RayPPOTrainer, trainer_config(), stock_worker)
    monitor = trainer_config(mode="monitor", method=WATCHED, probe_steps=1, probe_rows=2)
    ours = legacy_trainer(plugin.EntropyRayPPOTrainer, monitor, ours_worker)
    for step in (1, 2):
        stock_metrics = reduce_metrics(legacy_step(stock, step)[1])
        batch, raw = legacy_step(ours, step)
        for name in PROBE_NAMES:  # once per step: the first of its two optimiser steps
            assert len(raw["entropy_dynamics/" + name]) == 1, name
        metrics = reduce_metrics(raw)
        # what reached verl's update: verl's own batch, plus the two probe flags
        sent, reference = ours.actor_rollout_wg.sent, stock.actor_rollout_wg.sent
        flags = {"entropy_probe_step": step, "entropy_probe_rows": 2}
        assert set(sent.keys()) == set(reference.keys()) | set(flags)
        for key in sent.keys():  # noqa: SIM118  (iterating a TensorDict walks its rows)
            assert same(sent.get(key), reference.get(key, flags.get(key))), key
        for name in ("actor/pg_loss", "actor/ppo_kl", "actor/pg_clipfrac", "actor/grad_norm"):
            assert metrics[name] == stock_metrics[name], name
        # the monitor's metrics: the batch's dynamics, what the filters would drop, the probe
        for name in ("entropy/s_mean", "entropy/n_mean", "entropy/s_minus_n_std",
                     "clip_v/frac_dropped", *PROBE_NAMES):  # fmt: skip
            assert "entropy_dynamics/" + name in metrics, name
        would_drop = metrics["entropy_dynamics/clip_b/frac_dropped"]
        assert would_drop == pytest.approx(clip_b_drops(batch, 0.5), abs=1e-6)
        assert would_drop > 0, "clip_b must have tokens to drop here (or bit-identity is moot)"
        assert not any(k.startswith("actor/entropy_dynamics/") for k in metrics)
    after = parameters(ours_worker)
    for name, value in parameters(stock_worker).items():
        assert torch.equal(after[name], value), name
    assert any(not torch.equal(after[k], start[k]) for k in start), "the update moved nothing"


# --------------------------------------------------------------------------- the probe


def dense_model(model_path, params):
    """The worker's weights in a plain float64 Llama (no FSDP, no packing)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig.from_pretrained(model_path)).double().eval()
    missing, unexpected = model.load_state_dict(params, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model


def reference_logits(model, rows):
    """float64 temperature-scaled logits ``(b, T, V)`` at each row's response positions."""
    batch = rollout(seed=1).batch
    P, T = batch["prompts"].shape[1], batch["responses"].shape[1]
    out = torch.zeros(rows, T, model.config.vocab_size, dtype=torch.float64)
    with torch.no_grad():
        for b in range(rows):
            p, r = PROMPT_LENS[b], RESPONSE_LENS[b]
            ids = batch["input_ids"][b, P - p : P + r]
            z = model(input_ids=ids[None], use_cache=False).logits[0].double() / TEMPERATURE
            out[b, :r] = z[p - 1 : p + r - 1]  # position t predicts token t + 1
    return out


@pytest.mark.parametrize("remove_padding", [False, True])
def test_probe_equals_a_float64_reference_of_the_optimiser_step(cpu, model_path, remove_padding):
    """One optimiser step (one mini-batch of 4 rows), 3 rows probed, against float64 math."""
    worker = verl_cpu.cpu_training_worker(
        model_path, vendor=plugin.VENDOR, lr=LR, use_remove_padding=remove_padding
    )
    config = trainer_config(mini_batch=4, mode="monitor", probe_steps=1, probe_rows=3)
    trainer = legacy_trainer(plugin.EntropyRayPPOTrainer, config, worker)
    start = parameters(worker)
    _, raw = legacy_step(trainer, step=1)
    z_old = reference_logits(dense_model(model_path, start), rows=3)  # (b, T, V) / temperature
    z_new = reference_logits(dense_model(model_path, parameters(worker)), rows=3)
    mask = torch.arange(z_old.shape[1]) < torch.tensor(RESPONSE_LENS[:3])[:, None]
    tokens = rollout(seed=1).batch["responses"][:3]
    logp_old, logp_new = z_old.log_softmax(-1), z_new.log_softmax(-1)
    p_old = logp_old.exp()
    H_old = -(p_old * logp_old).sum(-1)
    H_new = -(logp_new.exp() * logp_new).sum(-1)
    S = p_old * (H_old[..., None] + logp_old)  # S_j = p_j (H + log p_j), every token j
    S_k = S.gather(-1, tokens[..., None]).squeeze(-1)
    N = (p_old * S).sum(-1)  # N = sum_j p_j S_j
    alpha = LR * ADVANTAGES[:3, None].double()  # Theorem 3.3, nominal step lr * A
    expected = {
        "entropy/measured_delta": (H_new - H_old)[mask].mean(),
        "entropy/pred_delta": (-alpha * (S_k - N)).expand_as(mask)[mask].mean(),
        "entropy/pred_delta_logit": (-(S * (z_new - z_old)).sum(-1))[mask].mean(),
    }
    for name, value in expected.items():
        (logged,) = raw["entropy_dynamics/" + name]
        assert logged == pytest.approx(float(value), rel=1e-4, abs=1e-8), name
    assert abs(float(expected["entropy/measured_delta"])) > 1e-4, "the step must move H"


# --------------------------------------------------------------------------- configuration


def test_monitor_example_config_passes_verls_own_validation():
    hydra = pytest.importorskip("hydra")
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    for overrides in ([], ["trainer.use_v1=false"]):
        with hydra.initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
            cfg = hydra.compose(config_name="entropy_monitor", overrides=overrides)
        assert OmegaConf.missing_keys(cfg) == set()
        validate_config(
            cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg)
        )
        settings = Settings.from_config(cfg)
        assert settings.monitor and settings.probe_steps > 0
        assert cfg.actor_rollout_ref.actor.policy_loss.loss_mode == "vanilla"  # verl's own loss
        method = plugin.build_method(cfg)
        assert [part.name for part in method.filters] == ["clip_b", "clip_v"]
        env = cfg.ray_kwargs.ray_init.runtime_env.env_vars
        assert env.VERL_ENGINE_VENDOR == plugin.VENDOR  # N and the probe need our engine


def config_with(method=None, **entropy_dynamics):
    actor = {"entropy_coeff": 0.01, "use_kl_loss": True, "calculate_entropy": False}
    section = dict(entropy_dynamics, **({"method": method} if method else {}))
    return OmegaConf.create({"entropy_dynamics": section, "actor_rollout_ref": {"actor": actor}})


def test_settings_refuse_what_they_would_ignore():
    for section, message in (
        ({"mode": "watch"}, "choose one of"),
        ({"probe_steps": 5}, "option of entropy_dynamics.mode=monitor"),
        ({"mode": "monitor", "probe_rows": 8}, "no effect without"),
        ({"mode": "monitor", "probe_step": 5}, "unknown keys"),
        ({"mode": "monitor", "probe_steps": -1}, "int >= 0"),
        ({"mode": "monitor", "probe_steps": 2, "probe_rows": 0}, "int >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            Settings.from_config(OmegaConf.create({"entropy_dynamics": section}))
    for spec in ("clip_b + entropy_bonus(coef=0.01)", "grpo + adv_weight(pos_weight=0.1)"):
        with pytest.raises(ValueError, match="monitor mode would not apply"):
            plugin.build_method(config_with(spec, mode="monitor"))
    # verl's own entropy bonus and KL loss are refused in train mode (our loss replaces them),
    # and are verl's to use in monitor mode
    with pytest.raises(ValueError, match="entropy_coeff"):
        plugin.build_method(config_with("clip_b"))
    assert plugin.build_method(config_with("clip_b", mode="monitor")).filters[0].name == "clip_b"
    assert plugin.build_method(config_with(mode="monitor")) is None  # metrics only
    flags = Settings(mode="monitor", probe_steps=3, probe_rows=2)
    assert [step for step in range(1, 10) if flags.probe_flags(step)] == [3, 6, 9]
    assert flags.probe_flags(3) == {"entropy_probe_step": 3, "entropy_probe_rows": 2}
    with pytest.raises(ValueError, match="VERL_ENGINE_VENDOR"):
        lift_probe_metrics({"actor/pg_loss": [0.1]}, probed=True)


def test_observe_batch_writes_nothing_and_reports_the_would_be_drops():
    gen = torch.Generator().manual_seed(3)
    mask = torch.arange(6) < torch.tensor([6, 4, 2, 5])[:, None]
    logp = -torch.rand(4, 6, generator=gen, dtype=torch.float64) * 3
    H = torch.rand(4, 6, generator=gen, dtype=torch.float64) * 2
    S = logp.exp() * (H + logp)
    N = S - 0.05 * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    A = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)[:, None].expand(4, 6)
    batch = {"response_mask": mask.long(), "old_log_probs": logp, "entropy": H,
             "advantages": A, "entropy_baseline": N}  # fmt: skip
    copy = {k: v.clone() for k, v in batch.items()}
    metrics = plugin.observe_batch(batch, methods.build("clip_b(mu=0.5)"))
    assert batch.keys() == copy.keys() and all(torch.equal(batch[k], copy[k]) for k in copy)
    data = {"response_mask": mask, "old_log_probs": logp, "entropy": H, "advantages": A}
    assert metrics["entropy_dynamics/clip_b/frac_dropped"] == pytest.approx(clip_b_drops(data, 0.5))
    assert metrics["entropy_dynamics/entropy/s_mean"] == pytest.approx(float(S[mask].mean()))
    assert metrics["entropy_dynamics/entropy/s_minus_n_mean"] == pytest.approx(
        float((S - N)[mask].mean())
    )
    assert "entropy_dynamics/entropy/pred_delta" not in metrics  # the probe logs it
    assert not any("clip_b" in k for k in plugin.observe_batch(batch))  # no method: no drops


def test_entropy_sync_trainer_in_monitor_mode_sends_the_probe_and_lifts_its_metrics(monkeypatch):
    if not plugin.V1_TRAINER_REGISTERED:
        pytest.skip("verl's v1 trainer needs TransferQueue, not installed here")
    import transfer_queue as tq
    from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls
    from verl.workers.utils.padding import response_to_nested

    gen = torch.Generator().manual_seed(4)
    lengths = torch.tensor([6, 4, 2, 5])
    response_mask = torch.nested.as_nested_tensor(
        [torch.ones(int(n), dtype=torch.long) for n in lengths], layout=torch.jagged
    )
    padded = {
        "old_log_probs": -torch.rand(4, 6, generator=gen) * 3,
        "entropy": torch.rand(4, 6, generator=gen) * 2,
        "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None].expand(4, 6),
        "entropy_baseline": torch.rand(4, 6, generator=gen) * 0.1,
    }
    queue = {k: response_to_nested(v.contiguous(), response_mask) for k, v in padded.items()}
    queue["response_mask"] = response_mask
    written = {}
    monkeypatch.setattr(  # TransferQueue's storage: a dict (the driver's reads and writes)
        tq, "kv_batch_get",
        lambda keys, partition_id, select_fields: TensorDict(
            {k: queue[k] for k in select_fields}, batch_size=len(keys)),
    )  # fmt: skip
    monkeypatch.setattr(
        tq, "kv_batch_put", lambda keys, partition_id, fields: written.update(fields)
    )
    monkeypatch.setattr(PPOTrainerSync, "_compute_advantage", lambda self, batch, metrics: batch)
    seen = {}

    class ActorGroup:  # the worker group's update_actor: what the real worker returns
        def update_actor(self, batch):
            seen.update(batch.extra_info)
            metrics = {"mfu": [0.0], "pg_loss": [0.2]}
            metrics.update({"entropy_dynamics/" + name: [0.5] for name in PROBE_NAMES})
            return TensorDict({}, batch_size=[]).set_non_tensor("metrics", metrics)

    class Meta:  # the KVBatchMeta fields the trainer reads
        keys, partition_id, extra_info = [f"k{i}" for i in range(4)], "train", {}

        def __len__(self):
            return len(self.keys)

    trainer = object.__new__(get_trainer_cls("entropy_sync"))
    trainer.config = trainer_config(mode="monitor", method="clip_b(mu=0.5)", probe_steps=2)
    trainer.method, trainer.use_reference_policy = plugin.build_method(trainer.config), False
    trainer.actor_rollout_wg = ActorGroup()
    for step in (1, 2):
        trainer.global_steps, metrics, batch = step, {}, Meta()
        trainer._compute_advantage(batch, metrics)
        assert written == {}, "monitor mode writes nothing back into the queue"
        assert "entropy_dynamics/clip_b/frac_dropped" in metrics
        trainer._update_actor(batch, metrics)
        assert batch.extra_info.get("entropy_probe_step") is None  # taken off after the call
        assert (seen.pop("entropy_probe_step", None) == 2) == (step == 2)
    assert metrics["entropy_dynamics/entropy/measured_delta"] == 0.5
    assert "actor/entropy_dynamics/entropy/measured_delta" not in metrics
    assert metrics["actor/pg_loss"] == pytest.approx(0.2)
