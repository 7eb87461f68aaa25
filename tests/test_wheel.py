"""The package as a user installs it: a wheel in a fresh virtual environment outside the
repository runs `entropy-dynamics --help` and a small `entropy-dynamics demo` (its config is
package data, not a file of the checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo_outside_the_repository(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(dist), str(ROOT)])  # fmt: skip
    (wheel,) = dist.glob("entropy_dynamics-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    # The dependencies (torch, transformers, ...) come from this environment's site-packages,
    # appended after the wheel's: its .pth files (our editable install) are not processed.
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, ENTROPY_DYNAMICS_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    where = _run([str(python), "-c", "import entropy_dynamics, sys; print(entropy_dynamics.__file__)"],
                 cwd=work, env=env).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the checkout

    cli = str(venv / "bin" / "entropy-dynamics")
    assert "demo" in _run([cli, "--help"], cwd=work, env=env).stdout
    small = ["steps=2", "model.sft_steps=5", "task.n_eval=4", "logging.eval_k=2",
             "logging.eval_every=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
             "logging.probe_every=0", "logging.save_batch_every=0"]  # fmt: skip
    done = _run([cli, "demo", "--out", "out", *small, "--methods", "grpo=grpo"], cwd=work, env=env)
    assert "report:" in done.stdout
    assert (work / "out" / "summary.json").is_file() and (work / "out" / "report.md").is_file()
