"""The Triton kernels compile for NVIDIA GPUs (A100 sm_80, H100 / H200 sm_90) without a GPU.

The interpreter tests (test_token_stats_triton.py) never meet Triton's compiler. Here
scripts/triton_compile_check.py runs the public functions with `backend="triton"` and hands each
launch to Triton's own launcher binding and compiler, down to a cubin with the `ptxas` that
Triton's wheel ships, and checks each kernel's shared memory against the GPU's limit. It runs in
a fresh process (the interpreter must be off) with an empty Triton cache, so every kernel is
compiled by this run.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "triton_compile_check.py"
ARCHES = (80, 90)


def _script_cases() -> int:
    spec = importlib.util.spec_from_file_location("triton_compile_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return len(module._cases())


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"),
    reason="Triton's wheel ships ptxas for Linux x86_64 / aarch64 only",
)
def test_every_kernel_compiles_for_a100_and_h100(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    table = tmp_path / "table.md"
    args = [sys.executable, str(SCRIPT), "--arch", *map(str, ARCHES), "--out", str(table)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    rows = [line.split("|")[1:-1] for line in table.read_text().splitlines()[2:]]
    rows = [[cell.strip() for cell in row] for row in rows]
    assert rows and all(row[3] == "ok" for row in rows), table.read_text()
    assert {row[1] for row in rows} == {f"sm_{arch}" for arch in ARCHES}
    # each case launches one forward and one backward kernel
    assert len(rows) == 2 * _script_cases() * len(ARCHES)
    # Every kernel the module defines was built (a new kernel must get a case), with a cubin
    # that ptxas gave registers to.
    from entropy_dynamics import _token_stats_triton

    kernels = {
        name
        for name, value in vars(_token_stats_triton).items()
        if name.endswith("_kernel") and hasattr(value, "fn")
    }
    assert len(kernels) == 3 and {row[2] for row in rows} == kernels
    assert all(int(row[5]) > 0 for row in rows)
