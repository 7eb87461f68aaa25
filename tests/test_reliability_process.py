"""Faults of processes and disks: signals, killed trainers, verifier workers, full disks, and the
CLI's error contract in a real `entropy-dynamics` process."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from _reliability import assert_user_error, cli_process, row, run_cli, subprocess_env, train_args
from _reliability_tasks import ExitingDigitTask, calls_sys_exit, digit_fraction
from _train_fixtures import tiny_config
from entropy_dynamics import cli
from entropy_dynamics.tasks.isolated import IsolatedWorker
from entropy_dynamics.train import checkpoint as ckpt
from entropy_dynamics.train.logging import JsonlWriteError, append_jsonl, read_jsonl

LONG = ["steps=400", "logging.probe_every=0", "logging.checkpoint_every=1"]


def _wait_for(predicate, timeout_s: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _steps(run_dir) -> list[int]:
    return [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


# ------------------------------------------------------------------ signals and kill -9


def test_sigterm_checkpoints_like_ctrl_c(tmp_path):
    row("signal-sigterm", "SIGTERM to `entropy-dynamics train` mid-run", "checkpoint of the "
        "last finished step, message, exit 0; the metrics end at that step")  # fmt: skip
    run_dir = tmp_path / "run"
    child = cli_process(*train_args(run_dir, *LONG, "logging.checkpoint_every=1000"))
    _wait_for(lambda: len(_steps(run_dir)) >= 2 or child.poll() is not None, what="2 steps")
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "Traceback" not in err and "SIGTERM" in err and "checkpoint saved" in err
    assert int(ckpt.latest_checkpoint(run_dir).name.split("-")[1]) == _steps(run_dir)[-1]


_GROUP_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from _reliability_tasks import IsolatedDigitTask
from _train_fixtures import tiny_config
from entropy_dynamics.train.loop import TrainInterrupted, train
try:
    train(tiny_config({run_dir!r}, "steps=400", "logging.probe_every=0", "task.n_eval=0",
                      "logging.checkpoint_every=1000"), task=IsolatedDigitTask(delay_s=0.005))
except TrainInterrupted:  # raised after the checkpoint: a clean stop for this caller
    pass
"""


def test_ctrl_c_to_the_process_group_spares_the_verifier_worker(tmp_path):
    row("signal-sigint-group", "SIGINT to the whole process group (a terminal's Ctrl-C) while "
        "rewards are computed in a verifier worker", "checkpoint, exit 0; the worker ignores it: "
        "no reward was lost (reward/errors 0 in every step)")  # fmt: skip
    run_dir = tmp_path / "run"
    code = _GROUP_CHILD.format(tests=str(Path(__file__).parent), run_dir=str(run_dir))
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True,
                             env=subprocess_env(), start_new_session=True)  # fmt: skip
    _wait_for(lambda: len(_steps(run_dir)) >= 2 or child.poll() is not None, what="2 steps")
    os.killpg(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "checkpoint saved" in err and "Traceback" not in err
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows and all(r["reward/errors"] == 0 for r in rows)


_ORPHAN_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from _reliability_tasks import busy_in_c
from entropy_dynamics.tasks.isolated import IsolatedWorker
worker = IsolatedWorker(timeout_s=600)
worker.start()
print(worker._process.pid, flush=True)
worker.call(busy_in_c)
"""


def test_killed_trainer_takes_its_busy_verifier_worker_with_it():
    row(
        "worker-orphan",
        "kill -9 of the parent while its verifier worker runs C code (a huge sum holding the GIL)",
        "the worker exits within seconds (PR_SET_PDEATHSIG), no orphan",
    )
    code = _ORPHAN_CHILD.format(tests=str(Path(__file__).parent))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=subprocess_env())  # fmt: skip
    worker_pid = int(child.stdout.readline())
    time.sleep(0.5)  # the worker is now inside busy_in_c
    assert _alive(worker_pid)
    child.kill()
    child.wait()
    _wait_for(lambda: not _alive(worker_pid), timeout_s=10, what="the orphaned worker to exit")


def test_worker_ignores_sigint_and_contains_sys_exit():
    row(
        "worker-sigint",
        "SIGINT sent to the verifier worker during a call",
        "ignored: the call returns its value, no restart",
    )
    row(
        "worker-sys-exit",
        "a verifier calling sys.exit inside the worker",
        "an error for that call (RuntimeError naming SystemExit); the worker keeps serving",
    )
    worker = IsolatedWorker(timeout_s=10)
    try:
        worker.start()
        pid = worker._process.pid
        threading.Timer(0.2, os.kill, (pid, signal.SIGINT)).start()
        assert worker.call(digit_fraction, "a1b2", 0.6) == 0.5
        with pytest.raises(RuntimeError, match="SystemExit"):
            worker.call(calls_sys_exit)
        assert worker.call(digit_fraction, "12") == 1.0
        assert worker.starts == 1 and worker._process.pid == pid
    finally:
        worker.close()


def test_reward_function_calling_sys_exit_scores_zero_and_training_goes_on(tmp_path):
    row(
        "reward-sys-exit",
        "a reward function that calls sys.exit (in the trainer's process)",
        "contained: that reward is 0 and counted in reward/errors; the run finishes",
    )
    from entropy_dynamics.train.loop import train

    train(tiny_config(tmp_path / "run", "steps=2", "task.n_eval=0"), task=ExitingDigitTask())
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and sum(r["reward/errors"] for r in rows) > 0


def test_kill_9_at_a_random_moment_then_resume(tmp_path):
    row("kill-9-random", "kill -9 of `train` at a random moment (a checkpoint every step, so "
        "often during a checkpoint write), then `--resume`", "resume continues from the newest "
        "intact checkpoint; metrics contiguous, no torn line")  # fmt: skip
    run_dir = tmp_path / "run"
    child = cli_process(*train_args(run_dir, *LONG))
    target = random.Random().randint(1, 4)
    _wait_for(lambda: len(_steps(run_dir)) >= target or child.poll() is not None, what="steps")
    time.sleep(random.Random().uniform(0, 0.3))
    child.kill()
    child.wait()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, len(lines) + 1))
    total = len(lines) + 3  # whatever the kill hit, three steps beyond it
    resumed = cli_process(*train_args(run_dir, *LONG, f"steps={total}"), "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert _steps(run_dir) == list(range(1, total + 1))
    assert ckpt.latest_checkpoint(run_dir).name == f"step-{total}"


# ------------------------------------------------------------------ configs that break a run


def test_exploding_weights_stop_the_run_without_saving_them(tmp_path, capsys):
    row(
        "runtime-lr-1e30",
        "`optim.lr=1e30 optim.grad_clip=0` (legal, weights destroyed)",
        "warning at start, then the run stops at step 1: 'weights diverged', exit 1, nothing "
        "of them saved",
    )
    # weight decay makes the step destroy the weights whatever was sampled: an untrained model
    # may score 0 on every arithmetic prompt, and a zero gradient moves nothing under Adam
    code, _, err = run_cli(capsys, *train_args(tmp_path / "run", "steps=3", "optim.lr=1e30",
                           "optim.grad_clip=0", "optim.weight_decay=0.01",
                           "logging.checkpoint_every=1"))  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert "unusually large" in err and "weights diverged" in err and "optim.grad_clip" in err
    assert ckpt.list_checkpoints(tmp_path / "run") == []


def test_pointless_settings_warn_at_start(tmp_path, capsys):
    row(
        "runtime-group-size-1",
        "`rollout.group_size=1` (every advantage 0)",
        "a warning at start naming the field; the run is legal and finishes",
    )
    row("runtime-steps-0", "`steps=0`", "a warning: nothing will be trained")
    code, _, err = run_cli(capsys, *train_args(tmp_path / "a", "steps=1", "rollout.group_size=1"))
    assert code == 0 and "rollout.group_size=1" in err and "advantage is 0" in err
    code, _, err = run_cli(capsys, *train_args(tmp_path / "b", "steps=0"))
    assert code == 0 and "nothing will be trained" in err


# ------------------------------------------------------------------ disks


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only): a disk that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the RLIMIT_FSIZE test covers partial writes")
    path = tmp_path / "disk"
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"mount refused: {done.stderr.decode().strip()}")
    yield path
    subprocess.run(["umount", str(path)], check=False)


def _whole_records(path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_full_disk_never_tears_a_record(small_tmpfs):
    row("disk-full-jsonl", "metrics.jsonl on a full disk (a 64 KiB tmpfs; records of 3 KB "
        "straddle the last free page)", "JsonlWriteError 'No space left on device'; the file ends "
        "at its last whole record; appends resume once space is freed")  # fmt: skip
    path, record = small_tmpfs / "metrics.jsonl", {"pad": "x" * 3000}
    with pytest.raises(JsonlWriteError, match="No space left on device"):
        for step in range(1, 1000):
            append_jsonl(path, {"step": step, **record})
    written = _whole_records(path)
    assert [r["step"] for r in written] == list(range(1, len(written) + 1))
    path.write_text("".join(json.dumps(r) + "\n" for r in written[:-3]))  # free some space
    append_jsonl(path, {"step": "after"})
    assert _whole_records(path)[-1] == {"step": "after"}


def test_training_onto_a_full_disk_is_one_line(small_tmpfs, capsys):
    row(
        "disk-full-train",
        "`train` with its run directory on a full 64 KiB disk",
        "exit 2, one line naming the file and 'No space left on device'; no torn record",
    )
    run_dir = small_tmpfs / "run"
    code, _, err = run_cli(capsys, *train_args(run_dir, "steps=50", "logging.checkpoint_every=1"))
    assert_user_error(code, err, "No space left on device")
    if (run_dir / "metrics.jsonl").exists():
        _whole_records(run_dir / "metrics.jsonl")


_FSIZE_CHILD = """
import json, resource, signal, sys
from entropy_dynamics.train.logging import JsonlWriteError, append_jsonl
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
try:
    for step in range(1, 100):
        append_jsonl(sys.argv[1], {{"step": step, "pad": "x" * 3000}})
except JsonlWriteError as err:
    print(err)
"""


def test_a_partial_write_is_cut_back_to_the_record_boundary(tmp_path):
    row(
        "disk-fsize-partial-write",
        "a file size limit (RLIMIT_FSIZE 10 000 bytes): the kernel "
        "writes part of a record, then refuses",
        "JsonlWriteError; the partial record is cut off",
    )
    path = tmp_path / "metrics.jsonl"
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_FSIZE_CHILD).format(),
                          str(path)], capture_output=True, text=True, env=subprocess_env())  # fmt: skip
    assert "cannot append a record" in out.stdout and "File too large" in out.stdout, out
    assert [r["step"] for r in _whole_records(path)] == [1, 2, 3]


def test_a_torn_tail_is_cut_off_before_the_next_record(tmp_path):
    row(
        "jsonl-torn-tail",
        "metrics.jsonl ending in half a record (left by an older version)",
        "the next append cuts the fragment off: every line is whole",
    )
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "half')
    append_jsonl(path, {"step": 2})
    assert _whole_records(path) == [{"step": 1}, {"step": 2}]


def test_append_into_a_missing_directory_is_a_clear_error(tmp_path):
    row(
        "jsonl-missing-dir",
        "append_jsonl into a directory that does not exist",
        "JsonlWriteError naming the file",
    )
    with pytest.raises(JsonlWriteError, match=r"cannot open .*metrics.jsonl"):
        append_jsonl(tmp_path / "gone" / "metrics.jsonl", {"step": 1})


# ------------------------------------------------------------------ the CLI's error contract


def test_user_error_in_a_real_process_is_one_line_and_debug_shows_the_traceback(tmp_path):
    row(
        "cli-process-no-traceback",
        "`entropy-dynamics train --config missing.yaml` in a real process",
        "stderr is one line, exit 2",
    )
    row("cli-debug-traceback", "the same with --debug", "the traceback is shown")
    child = cli_process("train", "--config", tmp_path / "missing.yaml")
    _, err = child.communicate(timeout=120)
    assert child.returncode == 2 and err.strip().count("\n") == 0 and "not found" in err, err
    child = cli_process("train", "--debug", "--config", tmp_path / "missing.yaml")
    _, err = child.communicate(timeout=120)
    assert "Traceback" in err and "not found" in err


def test_internal_error_is_one_line_asking_for_a_report(capsys, monkeypatch):
    row("cli-internal-error", "a bug (TypeError) inside a command", "exit 1, one line naming the "
        "error and --debug; no traceback")  # fmt: skip

    def broken(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli, "_cmd_report", broken)
    code, _, err = run_cli(capsys, "report", "somewhere")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "internal error TypeError" in err and "--debug" in err


def test_long_messages_are_cut(capsys):
    row(
        "cli-long-message",
        "an error message of 1 MB (a huge value echoed back)",
        "cut to 600 characters with a note of the full length",
    )
    code, _, err = run_cli(capsys, "train", "x" * 1_000_000 + "=1")
    assert_user_error(code, err, "message cut: ")
    assert len(err) < 1000
