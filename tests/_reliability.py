"""Helpers for the reliability tests: the fault table's registry and the CLI's error contract.

Every row of the table in docs/reliability.md is a test case registered here with `row(...)`;
tests/test_reliability_table.py checks that the document and the registry list the same ids.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from _train_fixtures import TINY
from entropy_dynamics import cli

ROWS: dict[str, tuple[str, str]] = {}  # id -> (fault or bad input, result)

ARITHMETIC = [*TINY, "task.name=arithmetic", "task.options={digits: 1, terms: 2}", "task.n_eval=0"]
"""The tiny model on a small registered task: the CLI can train it in about a second."""


def row(case_id: str, fault: str, result: str) -> str:
    """Register one table row; returns its id (for pytest.param ids)."""
    assert case_id not in ROWS, f"duplicate fault id {case_id}"
    ROWS[case_id] = (fault, result)
    return case_id


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """The real CLI entry point in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> str:
    """Exit 2, no traceback, exactly one `error:` line (warnings may precede it) with `needles`."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, (code, err)
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def train_args(run_dir, *overrides: str) -> list[str]:
    return ["train", "--run-dir", str(run_dir), *ARITHMETIC, *overrides]


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def subprocess_env() -> dict:
    tests = str(Path(__file__).parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1")


def cli_process(*args: str, **kwargs) -> subprocess.Popen:
    """The real `entropy-dynamics` command in a child process (stderr piped, text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "entropy_dynamics.cli", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        **kwargs,
    )  # fmt: skip
