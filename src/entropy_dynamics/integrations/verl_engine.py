"""verl engine seam: verl's FSDP actor engine plus N, and the monitor's entropy probe.

verl's `FSDPEngineWithLMHead.prepare_model_outputs` turns the model's logits into `log_probs`,
`entropy` (and optionally `sum_pi_squared`), all from the temperature-scaled logits. Clip_V also
needs N = sum_i p_i^2 (H + log p_i), which verl does not compute. `EntropyFSDPEngine` runs verl's
method unchanged and, when the micro-batch asks for it (non-tensor key
`calculate_entropy_baseline`), adds `model_output["entropy_baseline"]`: N from the same logits
and temperature, streamed in row chunks by `token_stats` (no `[tokens, V]` probabilities),
gathered and unpadded by verl's own helper, as a jagged tensor shaped like `log_probs`. verl
concatenates every `model_output` key over micro-batches and returns it from `compute_log_prob`
(into the TransferQueue for the v1 trainer), so N reaches the driver beside the entropy.
Cost: one more streamed pass over the logits of each micro-batch (verl keeps its own entropy).

The probe (monitor mode, `verl_monitor`): when an update mini-batch carries the non-tensor
`entropy_probe_step` (a step it has not probed yet: the first mini-batch of that step),
`train_batch` takes the logits of its first `entropy_probe_rows` rows right before and right
after verl's own `train_batch` (zero_grad, forward/backward with the installed loss, optimiser
step; called unchanged in between), in eval mode, without grad, the RNG state kept, and adds
`train.probe.entropy_probe`'s metrics (the measured entropy change beside Theorem 3.3's
prediction with the nominal step `lr * A`, and the logit-space prediction) to the step's
metrics as `entropy_dynamics/<name>`. Cost: two forward passes of those rows, and the logits of
their response tokens held twice (fp32, `[tokens, V]`).

Selection goes through verl's engine registry: the class is registered for
`model_type="language_model"`, backends fsdp/fsdp2, under the vendor name `VENDOR`; verl picks it
when the workers run with `VERL_ENGINE_VENDOR=entropy_dynamics` (the example config sets it in
`ray_kwargs.ray_init.runtime_env.env_vars`). Every other engine lookup falls back to verl's own.
Not available with `use_fused_kernels` (the fused kernel never materialises the logits).
"""

from __future__ import annotations

import torch
from torch import Tensor
from verl.utils import tensordict_utils as tu
from verl.utils.device import get_device_id, get_device_name
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.utils.padding import no_padding_2_padding

from entropy_dynamics.theory import nominal_step
from entropy_dynamics.token_stats import token_stats
from entropy_dynamics.train.probe import entropy_probe

__all__ = [
    "BASELINE_KEY",
    "CALCULATE_BASELINE_KEY",
    "PROBE_PREFIX",
    "PROBE_ROWS_KEY",
    "PROBE_STEP_KEY",
    "VENDOR",
    "EntropyFSDPEngine",
]

VENDOR = "entropy_dynamics"  # the VERL_ENGINE_VENDOR value that selects EntropyFSDPEngine
BASELINE_KEY = "entropy_baseline"  # model_output / batch field holding N
CALCULATE_BASELINE_KEY = "calculate_entropy_baseline"  # non-tensor flag on the micro-batch
PROBE_STEP_KEY = "entropy_probe_step"  # non-tensor on an update batch: the step to probe
PROBE_ROWS_KEY = "entropy_probe_rows"  # non-tensor: how many rows of its first mini-batch
LOGITS_KEY = "entropy_probe_logits"  # non-tensor flag / model_output key: the raw logits
PROBE_PREFIX = "entropy_dynamics/"  # the probe's metric names in the worker's output


def _scalar_temperature(temperature) -> float:
    """verl's micro-batch temperature (float or per-sample tensor [B]) as one float."""
    if not isinstance(temperature, Tensor):
        return float(temperature)
    values = temperature.reshape(-1).unique()
    if values.numel() != 1:
        raise ValueError(
            f"{BASELINE_KEY}: per-sample temperatures {values.tolist()} are not supported; "
            "N is computed with one temperature per micro-batch (set one rollout.temperature)"
        )
    return float(values[0])


def _baseline(logits: Tensor, temperature: float) -> Tensor:
    """N for every row of ``logits`` ``[..., V]`` under softmax(logits / temperature), fp32.

    N does not depend on the sampled token, so the label is any valid id (0).
    """
    labels = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    with torch.no_grad():
        return token_stats(logits.detach(), labels, temperature=temperature).baseline


def _rng_kept():
    """The probe's passes leave the RNG state as they found it (dropout draws what it would)."""
    device = get_device_name()
    if device == "cpu":
        return torch.random.fork_rng()
    return torch.random.fork_rng(devices=[get_device_id()], device_type=device)


class EntropyFSDPEngine(FSDPEngineWithLMHead):
    """verl's FSDP LM engine; adds N (and, for the probe, the logits) to the model output when
    asked, and runs the monitor's entropy probe around a probed step's `train_batch`."""

    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        model_output = super().prepare_model_outputs(
            output, output_args, micro_batch, logits_processor_func
        )
        want_baseline = tu.get_non_tensor_data(
            micro_batch, key=CALCULATE_BASELINE_KEY, default=False
        )
        want_logits = tu.get_non_tensor_data(micro_batch, key=LOGITS_KEY, default=False)
        if not (want_baseline or want_logits):
            return model_output
        if tu.get_non_tensor_data(micro_batch, key="use_fused_kernels", default=False):
            raise ValueError(
                f"{BASELINE_KEY} (N, for clip_v and the metrics) and the entropy probe need the "
                "logits, which use_fused_kernels never materialises: set "
                "actor_rollout_ref.model.use_fused_kernels=false"
            )
        logits = output.logits
        if hasattr(logits, "full_tensor"):  # tensor parallel: DTensor sharded over V
            logits = logits.full_tensor()
        if want_baseline:
            temperature = _scalar_temperature(micro_batch["temperature"])
            baseline = _baseline(logits, temperature)
            model_output[BASELINE_KEY] = self._per_token(baseline, output_args, micro_batch)
        if want_logits:
            model_output[LOGITS_KEY] = self._per_token(logits.detach(), output_args, micro_batch)
        return model_output

    def _per_token(self, values: Tensor, output_args, micro_batch) -> Tensor:
        """Per-position ``values`` of the model's output, as verl's jagged tensor over prompt +
        response tokens (``[B, j, ...]``, like ``log_probs``).

        ``values``: ``(1, total_nnz / sp + pad, ...)`` packed (remove-padding; gathered across
        the sequence-parallel group and unpadded by verl's helper) or ``(B, max_len, ...)``
        right-padded per sequence.
        """
        offsets = micro_batch["input_ids"].offsets()  # (B + 1,) over prompt + response tokens
        if tu.get_non_tensor_data(micro_batch, key="use_remove_padding", default=True):
            flat = self._gather_and_unpad_packed(values.squeeze(0), output_args["pad_size"])
        else:
            lengths = offsets.diff().tolist()
            flat = torch.cat([row[:n] for row, n in zip(values, lengths, strict=True)])
        return torch.nested.nested_tensor_from_jagged(flat, offsets)

    # ------------------------------------------------------------------ the monitor's probe
    def train_batch(self, data, loss_function):
        step = tu.get_non_tensor_data(data, key=PROBE_STEP_KEY, default=None)
        if step is None or step == getattr(self, "_probed_step", None):
            return super().train_batch(data, loss_function)
        self._probed_step = step  # the step's first mini-batch (first epoch) only
        count = int(tu.get_non_tensor_data(data, key=PROBE_ROWS_KEY, default=1))
        rows = tu.index_select_tensor_dict(data, torch.arange(min(count, data.batch_size[0])))
        flags = {LOGITS_KEY: True, CALCULATE_BASELINE_KEY: False, "calculate_entropy": False}
        tu.assign_non_tensor(rows, distillation_use_topk=False, **flags)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this optimiser step uses
        mask = _response_mask(rows)
        before = self._probe_logits(rows, mask)
        outputs = super().train_batch(data, loss_function)
        after = self._probe_logits(rows, mask)
        metrics = _probe_metrics(rows, mask, before, after, lr)
        if self.is_mp_src_rank_with_outputs():  # a one-entry list, as a micro-batch metric
            outputs["metrics"].update({PROBE_PREFIX + k: [float(v)] for k, v in metrics.items()})
        return outputs

    @torch.no_grad()
    def _probe_logits(self, rows, mask: Tensor) -> Tensor:
        """Raw logits ``(n, V)`` (fp32) at ``rows``' ``n`` valid response tokens, current weights.

        verl's own `forward_step` (device move, inputs, autocast, the module, outputs) with no
        loss, in eval mode; the module's mode and the RNG state are restored afterwards.
        """
        training = self.module.training
        self.module.eval()
        try:
            with _rng_kept():
                _, output = self.forward_step(rows, loss_function=None, forward_only=True)
        finally:
            self.module.train(training)
        logits = no_padding_2_padding(output["model_output"][LOGITS_KEY], rows)  # (b, T, V)
        if mask.shape != logits.shape[:2]:
            raise ValueError(
                f"entropy probe: response_mask {tuple(mask.shape)} does not match the logits at "
                f"the response positions {tuple(logits.shape[:2])}"
            )
        return logits[mask.to(logits.device)].float()


def _response_mask(rows) -> Tensor:
    """Bool ``(b, T)``: the probed rows' response tokens (verl's dense or jagged field)."""
    return rows.select("response_mask").to_padded_tensor()["response_mask"].bool()


def _probe_metrics(rows, mask: Tensor, before: Tensor, after: Tensor, lr: float):
    """`entropy_probe` on the probed tokens: logits ``(n, V)`` before / after the step, passed
    as one row of ``n`` tokens (its means and correlations are over tokens)."""
    mask = mask.to(before.device)
    advantages = rows.select("advantages").to_padded_tensor()["advantages"].to(before.device)
    # the token each response position predicts: the next one of the packed sequence
    labels = no_padding_2_padding(torch.roll(rows["input_ids"].values(), -1), rows)
    # Theorem 3.3's nominal step alpha = lr * r * A on each response token; r = 1: the first
    # mini-batch of the update is on-policy
    alpha = nominal_step(lr, advantages.float(), keep=mask)
    return entropy_probe(
        before[None],
        after[None],
        labels.to(before.device)[mask][None],
        torch.ones_like(alpha[mask][None], dtype=torch.bool),
        alpha[mask][None],
        temperature=_scalar_temperature(rows["temperature"]),
    )


# Registered once per process at import (verl's registry refuses a second registration).
EngineRegistry.register(
    model_type="language_model", backend=["fsdp", "fsdp2"], device=["cuda", "npu"], vendor=VENDOR
)(EntropyFSDPEngine)
