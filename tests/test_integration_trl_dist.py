"""Two CPU processes under `accelerate launch`: every rank drops exactly what one process would.

The test launches this file as a script on 2 CPU processes (gloo). Each rank saves, for every
generation batch, its TokenBatch rows, its keep mask and the plan's metrics. The test then plans
the concatenated batch (rank 0's rows, then rank 1's) in this single process and requires the
same keep mask and the same batch-global metrics.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

METHOD = "ppo + clip_b(mu=0.3) + clip_v(mu=1.0, max_frac=0.03)"


def _train_and_save(out_dir: Path) -> None:
    """Run on each rank: 2 GRPO steps with METHOD; save every generation batch's plan."""
    from datasets import Dataset

    from entropy_dynamics.integrations.trl import EntropyGRPOConfig, EntropyGRPOTrainer
    from entropy_dynamics.models import build_char_tokenizer, build_tiny_model

    class SavingTrainer(EntropyGRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            rank, index = self.accelerator.process_index, getattr(self, "_saved", 0)
            self._saved = index + 1
            torch.save(
                {
                    "batch": dataclasses.asdict(self.last_token_batch),
                    "keep": self.last_plan.keep,
                    "metrics": {k: float(v) for k, v in self.last_plan.metrics.items()},
                },
                out_dir / f"rank{rank}_gen{index}.pt",
            )
            return output

    def reward(completions, **kwargs):
        return [float(sum(map(ord, c)) % 7) for c in completions]

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(
        tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=1
    )
    args = EntropyGRPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        learning_rate=1e-2,
        seed=0,
        entropy_method=METHOD,
    )
    dataset = Dataset.from_dict({"prompt": [f"{i}+{2 * i}=" for i in range(32)]})
    SavingTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
    ).train()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_drop_exactly_what_one_process_drops_on_the_whole_batch(tmp_path):
    pytest.importorskip("trl")
    from entropy_dynamics import methods
    from entropy_dynamics.methods import TokenBatch

    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    # accelerate 1.15's `--cpu` starts ONE process; `--multi_gpu` starts 2 through torchrun, and
    # use_cpu=True in the config then makes accelerate initialise gloo on the CPU.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(_free_port()),
        __file__,
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    method = methods.build(METHOD)
    generations = sorted(tmp_path.glob("rank0_gen*.pt"))
    assert len(generations) == 2
    dropped = local_differs = 0
    for path in generations:
        ranks = [torch.load(path), torch.load(tmp_path / path.name.replace("rank0", "rank1"))]
        fields = {
            name: torch.cat([r["batch"][name] for r in ranks])
            for name in ranks[0]["batch"]
            if ranks[0]["batch"][name] is not None
        }
        whole = method.plan(TokenBatch(**fields))  # one process, the concatenated batch
        assert torch.equal(torch.cat([r["keep"] for r in ranks]), whole.keep)
        for name, value in whole.metrics.items():
            assert ranks[0]["metrics"][name] == pytest.approx(float(value), rel=1e-5, abs=1e-7)
            assert ranks[1]["metrics"][name] == ranks[0]["metrics"][name]
        dropped += int((whole.keep != TokenBatch(**fields).mask).sum())
        # rank 0's rows alone give other statistics, so the check above can tell them apart
        local = method.plan(TokenBatch(**ranks[0]["batch"]))
        local_differs += local.metrics["clip_b/s_std"] != whole.metrics["clip_b/s_std"]
    assert dropped > 0
    assert local_differs == len(generations)


if __name__ == "__main__":
    _train_and_save(Path(sys.argv[1]))
