"""Progress on a terminal and in a log file, the eval record per (step, k, checkpoint), --help."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

from entropy_dynamics.report.document import _summary_rows, common_k
from entropy_dynamics.report.runs import RunRecord
from entropy_dynamics.train.logging import put_eval_record, read_jsonl
from entropy_dynamics.train.progress import Progress


def test_plain_lines_in_a_log_file_end_at_n_of_n():
    stream = io.StringIO()
    progress = Progress(300, desc="train", stream=stream)
    for _ in range(300):
        progress.update({"reward/mean": 0.5, "entropy/mean": 0.25})
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert 15 <= len(lines) <= 22  # about twenty, not one per step
    assert lines[0].startswith("[train] 1/300 steps")
    assert lines[-1].startswith("[train] 300/300 steps 100%")
    assert lines[-1].endswith("reward 0.5  entropy 0.25")


def test_a_resumed_run_counts_from_its_step():
    stream = io.StringIO()
    progress = Progress(10, initial=8, desc="train", stream=stream)
    progress.update()
    progress.update()
    assert stream.getvalue().splitlines()[-1].startswith("[train] 10/10 steps")


def test_terminal_bar_ends_at_n_of_n():
    leader, follower = pty.openpty()
    os.set_blocking(leader, False)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    with os.fdopen(follower, "w") as terminal:
        progress = Progress(7, desc="train", stream=terminal)
        assert progress.bar is not None
        for _ in range(7):
            progress.update({"reward/mean": 1.0})
        progress.close()
        terminal.flush()
        text = os.read(leader, 1 << 16).decode(errors="replace")
    os.close(leader)
    shown = [line for line in text.replace("\r", "\n").split("\n") if line.strip()]
    assert "7/7" in shown[-1], shown[-3:]


def test_eval_records_replace_by_step_k_and_checkpoint(tmp_path):
    path = tmp_path / "eval.jsonl"
    put_eval_record(path, {"step": 10, "k": 8, "checkpoint": "step-10", "greedy_acc": 0.1})
    put_eval_record(path, {"step": 10, "k": 16, "checkpoint": "step-10", "greedy_acc": 0.2})
    put_eval_record(path, {"step": 10, "k": 16, "checkpoint": "step-10", "greedy_acc": 0.3})
    put_eval_record(path, {"step": 10, "k": 8, "greedy_acc": 0.4})  # an older record's key
    assert [(r["k"], r["greedy_acc"]) for r in read_jsonl(path)] == [(8, 0.4), (16, 0.3)]


def _run(name: str, *evals: dict) -> RunRecord:
    return RunRecord(name=name, path=name, config={}, metrics=[], evals=list(evals))


def _eval(step: int, n: int, value: float) -> dict:
    ks = [k for k in (1, 2, 4, 8, 16) if k <= n]
    return {"step": step, "k": n, "avg@k": dict.fromkeys(ks, value),
            "pass@k": {k: value + k / 100 for k in ks}}  # fmt: skip


def test_report_compares_runs_at_one_k():
    grpo = _run("grpo", _eval(300, 8, 0.5), _eval(300, 16, 0.52))  # the README's eval --k 16
    clip_b = _run("clip_b", _eval(100, 16, 0.1), _eval(300, 8, 0.6))
    assert common_k([grpo, clip_b]) == 8
    rows = _summary_rows([grpo, clip_b])
    assert [(row["k"], row["pass@k"]) for row in rows] == [(8, 0.52 + 0.08), (8, 0.6 + 0.08)]
    # no shared k: each run at its own largest, named in the k column
    rows = _summary_rows([_run("a", _eval(5, 2, 0.1)), _run("b", {**_eval(5, 4, 0.1),
                          "avg@k": {4: 0.1}, "pass@k": {4: 0.2}})])  # fmt: skip
    assert [row["k"] for row in rows] == [2, 4]


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys, time; t = time.perf_counter(); "
            "from entropy_dynamics.cli import build_parser; build_parser(); "
            "print(time.perf_counter() - t, 'torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, torch_loaded = out.stdout.split()
    assert torch_loaded == "False"
    assert float(seconds) < 1.0
