"""verl engine seam: verl's FSDP actor engine plus N = sum_i p_i^2 (H + log p_i) per position.

verl's `FSDPEngineWithLMHead.prepare_model_outputs` turns the model's logits into `log_probs`,
`entropy` (and optionally `sum_pi_squared`), all from the temperature-scaled logits. Clip_V also
needs N, which verl does not compute. `EntropyFSDPEngine` runs verl's method unchanged and, when
the micro-batch asks for it (non-tensor key `calculate_entropy_baseline`), adds
`model_output["entropy_baseline"]`: N from the same logits and temperature, streamed in row
chunks by `token_stats` (no `[tokens, V]` probabilities), gathered and unpadded by verl's own
helper, as a jagged tensor shaped like `log_probs`. verl concatenates every `model_output` key over
micro-batches and returns it from `compute_log_prob` (into the TransferQueue for the v1
trainer), so N reaches the driver beside the entropy.

Selection goes through verl's engine registry: the class is registered for
`model_type="language_model"`, backends fsdp/fsdp2, under the vendor name `VENDOR`; verl picks it
when the workers run with `VERL_ENGINE_VENDOR=entropy_dynamics` (the example config sets it in
`ray_kwargs.ray_init.runtime_env.env_vars`). Every other engine lookup falls back to verl's own.
Cost: one more streamed pass over the logits of each micro-batch (verl keeps its own entropy).
Not available with `use_fused_kernels` (the fused kernel never materialises the logits).
"""

from __future__ import annotations

import torch
from torch import Tensor
from verl.utils import tensordict_utils as tu
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from entropy_dynamics.token_stats import token_stats

__all__ = ["BASELINE_KEY", "CALCULATE_BASELINE_KEY", "VENDOR", "EntropyFSDPEngine"]

VENDOR = "entropy_dynamics"  # the VERL_ENGINE_VENDOR value that selects EntropyFSDPEngine
BASELINE_KEY = "entropy_baseline"  # model_output / batch field holding N
CALCULATE_BASELINE_KEY = "calculate_entropy_baseline"  # non-tensor flag on the micro-batch


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


class EntropyFSDPEngine(FSDPEngineWithLMHead):
    """verl's FSDP LM engine; adds `entropy_baseline` (N) to the model output when asked."""

    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        model_output = super().prepare_model_outputs(
            output, output_args, micro_batch, logits_processor_func
        )
        if not tu.get_non_tensor_data(micro_batch, key=CALCULATE_BASELINE_KEY, default=False):
            return model_output
        if tu.get_non_tensor_data(micro_batch, key="use_fused_kernels", default=False):
            raise ValueError(
                f"{BASELINE_KEY} (N, for clip_v) needs the logits, which use_fused_kernels never "
                "materialises: set actor_rollout_ref.model.use_fused_kernels=false"
            )
        temperature = _scalar_temperature(micro_batch["temperature"])
        logits = output.logits
        if hasattr(logits, "full_tensor"):  # tensor parallel: DTensor sharded over V
            logits = logits.full_tensor()
        offsets = micro_batch["input_ids"].offsets()  # (B + 1,) over prompt + response tokens
        if tu.get_non_tensor_data(micro_batch, key="use_remove_padding", default=True):
            baseline = _baseline(logits.squeeze(0), temperature)  # (total_nnz / sp + pad,)
            baseline = self._gather_and_unpad_packed(baseline, output_args["pad_size"])
        else:  # (B, max_len, V), right-padded per sequence
            rows = _baseline(logits, temperature)
            lengths = offsets.diff().tolist()
            baseline = torch.cat([row[:n] for row, n in zip(rows, lengths, strict=True)])
        model_output[BASELINE_KEY] = torch.nested.nested_tensor_from_jagged(baseline, offsets)
        return model_output


# Registered once per process at import (verl's registry refuses a second registration).
EngineRegistry.register(
    model_type="language_model", backend=["fsdp", "fsdp2"], device=["cuda", "npu"], vendor=VENDOR
)(EntropyFSDPEngine)
