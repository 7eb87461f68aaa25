"""Shared benchmark plumbing: one variant per fresh subprocess, best-of-N timing, peak extra RSS.

A bench script calls `main(description, variants, make_inputs, cases)`. The parent process
runs every case in a fresh child (`python SCRIPT --child CASE_JSON`), so each variant's peak
resident memory is its own. In the child, after the inputs exist, the kernel's peak-RSS mark is
reset (`/proc/self/clear_refs`, Linux) and the current RSS is the baseline: "peak extra" is
peak RSS minus that baseline, i.e. everything the variant allocated beyond its inputs.
Times are best of `--repeats`: wall clock and process CPU time (all threads); on a shared,
overloaded machine CPU time is the steadier of the two, so ratios are taken from it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

MiB = 1 << 20


@dataclass
class Result:
    wall_s: float
    cpu_s: float
    peak_extra_mib: float


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> float:
    """Reset the peak-RSS mark where the kernel allows it; return the current RSS in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        pass
    current = _status_kib("VmRSS")
    return (current or 0) / 1024


def peak_rss_mib() -> float:
    peak = _status_kib("VmHWM")
    if peak is None:  # not Linux: ru_maxrss is the lifetime peak (KiB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak // 1024 if sys.platform == "darwin" else peak
    return peak / 1024


def measure(run: Callable[[], object], repeats: int) -> Result:
    """Best-of-`repeats` wall and CPU time of `run()`, and the peak extra RSS over all runs."""
    base = reset_peak_rss()
    wall = cpu = float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        run()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return Result(wall, cpu, peak_rss_mib() - base)


def trl_step_timer(times: dict[str, list[float]]):
    """A TRL `TrainerCallback` appending each optimiser step's wall and CPU seconds to
    ``times["wall"]`` and ``times["cpu"]`` (transformers is imported only when it is made)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            times["wall"].append(time.perf_counter() - self.start[0])
            times["cpu"].append(time.process_time() - self.start[1])

    return StepTimer()


def run_child(script: str, case: dict, threads: int | None, timeout: float) -> Result | str:
    """Run one case in a fresh interpreter; return its Result or a short failure note."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    command = [sys.executable, script, "--child", json.dumps(case)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"failed (rc {done.returncode}): {tail[0][:120]}"
    result = Result(**json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"  {case} -> {result} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True
    )
    return result


def child_entry(case_json: str, run_case: Callable[[dict], Result]) -> None:
    print(json.dumps(asdict(run_case(json.loads(case_json)))))


def arg_parser(description: str) -> argparse.ArgumentParser:
    """The options every bench script shares; a script may add its own before parsing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per child")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def available_mib() -> float | None:
    """Memory the system can still give (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_line(threads: int | None = None) -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads or torch.get_num_threads()} threads, load average {load:.1f}"
    )


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
