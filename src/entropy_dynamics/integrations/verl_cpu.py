"""verl's actor worker in one CPU process: a CPU entry for verl's platform registry, and the worker.

verl 0.9.1 has no CPU platform (its registry holds CUDA, NPU and ROCm), so its engine and
`TrainingWorker` ask `torch.cuda` for the device. `use_cpu_platform()` registers `CpuPlatform`
through verl's own seam (`PlatformRegistry.register`, `set_platform`: "external plugins can
register their own platform classes"); with a one-process gloo group, verl's real
`TrainingWorker`, its FSDP2 engine (ours or its own, chosen by verl's engine registry), its
`ppo_loss`, micro-batching and optimiser then run on CPU tensors. Rollouts still need vLLM or
SGLang, so this is for tests, for timing the plugin (`examples/verl/monitor_cost.py`) and for
debugging a loss without a GPU; nothing imports it in a GPU run.

    previous = use_cpu_platform()             # before verl builds an engine
    worker = cpu_training_worker(model_path, vendor="entropy_dynamics")
    actor = InProcessActor(worker)            # what the trainers call on `actor_rollout_wg`
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import types
from functools import partial

import torch
import torch.distributed as dist
from verl.plugin.platform import platform_manager
from verl.plugin.platform.platform_base import PlatformBase

__all__ = [
    "CpuPlatform",
    "InProcessActor",
    "cpu_training_worker",
    "save_config_model",
    "use_cpu_platform",
]


def _zero(*args, **kwargs) -> int:
    return 0


# The torch.cuda calls verl makes through `get_torch_device()`, answered for the host.
_CPU_DEVICE = types.SimpleNamespace(
    current_device=lambda: "cpu",
    device_count=lambda: 1,
    is_available=lambda: True,
    get_device_name=lambda *args: "cpu",
    set_device=lambda *args: None,
    synchronize=lambda *args: None,
    empty_cache=lambda: None,
    manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed,
    max_memory_allocated=_zero,
    max_memory_reserved=_zero,
    memory_allocated=_zero,
    memory_reserved=_zero,
    mem_get_info=lambda *args: (0, 0),
)


class CpuPlatform(PlatformBase):
    """The host as a verl platform: device "cpu", collectives over gloo, no profiler or IPC."""

    device_name = "cpu"
    vendor_name = "cpu"
    device_module = _CPU_DEVICE

    def is_available(self) -> bool:
        return True

    def current_device(self):
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index=None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return (None, None)

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CPU_VISIBLE_DEVICES"

    def nvtx_range(self, msg: str):
        return contextlib.nullcontext()

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self):
        return None


platform_manager.PlatformRegistry.register(platform="cpu")(CpuPlatform)


def use_cpu_platform() -> PlatformBase | None:
    """Make `CpuPlatform` verl's platform and start a one-process gloo group; returns the
    platform it replaced (None if none was resolved yet), for `set_platform` to restore."""
    previous = platform_manager._current_platform  # verl's singleton; set_platform replaces it
    platform_manager.set_platform(CpuPlatform())
    if not dist.is_initialized():
        store = os.path.join(tempfile.mkdtemp(prefix="verl_cpu_"), "store")
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    return previous


def save_config_model(
    path,
    *,
    vocab_size: int = 12,
    hidden_size: int = 16,
    num_layers: int = 1,
    initializer_range: float = 0.5,
    seed: int = 0,
) -> str:
    """Save a config-built Llama with random weights and a word-level tokenizer (offline).

    For verl's `HFModelConfig`, which loads both from a path. The tokenizer knows a handful of
    words; batches are made of token ids directly. Returns ``str(path)``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "user", "assistant", ":"]
    vocab = {word: i for i, word in enumerate(words)}
    tokens = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokens.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokens, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    ).save_pretrained(path)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        initializer_range=initializer_range,  # large: peaked distributions, S_* and N not ~0
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def cpu_training_worker(
    model_path: str,
    *,
    vendor: str | None,
    lr: float = 1e-3,
    micro_batch_size: int = 2,
    use_remove_padding: bool = False,
    param_dtype: str = "fp32",
):
    """verl's `TrainingWorker` for the actor, as `ActorRolloutRefWorker.init_model` sets it up.

    ``vendor``: `VERL_ENGINE_VENDOR` for verl's engine registry (``"entropy_dynamics"``: our
    `EntropyFSDPEngine`; None: verl's `FSDPEngineWithLMHead`). FSDP2 on the one-rank group,
    eager attention (no flash-attn on CPU), fixed micro-batches of ``micro_batch_size`` rows,
    mixed precision ``param_dtype``. The loss is verl's `ppo_loss` until `set_loss_fn`.
    """
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import (
        ActorConfig,
        FSDPEngineConfig,
        FSDPOptimizerConfig,
        HFModelConfig,
        TrainingWorkerConfig,
    )
    from verl.workers.engine_workers import TrainingWorker
    from verl.workers.utils.losses import ppo_loss

    model = HFModelConfig(
        path=model_path,
        use_remove_padding=use_remove_padding,
        override_config={"attn_implementation": "eager"},
    )
    engine = FSDPEngineConfig(
        strategy="fsdp2",
        use_torch_compile=False,
        use_dynamic_bsz=False,
        micro_batch_size_per_gpu=micro_batch_size,
        infer_micro_batch_size_per_gpu=micro_batch_size,
        mixed_precision={"param_dtype": param_dtype},
    )
    config = TrainingWorkerConfig(
        model_type="language_model",
        model_config=model,
        engine_config=engine,
        optimizer_config=FSDPOptimizerConfig(lr=lr),
        checkpoint_config=CheckpointConfig(),
    )
    keys = {  # the engine registry's keys are (cuda, vendor); verl's Worker reads its rank
        "VERL_ENGINE_DEVICE": "cuda",
        "VERL_ENGINE_VENDOR": vendor or "nvidia",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "0",  # unused: the gloo group of use_cpu_platform() is already up
    }
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(keys)
    try:
        worker = TrainingWorker(config)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    worker.reset()  # builds the FSDP module, optimiser and scheduler (verl's init_model does)
    actor = ActorConfig(
        strategy="fsdp2",
        rollout_n=1,
        ppo_mini_batch_size=micro_batch_size,
        ppo_micro_batch_size_per_gpu=micro_batch_size,
        use_dynamic_bsz=False,
    )
    worker.set_loss_fn(partial(ppo_loss, config=actor))
    return worker


class InProcessActor:
    """The actor worker group's RPCs the trainers call, run in this process on one worker.

    Each method is `ActorRolloutRefWorker`'s body (`self.actor.<call>(data).cpu()`), without
    Ray's dispatch; `set_loss_fn` is its `set_loss_fn`.
    """

    def __init__(self, worker) -> None:
        self.worker = worker

    def compute_log_prob(self, data):
        return self.worker.infer_batch(data).cpu()

    def update_actor(self, data):
        return self.worker.train_mini_batch(data=data).cpu()

    def set_loss_fn(self, loss_fn) -> None:
        self.worker.set_loss_fn(loss_fn)
