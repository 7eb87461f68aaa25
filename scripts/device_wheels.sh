#!/usr/bin/env bash
# The wheels that travel with scripts/device_check.sh to the borrowed GPU machine (torch, triton
# and transformers only, no network), so bench_gpu.py gets its TRL, verl and Liger rows:
#
#     bash scripts/device_wheels.sh         # -> .device-wheels/ (about 4.5 MB; carry that folder)
#
# Checked in a venv holding only torch, triton 3.6 / 3.9 and transformers 5.17: with these four
# wheels installed --no-deps, TRL's and Liger's kernels import, and verl's linear_cross_entropy
# imports through bench_gpu.py's kernels-only loader (verl's package __init__ needs Ray, whose
# wheel alone is over the 64 MiB a run may carry); omegaconf is what verl.utils imports.
# pytest, pluggy and iniconfig come along in case the machine has no pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .device-wheels
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest .device-wheels \
    trl==1.16.0 liger-kernel==0.8.5 verl==0.9.1 omegaconf==2.4.0 pytest pluggy iniconfig
ls -l .device-wheels
