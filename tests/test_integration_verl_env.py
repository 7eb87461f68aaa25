"""Runs the verl plugin tests (tests/test_integration_verl.py and test_integration_verl_monitor.py)
inside .venv-verl (verl 0.9.1 cannot share the main env).

verl pins transformers < 5.11; the main environment has a newer one, so the verl tests live in
their own environment built by `scripts/setup-verl-env.sh`. Without it this test is skipped and
says how to build it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERL_PYTHON = ROOT / os.environ.get("VERL_VENV", ".venv-verl") / "bin" / "python"
VERL_TEST_FILES = ("test_integration_verl.py", "test_integration_verl_monitor.py")


@pytest.mark.slow
def test_verl_plugin_tests_pass_inside_the_verl_environment():
    if not VERL_PYTHON.exists():
        pytest.skip(
            f"{VERL_PYTHON.parent.parent.name} is absent: build it with "
            "`bash scripts/setup-verl-env.sh` to run the verl plugin tests"
        )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [
            str(VERL_PYTHON),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *(str(ROOT / "tests" / name) for name in VERL_TEST_FILES),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
