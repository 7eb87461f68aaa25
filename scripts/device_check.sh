#!/usr/bin/env bash
# One GPU check for issues 12 and 17, prepared for a session that is lent the device machine:
#
#     device run: bash scripts/device_check.sh        (timeout_s 540; results in $OUT)
#
# The device machine has torch, triton and transformers but no network and none of our other
# dependencies installed, so the package runs from src/ (PYTHONPATH). Wheels of TRL, Liger,
# verl and pytest, which `bash scripts/device_wheels.sh` puts in .device-wheels/ (carry that
# folder: `carry: [".device-wheels"]`), are installed without dependencies, and bench_gpu.py
# adds their rows where they import. Each step has its own time limit and a failed
# step does not stop the next; every output lands in $OUT (default ./device-out).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-device-out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.cuda.is_available())" 2>&1
} | tee "$OUT/versions.txt"

for wheel in .device-wheels/*.whl; do
    [ -e "$wheel" ] && "$PY" -m pip install -q --no-deps --no-index "$wheel" >>"$OUT/versions.txt" 2>&1
done

# The Triton tests run the compiled kernels on CUDA (the interpreter only without it), and the
# GPU-marked ones run at all; the compiled CPU path's tests ride along (they need a C++ compiler).
if "$PY" -c "import pytest" 2>/dev/null; then
    timeout 200 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" \
        tests/test_token_stats_triton.py tests/test_token_stats.py tests/test_token_stats_grad.py \
        tests/test_token_stats_compiled.py >"$OUT/pytest.txt" 2>&1
    echo "pytest exit $?" | tee -a "$OUT/pytest.txt"
else
    echo "pytest is not installed on this machine: tests not run" | tee "$OUT/pytest.txt"
fi

# issue 12's table (ours-triton, ours-torch, ours-inductor, TRL / verl / Liger where they
# import) and issue 17's comparison of the inductor-generated kernel with the hand-written one.
timeout 300 "$PY" benchmarks/bench_gpu.py --repeats 10 >"$OUT/bench_gpu.md" 2>&1
echo "bench_gpu exit $?" | tee -a "$OUT/bench_gpu.md"
tail -n 60 "$OUT/bench_gpu.md"
