"""verl custom reward for the examples/verl job: the reasoning-gym task's own score_answer.

verl calls `compute_score(data_source, solution_str, ground_truth, extra_info)` per response
(config: reward.custom_reward_function.path / name). The answer is the text inside the last
<answer></answer>; a response without one scores 0.
"""

from __future__ import annotations

import json
import re

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    import reasoning_gym

    found = ANSWER.findall(solution_str)
    if not found:
        return 0.0
    entry = json.loads(extra_info["entry"])
    score = reasoning_gym.get_score_answer_fn(entry["metadata"]["source_dataset"])
    return float(score(found[-1].strip(), entry))
