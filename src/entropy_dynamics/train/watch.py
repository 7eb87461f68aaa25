"""Warnings that need a run's history: a filter idle for many steps, steps with no signal.

    watch = RunWatch(method, no_drop_steps=20)
    watch.observe(step, batch, plan.metrics, rewards=rewards)   # every step, after the plan
    watch.summary()                                              # lines for the final summary

Each condition warns once per run (the first time it holds), and `summary` counts the steps
where it held. Used by our loop and the TRL adapter; the threshold a warning names comes from
`methods.thresholds.drop_share_threshold`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from entropy_dynamics.distributed import global_sum
from entropy_dynamics.methods import TokenBatch
from entropy_dynamics.methods.thresholds import drop_share_threshold
from entropy_dynamics.train.logging import warn

NO_DROP_STEPS = 20
"""A filter that dropped no token in this many steps in a row is reported (0: never)."""

ZERO_REWARD, ZERO_ADVANTAGE = "zero_reward", "zero_advantage"


def _default_warn(message: str) -> None:
    warn(message)


class RunWatch:
    """Tracks, step by step, the conditions under which training silently does nothing.

    - a filter (`clip_b`, `clip_v`, ...) whose `<name>/frac_dropped` was 0 for `no_drop_steps`
      steps in a row: warned once, with the batch's token count and the `mu` that would have
      dropped the share the filter is set to drop;
    - a step whose rewards are all 0 (nothing solved), or whose advantages are all 0 (every
      group scored alike): warned once each; the step changes the policy only through a
      regulariser.
    `warn(message)` prints (default: `train.logging.warn`); `group`: the process group the
    batch is spread over (batch-global checks).
    """

    def __init__(
        self,
        method,
        *,
        no_drop_steps: int = NO_DROP_STEPS,
        warn: Callable[[str], None] | None = None,
        group=None,
    ) -> None:
        if (
            isinstance(no_drop_steps, bool)
            or not isinstance(no_drop_steps, int)
            or no_drop_steps < 0
        ):
            raise ValueError(
                f"no_drop_steps must be an int >= 0 (0: never warn), got {no_drop_steps!r}"
            )
        self.filters = {part.name: part for part in method.filters}
        self.no_drop_steps = no_drop_steps
        self.warn = warn or _default_warn
        self.group = group
        self.idle = dict.fromkeys(self.filters, 0)  # steps in a row without a drop
        self.counts = {ZERO_REWARD: 0, ZERO_ADVANTAGE: 0, **{name: 0 for name in self.filters}}
        self.steps = 0
        self.warned: set[str] = set()

    def observe(
        self,
        step: int,
        batch: TokenBatch,
        plan_metrics: dict[str, Tensor | float],
        *,
        rewards: Tensor | None = None,
        all_rewards_zero: bool | None = None,
    ) -> None:
        """Record one step: its batch, the plan's metrics and its rewards `[B]` (or, where only
        the batch's reward statistics are known, `all_rewards_zero`)."""
        self.steps += 1
        if all_rewards_zero is None and rewards is not None:
            all_rewards_zero = int(global_sum((rewards != 0).sum(), group=self.group)) == 0
        valid = int(global_sum(batch.mask.sum(), group=self.group))
        moving = int(global_sum(((batch.advantages != 0) & batch.mask).sum(), group=self.group))
        if all_rewards_zero:
            self._zero(ZERO_REWARD, step, f"step {step}: every reward is 0, so every advantage is 0 "
                       "and the step leaves the policy as it was (a regulariser aside); the policy "
                       "never solves the task: warm-start it (model.sft_steps), give it more "
                       "tokens (rollout.max_new_tokens) or use an easier task")  # fmt: skip
        elif moving == 0 and valid > 0:
            self._zero(ZERO_ADVANTAGE, step, f"step {step}: every advantage is 0 (the responses "
                       "to each prompt all scored alike), so the step leaves the policy as it was "
                       "(a regulariser aside); raise rollout.group_size or "
                       "rollout.temperature, or use a task of middling difficulty")  # fmt: skip
        for name, part in self.filters.items():
            dropped = plan_metrics.get(f"{name}/frac_dropped")
            if dropped is None:
                continue
            if float(dropped) > 0:
                self.idle[name] = 0
                continue
            self.idle[name] += 1
            self.counts[name] += 1
            if (
                self.no_drop_steps
                and self.idle[name] == self.no_drop_steps
                and name not in self.warned
            ):
                self.warned.add(name)
                self.warn(_no_drop_message(part, batch, step, self.idle[name], group=self.group))

    def _zero(self, condition: str, step: int, message: str) -> None:
        self.counts[condition] += 1
        if condition not in self.warned:
            self.warned.add(condition)
            self.warn(f"{message} (warned once; the final summary counts such steps)")

    def summary(self) -> list[str]:
        """One line per condition that held at some step, e.g. 'clip_b dropped nothing at 30 of 30 steps'."""
        lines = []
        for condition, what in ((ZERO_REWARD, "every reward was 0"),
                                (ZERO_ADVANTAGE, "every advantage was 0")):  # fmt: skip
            if self.counts[condition]:
                lines.append(f"{what} at {self.counts[condition]} of {self.steps} steps")
        for name in self.filters:
            if self.counts[name]:
                lines.append(f"{name} dropped nothing at {self.counts[name]} of {self.steps} steps")
        return lines


@torch.no_grad()
def _no_drop_message(part, batch: TokenBatch, step: int, idle: int, *, group=None) -> str:
    head = f"{part.name} has dropped no token for {idle} steps in a row (step {step})"
    found = drop_share_threshold(part, batch, group=group)
    if found is None:
        valid = int(global_sum(batch.mask.sum(), group=group))
        return f"{head}; the batch has {valid} valid tokens; check its settings ({part!r})"
    candidates = {"clip_b": "with A < 0", "clip_v": "with A <= 0"}[part.name]
    if part.variant != "released":
        candidates = "in all"
    needed = found["mu_needed"]
    reach = (f"this batch reaches that only with mu below {needed:.3g}" if needed == needed
             else "this batch has no token it could drop")  # fmt: skip
    return (
        f"{head}: the batch has {found['tokens']} valid tokens, {found['candidates']} "
        f"{candidates} it may drop; mu={found['mu']:g} is set to drop {found['share']:.2g} of "
        f"them ({found['drop']} token{'s' if found['drop'] != 1 else ''} at least), and {reach}. "
        f"With few tokens per step such a filter is idle by design; lower mu to see it act, or "
        "train on longer responses / larger batches (docs/training.md, 'Warnings')"
    )
