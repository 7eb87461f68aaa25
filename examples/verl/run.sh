#!/usr/bin/env bash
# The examples/verl GPU job: GRPO, Clip_B or Clip_V with verl 0.9.1 + vLLM on one GPU.
#
#   bash examples/verl/run.sh clip_v [verl overrides...]      # grpo | clip_b | clip_v | monitor
#   bash examples/verl/run.sh clip_v trainer.use_v1=false     # verl's legacy trainer instead
#   bash examples/verl/run.sh monitor    # verl's own loss; our metrics only (entropy_monitor.yaml)
#
# The launcher takes verl.trainer.main_ppo's config and overrides: with trainer.use_v1=true (the
# configs' default) it is verl's own main (v1 trainer `entropy_sync`); with trainer.use_v1=false
# it runs verl's legacy TaskRunner, which then builds EntropyRayPPOTrainer.
#
# Needs a GPU environment with verl 0.9.1 and its full stack (vLLM, flash-attn, ray), this
# package installed (`pip install -e .`), reasoning_gym, and network (or a local model path in
# actor_rollout_ref.model.path). About 40 steps of 32 prompts x 8 responses, a few minutes each
# method on one 80 GB GPU with Qwen2.5-0.5B-Instruct (estimate: not run here, see docs/verl.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
METHOD=${1:?usage: run.sh grpo|clip_b|clip_v|monitor [overrides...]}
shift
export ED_VERL_DATA=${ED_VERL_DATA:-$HOME/data/entropy_dynamics}
export ED_VERL_EXAMPLES=$PWD/examples/verl
[ -f "$ED_VERL_DATA/train.parquet" ] || python examples/verl/make_data.py --out "$ED_VERL_DATA"
# the driver process imports the plugin too (verl's trainer registry resolves entropy_sync)
export VERL_USE_EXTERNAL_MODULES=entropy_dynamics.integrations.verl
export VERL_ENGINE_VENDOR=entropy_dynamics
python -m entropy_dynamics.integrations.verl_main --config-path="$PWD/examples/verl" \
    --config-name="entropy_$METHOD" "$@"
