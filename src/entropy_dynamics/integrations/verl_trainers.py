"""verl trainers with the entropy_dynamics plan: v1 `entropy_sync` and the legacy `EntropyRayPPOTrainer`.

Both do the same four things at verl's stage boundaries (its trainer methods), on the driver:
1. old log-probs: ask the actor engine for N too (`calculate_entropy_baseline`, honoured by
   `verl_engine.EntropyFSDPEngine`) and keep N and H beside `old_log_probs` (the response part);
2. after the advantages, on the WHOLE batch: `apply_entropy_masks` (the method's plan: keep,
   weight, regulariser tokens) and its metrics into verl's step metrics (verl's tracker logs them);
3. the actor update runs `verl_loss.method_loss`, installed on the workers with verl's
   `set_loss_fn` when the trainer starts;
4. after the update, `response_mask` is restored, so verl's own data metrics see every token.
The method comes from the config key `entropy_dynamics.method` (any entropy_dynamics spec).
With `entropy_dynamics.mode: monitor` (`verl_monitor`) only step 1 runs as above; step 2 logs
`observe_batch`'s metrics and writes nothing, no loss is installed, our fields leave the batch
before verl's update, and a probe step asks the actor engine for the entropy probe.
"""

from __future__ import annotations

from functools import cached_property, partial

from omegaconf import OmegaConf
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.utils.config import omega_conf_to_dataclass

from entropy_dynamics import methods

from .verl_engine import BASELINE_KEY, CALCULATE_BASELINE_KEY
from .verl_loss import check_actor_config, method_loss
from .verl_monitor import Settings, check_monitor_method, lift_probe_metrics
from .verl_plan import VALID_MASK_KEY, apply_entropy_masks, observe_batch, plan_fields

__all__ = ["ENTROPY_KEY", "EntropyRayPPOTrainer", "build_method", "register_v1_trainer"]

ENTROPY_KEY = "entropy"  # the legacy trainer drops `entropys` after logging it; H is kept here


def build_method(config) -> methods.Method | None:
    """The method named in ``config.entropy_dynamics.method``, checked against the actor config
    (train mode) or against what monitor mode reports (None: monitor mode without a method)."""
    settings = Settings.from_config(config)
    spec = OmegaConf.select(config, "entropy_dynamics.method", default=None)
    if not spec and settings.monitor:
        return None
    if not spec:
        raise ValueError(
            "the entropy_dynamics trainers need the method in the config: "
            "+entropy_dynamics.method='clip_b(mu=2.5)' (any entropy_dynamics spec)"
        )
    method = methods.build(OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else spec)
    if settings.monitor:  # verl's own loss trains: its entropy_coeff and KL settings are its own
        check_monitor_method(method)
    else:
        _check_what_verl_would_skip(method)
        check_actor_config(method, config.actor_rollout_ref.actor)
    if method.updated_after_step:
        raise ValueError(
            f"{method.spec}: {', '.join(method.updated_after_step)} update their state after each "
            "optimiser step from the actor's metrics, which the verl trainers do not feed back "
            "yet (their coefficient would stay at its start); use our trainer or TRL for them"
        )
    return method


def _check_what_verl_would_skip(method: methods.Method) -> None:
    """Refuse the parts a verl run would silently leave out: an advantage estimator (verl
    computes the advantages with algorithm.adv_estimator) and kl_ref's reference reset (verl's
    reference model stays as loaded)."""
    if method.advantage is not None:
        raise ValueError(
            f"{method.spec}: its advantage estimator ({method.advantage.spec}) would be ignored: "
            "verl computes the advantages (algorithm.adv_estimator); choose a method without an "
            "estimator part"
        )
    if method.reference_reset_every:
        raise ValueError(
            f"{method.spec}: kl_ref(reset_every={method.reference_reset_every}) resets the KL "
            "reference in our trainer only; verl keeps its reference model as loaded, so drop "
            "reset_every"
        )


def _install_loss(trainer) -> None:
    actor = omega_conf_to_dataclass(trainer.config.actor_rollout_ref.actor)
    trainer.actor_rollout_wg.set_loss_fn(partial(method_loss, config=actor, method=trainer.method))


def _lr(config) -> float:
    return float(config.actor_rollout_ref.actor.optim.lr)


class EntropyRayPPOTrainer(RayPPOTrainer):
    """verl's legacy trainer (`trainer.use_v1=false`) with the entropy_dynamics plan.

    verl's legacy TaskRunner constructs `RayPPOTrainer` by name (no registry to select a
    trainer); `python -m entropy_dynamics.integrations.verl_main ... trainer.use_v1=false`
    (`verl_main.EntropyTaskRunner`) runs verl's TaskRunner with this class in its place.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.method = build_method(self.config)

    @cached_property
    def settings(self) -> Settings:
        return Settings.from_config(self.config)

    def init_workers(self):
        super().init_workers()
        if not self.settings.monitor:
            _install_loss(self)

    def _compute_old_log_prob(self, batch):
        # verl keeps only the output keys it knows; N is read from the worker output on the way.
        # No seam exists here, so the worker-group call is wrapped for this one call only.
        outputs = []
        call = self.actor_rollout_wg.compute_log_prob

        def keep_output(data):
            outputs.append((data, call(data)))
            return outputs[-1][1]

        batch.meta_info[CALCULATE_BASELINE_KEY] = True
        self.actor_rollout_wg.compute_log_prob = keep_output
        try:
            old_log_prob, mfu = super()._compute_old_log_prob(batch)
        finally:
            self.actor_rollout_wg.compute_log_prob = call
            batch.meta_info.pop(CALCULATE_BASELINE_KEY, None)
        from verl.utils import tensordict_utils as tu
        from verl.workers.utils.padding import no_padding_2_padding

        data, output = outputs[-1]
        baseline = tu.get(output, BASELINE_KEY)
        if baseline is None:
            raise ValueError(
                "the actor returned no entropy_baseline (N): run the workers with "
                "VERL_ENGINE_VENDOR=entropy_dynamics (verl_engine.EntropyFSDPEngine)"
            )
        old_log_prob.batch[BASELINE_KEY] = no_padding_2_padding(baseline, data).float()
        old_log_prob.batch[ENTROPY_KEY] = old_log_prob.batch["entropys"]
        return old_log_prob, mfu

    def _update_actor(self, batch):
        if self.settings.monitor:
            return self._monitor_update_actor(batch)
        metrics = apply_entropy_masks(batch, self.method, lr=_lr(self.config))
        try:
            output = super()._update_actor(batch)
        finally:
            batch.batch["response_mask"] = batch.batch[VALID_MASK_KEY]
        output.meta_info["metrics"].update(metrics)
        return output

    def _monitor_update_actor(self, batch):
        metrics = observe_batch(batch, self.method)
        batch.pop(batch_keys=[BASELINE_KEY, ENTROPY_KEY])  # verl's update gets its own batch
        flags = self.settings.probe_flags(self.global_steps)
        batch.meta_info.update(flags)
        try:
            output = super()._update_actor(batch)
        finally:
            for key in flags:
                batch.meta_info.pop(key)
        lift_probe_metrics(output.meta_info["metrics"], probed=bool(flags))
        output.meta_info["metrics"].update(metrics)
        return output


def register_v1_trainer() -> bool:
    """Register `entropy_sync` in verl's v1 trainer registry; False when v1 cannot import."""
    try:
        import transfer_queue as tq
        from tensordict import TensorDict
        from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls, register_trainer
        from verl.workers.utils.padding import response_from_nested, response_to_nested
    except ImportError:  # verl's v1 trainer needs TransferQueue; the losses work without it
        return False

    def put(batch, padded, names, like):
        fields = {name: response_to_nested(padded[name], like) for name in names}
        tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict(fields, batch_size=len(batch)),
        )

    class EntropyPPOTrainerSync(PPOTrainerSync):
        """verl's synchronous v1 trainer with the entropy_dynamics plan (module docstring)."""

        @cached_property
        def settings(self) -> Settings:
            return Settings.from_config(self.config)

        def init(self):
            self.method = build_method(self.config)
            super().init()
            if not self.settings.monitor:
                _install_loss(self)

        def _compute_old_log_prob(self, batch, metrics):
            batch.extra_info[CALCULATE_BASELINE_KEY] = True
            try:
                batch = super()._compute_old_log_prob(batch, metrics)
            finally:
                batch.extra_info.pop(CALCULATE_BASELINE_KEY, None)
            data = tq.kv_batch_get(
                keys=batch.keys,
                partition_id=batch.partition_id,
                select_fields=[BASELINE_KEY, "response_mask"],
            )
            baseline = response_from_nested(data[BASELINE_KEY], data["response_mask"])
            tq.kv_batch_put(
                keys=batch.keys,
                partition_id=batch.partition_id,
                fields=TensorDict({BASELINE_KEY: baseline}, batch_size=len(batch)),
            )
            return batch

        def _compute_advantage(self, batch, metrics):
            batch = super()._compute_advantage(batch, metrics)
            fields = ["response_mask", "advantages", "old_log_probs", "entropy", BASELINE_KEY]
            if self.use_reference_policy:
                fields.append("ref_log_prob")
            data = tq.kv_batch_get(
                keys=batch.keys, partition_id=batch.partition_id, select_fields=fields
            )
            response_mask = data["response_mask"]
            padded = data.to_padded_tensor()  # whole batch: (B, T) each
            if self.settings.monitor:  # nothing goes back into the queue
                metrics.update(observe_batch(padded, self.method))
                return batch
            metrics.update(apply_entropy_masks(padded, self.method, lr=_lr(self.config)))
            put(batch, padded, ["response_mask", *plan_fields(padded)], response_mask)
            return batch

        def _update_actor(self, batch, metrics):
            if self.settings.monitor:
                flags = self.settings.probe_flags(self.global_steps)
                batch.extra_info.update(flags)
                try:
                    batch = super()._update_actor(batch, metrics)
                finally:
                    for key in flags:
                        batch.extra_info.pop(key, None)
                lift_probe_metrics(metrics, probed=bool(flags))
                return batch
            try:
                return super()._update_actor(batch, metrics)
            finally:
                data = tq.kv_batch_get(
                    keys=batch.keys, partition_id=batch.partition_id, select_fields=[VALID_MASK_KEY]
                )
                tq.kv_batch_put(
                    keys=batch.keys,
                    partition_id=batch.partition_id,
                    fields=TensorDict(
                        {"response_mask": data[VALID_MASK_KEY]}, batch_size=len(batch)
                    ),
                )

    try:
        get_trainer_cls("entropy_sync")
    except ValueError:
        register_trainer("entropy_sync")(EntropyPPOTrainerSync)
    return True
