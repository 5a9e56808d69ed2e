#!/usr/bin/env bash
# PPO over several machines with DeepSpeed ZeRO-2. Run the same command on every machine, changing
# only MACHINE_RANK (0 on the main machine). The run directory must be on a filesystem all machines
# share (each process writes its own checkpoint shard there).
#   MAIN_IP=10.0.0.1 NUM_MACHINES=2 NUM_PROCESSES=16 MACHINE_RANK=0 scripts/ppo_multi_node.sh \
#       --config configs/ppo/default.yaml --reward-model runs/reward --output-dir /shared/runs/ppo
# NUM_PROCESSES counts processes over all machines (2 machines x 8 GPUs = 16).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MACHINE_RANK:?set MACHINE_RANK (0 on the main machine)}"
MAIN_IP="${MAIN_IP:-127.0.0.1}"; MAIN_PORT="${MAIN_PORT:-29555}"
NUM_MACHINES="${NUM_MACHINES:-2}"; NUM_PROCESSES="${NUM_PROCESSES:-$NUM_MACHINES}"
if ! command -v nvidia-smi >/dev/null 2>&1; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
exec "$PY" -m accelerate.commands.launch --config_file configs/accelerate/multinode_zero2.yaml \
  --num_machines "$NUM_MACHINES" --num_processes "$NUM_PROCESSES" --machine_rank "$MACHINE_RANK" \
  --main_process_ip "$MAIN_IP" --main_process_port "$MAIN_PORT" \
  -m rlhf.cli ppo "$@"
