"""Write the examples/verl parquet files from a reasoning-gym task (verl's RL data format).

    .venv/bin/python examples/verl/make_data.py --out ~/data/entropy_dynamics   # then run.sh

Each row: `data_source`, `prompt` (chat messages), `ability`, `reward_model.ground_truth` and
`extra_info.entry` (the reasoning-gym entry as JSON, which `reward.py` scores with the task's own
`score_answer`). Needs `reasoning_gym` and `pandas` + `pyarrow` (the main .venv has them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

INSTRUCTION = "Give only the final answer inside <answer></answer>."


def rows(task: str, size: int, seed: int) -> list[dict]:
    import reasoning_gym

    out = []
    for index, entry in enumerate(reasoning_gym.create_dataset(task, size=size, seed=seed)):
        out.append({
            "data_source": f"reasoning_gym/{task}",
            "prompt": [{"role": "user", "content": f"{entry['question']}\n{INSTRUCTION}"}],
            "ability": "reasoning",
            "reward_model": {"style": "rule", "ground_truth": str(entry["answer"])},
            "extra_info": {"index": index, "entry": json.dumps(entry, default=str)},
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.home() / "data" / "entropy_dynamics")
    parser.add_argument("--task", default="basic_arithmetic")
    parser.add_argument("--train", type=int, default=2048)
    parser.add_argument("--test", type=int, default=256)
    args = parser.parse_args()
    import pandas as pd

    args.out.mkdir(parents=True, exist_ok=True)
    for split, size, seed in (("train", args.train, 1), ("test", args.test, 2)):
        path = args.out / f"{split}.parquet"
        pd.DataFrame(rows(args.task, size, seed)).to_parquet(path)
        print(f"{path}: {size} rows of {args.task}")


if __name__ == "__main__":
    main()
