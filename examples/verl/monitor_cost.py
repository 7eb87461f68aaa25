"""What verl's monitor-only mode costs the actor's share of a step, measured on CPU.

    .venv-verl/bin/python examples/verl/monitor_cost.py       # about 2 minutes, one thread

verl 0.9.1's own `TrainingWorker` (FSDP2 engine, `ppo_loss`, AdamW) runs in this process on CPU
(`entropy_dynamics.integrations.verl_cpu`), driven by verl's legacy trainer stages
`_compute_old_log_prob` + `_update_actor`: the actor's part of a PPO step (no rollout, reward or
reference model). Three set-ups on the same weights and batches, interleaved step by step:
stock verl (its engine and trainer), the monitor without the probe (N in the log-prob pass, the
driver's metrics), and the monitor probing every step. Prints the median process CPU time per
step of each (CPU time, so other work on the machine counts less) and of the driver's
`observe_batch` alone. The model is a config-built Llama (vocabulary 8192, hidden 256, 4
layers); 16 responses of 48-96 tokens after 32-token prompts, two mini-batches of 8.
"""

import argparse
import statistics
import tempfile
import time
import warnings

import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from entropy_dynamics.integrations import verl as plugin
from entropy_dynamics.integrations import verl_cpu

ROWS, PROMPT, RESPONSE, VOCAB = 16, 32, 96, 8192


def batch_for(step: int) -> DataProto:
    gen = torch.Generator().manual_seed(step)
    ids = torch.randint(6, VOCAB, (ROWS, PROMPT + RESPONSE), generator=gen)
    lengths = torch.randint(RESPONSE // 2, RESPONSE + 1, (ROWS,), generator=gen)
    response_mask = (torch.arange(RESPONSE) < lengths[:, None]).long()
    attention = torch.cat([torch.ones(ROWS, PROMPT, dtype=torch.long), response_mask], dim=1)
    data = {
        "prompts": ids[:, :PROMPT], "responses": ids[:, PROMPT:], "input_ids": ids,
        "attention_mask": attention, "response_mask": response_mask,
        "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
    }  # fmt: skip
    meta = {"temperature": 1.0, "global_token_num": attention.sum(-1).tolist()}
    return DataProto.from_dict(data, meta_info=meta)


def config(**entropy_dynamics):
    actor = {"optim": {"lr": 1e-4}, "calculate_entropy": False, "entropy_coeff": 0,
             "ppo_mini_batch_size": ROWS // 2, "ppo_epochs": 1, "data_loader_seed": 0,
             "shuffle": False, "loss_agg_mode": "token-mean"}  # fmt: skip
    rollout = {"n": 1, "temperature": 1.0, "multi_turn": {"enable": False}}
    section = {"entropy_dynamics": entropy_dynamics} if entropy_dynamics else {}
    return OmegaConf.create({"actor_rollout_ref": {"actor": actor, "rollout": rollout}, **section})


def trainer(cls, cfg, worker):
    built = object.__new__(cls)  # the fields verl's two stage methods read
    built.config, built.actor_rollout_wg = cfg, verl_cpu.InProcessActor(worker)
    if cls is not RayPPOTrainer:
        built.method = plugin.build_method(cfg)
    return built


def step(built, number: int) -> float:
    """CPU seconds of verl's old-log-prob stage and actor update on batch ``number``."""
    built.global_steps = number
    batch = batch_for(number)
    start = time.process_time()
    old, _ = built._compute_old_log_prob(batch)
    old.batch.pop("entropys")  # as verl's fit does
    batch = batch.union(old)
    advantages = torch.randn(ROWS, 1, generator=torch.Generator().manual_seed(number))
    batch.batch["advantages"] = advantages.expand(-1, RESPONSE).contiguous()
    built._update_actor(batch)
    return time.process_time() - start


def observe_time(built, number: int) -> float:
    """CPU seconds of the driver's metrics alone (`observe_batch` on a whole batch)."""
    batch = batch_for(number)
    old, _ = built._compute_old_log_prob(batch)
    batch = batch.union(old)
    batch.batch["advantages"] = torch.randn(ROWS, RESPONSE)
    start = time.process_time()
    plugin.observe_batch(batch, built.method)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--probe-rows", type=int, default=4)
    cli = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    verl_cpu.use_cpu_platform()
    path = verl_cpu.save_config_model(
        tempfile.mkdtemp(), vocab_size=VOCAB, hidden_size=256, num_layers=4,
        initializer_range=0.02,
    )  # fmt: skip
    watched = "clip_b + clip_v"
    monitor = {"mode": "monitor", "method": watched}
    kinds = {
        "stock verl": (RayPPOTrainer, config(), None),
        "+ monitor, no probe": (plugin.EntropyRayPPOTrainer, config(**monitor), plugin.VENDOR),
        "+ monitor, probe every step": (
            plugin.EntropyRayPPOTrainer,
            config(**monitor, probe_steps=1, probe_rows=cli.probe_rows),
            plugin.VENDOR,
        ),
    }
    built = {
        kind: trainer(cls, cfg, verl_cpu.cpu_training_worker(path, vendor=vendor, lr=1e-4,
                                                             micro_batch_size=4))
        for kind, (cls, cfg, vendor) in kinds.items()
    }  # fmt: skip
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for number in range(1, cli.steps + 2):
        for kind, one in built.items():
            seconds = step(one, number)
            if number > 1:  # the first step warms up allocators and caches
                times[kind].append(seconds)
    base = statistics.median(times["stock verl"])
    for kind, values in times.items():
        median = statistics.median(values)
        print(f"{kind:30s} {1000 * median:7.1f} ms/step CPU  ({100 * (median / base - 1):+.1f}%)")
    observe = statistics.median(observe_time(built["+ monitor, no probe"], n) for n in range(1, 6))
    print(f"{'driver observe_batch alone':30s} {1000 * observe:7.1f} ms/step CPU")


if __name__ == "__main__":
    main()
