"""Progress that suits a terminal and a log file, and the summary a training run ends with.

    progress = Progress(300, desc="train")     # tqdm on a terminal; plain lines in a log file
    progress.update({"reward/mean": 0.4})      # once per step
    progress.close()

On a terminal (the stream is a TTY) it is a tqdm bar that stays on screen at N/N when closed.
Anywhere else (a pipe, a file, CI) it writes one plain line about every twentieth of the run
and at most every `PLAIN_EVERY_S` seconds, plus the first and last: no carriage returns.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TextIO

PLAIN_LINES = 20
"""A non-terminal run writes about this many progress lines (and the first and the last)."""
PLAIN_EVERY_S = 60.0
"""...and one at least this often when steps are slow."""


def _clock(seconds: float) -> str:
    """1:05, 1:02:03."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _shown(metrics: dict) -> str:
    """'reward 0.43  entropy 0.62': each metric's first name part and 3 significant digits."""
    return "  ".join(f"{k.split('/')[0]} {float(v):.3g}" for k, v in metrics.items())


class Progress:
    """Steps (or prompts) done out of `total`; silent when not `enabled`.

    `stream` defaults to stderr; `unit` names what is counted ("steps", "prompts").
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        *,
        enabled: bool = True,
        desc: str = "",
        unit: str = "steps",
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.done, self.desc, self.unit = total, initial, desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled and total > initial
        self.bar, self.metrics = None, {}
        self.started = self.last_line = time.monotonic()
        self.start_done = initial
        self.every = max(1, math.ceil((total - initial) / PLAIN_LINES))
        if self.enabled and _is_terminal(self.stream):
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional: plain lines instead
                return
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit.rstrip("s") or "it",
                            file=self.stream, leave=True, dynamic_ncols=True)  # fmt: skip

    def update(self, metrics: dict | None = None, n: int = 1) -> None:
        if not self.enabled:
            return
        self.done += n
        self.metrics = dict(metrics or {})
        if self.bar is not None:
            if self.metrics:
                self.bar.set_postfix_str(_shown(self.metrics), refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        first = self.done - n == self.start_done
        if (first or self.done >= self.total or self.done % self.every == 0
                or now - self.last_line >= PLAIN_EVERY_S):  # fmt: skip
            self._line(now)

    def _line(self, now: float) -> None:
        self.last_line = now
        elapsed = now - self.started
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        left = f"  ~{_clock((self.total - self.done) / rate)} left" if rate > 0 else ""
        share = 100.0 * self.done / self.total if self.total else 100.0
        parts = [f"[{self.desc}] {self.done}/{self.total} {self.unit} {share:3.0f}%",
                 f"{_clock(elapsed)} elapsed{left}"]  # fmt: skip
        if self.metrics:
            parts.append(_shown(self.metrics))
        print("  ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.refresh()  # the bar's last state, N/N, stays on screen
            self.bar.close()
            self.bar = None

    def write(self, line: str) -> None:
        """Print a line without breaking the bar (tqdm.write on a terminal)."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def run_summary(
    run_dir: Path,
    *,
    steps: tuple[int, int],
    elapsed_s: float,
    first: dict,
    last: dict,
    evaluation: dict | None,
    notes: list[str],
) -> list[str]:
    """The lines a training run ends with: steps and time, reward and entropy at the start and
    the end (`first` / `last`: {name: value}), the held-out result, warnings' counts, the files.
    """
    start, end = steps
    done = end - start
    per_step = f" ({elapsed_s / done:.2f} s/step)" if done else ""
    lines = [f"trained steps {start + 1}-{end} of {end} in {_clock(elapsed_s)}{per_step}"
             if done else f"no new step (the run was at step {end})"]  # fmt: skip
    for label, key in (("reward", "reward/mean"), ("entropy", "entropy/mean")):
        if key in first and key in last:
            lines.append(
                f"  {label:8s}{first[key]:.3f} at the first step, {last[key]:.3f} at the last"
            )
    if evaluation:
        k = evaluation.get("k")
        avg, passed = evaluation.get("avg@k", {}), evaluation.get("pass@k", {})
        held = [f"avg@{k} {avg[str(k)]:.3f}" if str(k) in avg else "",
                f"pass@{k} {passed[str(k)]:.3f}" if str(k) in passed else "",
                f"greedy {evaluation['greedy_acc']:.3f}" if "greedy_acc" in evaluation else ""]  # fmt: skip
        lines.append(f"  held-out at step {evaluation.get('step', end)} "
                     f"({evaluation.get('num_prompts', '?')} prompts): "
                     + "  ".join(h for h in held if h))  # fmt: skip
    lines += [f"  note: {note}" for note in notes]
    files = [name for name in ("metrics.jsonl", "eval.jsonl", "tb") if (run_dir / name).exists()]
    checkpoint = run_dir / "checkpoints" / f"step-{end}"
    if checkpoint.exists():
        files.append(f"checkpoints/step-{end}")
    lines.append(f"  files: {run_dir}/ ({', '.join(files)}); "
                 f"report: entropy-dynamics report {run_dir}")  # fmt: skip
    return lines
