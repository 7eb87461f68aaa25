#!/usr/bin/env bash
# Build .venv-verl: verl 0.9.1 beside entropy-dynamics, for tests/test_integration_verl.py.
#
#   bash scripts/setup-verl-env.sh            # then: .venv-verl/bin/python -m pytest tests/test_integration_verl.py
#
# verl 0.9.1 pins transformers < 5.11 (the main .venv has 5.23) and pulls GPU engines, vLLM and
# Ray's full stack. We install it with --no-deps and add only what its policy-loss registry
# (verl.trainer.ppo.core_algos) and its v1 trainer registry (verl.trainer.ppo.v1) import,
# found by importing them until no module is missing. About 1.8 GB, mostly torch and ray.
# On success it touches $VENV/.stamp, the file `make verl-env` / `make test-verl` depend on, so
# a run of this script (directly or through make) is not repeated until its inputs change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VERL_VENV:-.venv-verl}
TORCH_SPEC=${TORCH_SPEC:--c constraints.txt torch==2.13.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# shellcheck disable=SC2086
[ -z "$TORCH_SPEC" ] || $PIP install -q $TORCH_SPEC
$PIP install -q --no-deps verl==0.9.1
$PIP install -q -c constraints.txt \
    "transformers>=5.5.3,<5.11,!=5.6.0" "tensordict>=0.8,<=0.10.0,!=0.9.0" \
    packaging numpy ray omegaconf hydra-core codetiming orjson \
    "TransferQueue>=0.1.10" pillow datasets cachetools uvicorn fastapi torchdata peft \
    pytest pytest-timeout
$PIP install -q --no-deps -e .
# the same check the tests start with: both registries import
"$VENV/bin/python" -W ignore -c "import verl.trainer.ppo.core_algos, verl.trainer.ppo.v1" 2>/dev/null
touch "$VENV/.stamp"
echo "verl environment ready: $VENV"
