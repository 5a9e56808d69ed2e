#!/usr/bin/env bash
# PPO on every GPU of one machine (or N CPU processes on a GPU-less one) with DeepSpeed.
#   scripts/ppo_multi_gpu.sh [zero2|zero3|ddp] [NUM_PROCESSES] [rlhf ppo flags...]
# e.g. scripts/ppo_multi_gpu.sh zero2 8 --config configs/ppo/default.yaml --reward-model runs/reward
# Resume after a stop: the same command with --resume. Export: rlhf export RUN_DIR OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:-zero2}"; shift || true
NPROC="${1:-2}"; shift || true
case "$STAGE" in
  zero2) CONFIG=configs/accelerate/deepspeed_zero2.yaml ;;
  zero3) CONFIG=configs/accelerate/deepspeed_zero3.yaml ;;
  ddp)   CONFIG=configs/accelerate/ddp.yaml ;;
  *) echo "usage: $0 [zero2|zero3|ddp] [NUM_PROCESSES] [rlhf ppo flags...]" >&2; exit 2 ;;
esac
# On CPUs, one thread per process (two processes on two cores otherwise slow each other down).
if ! command -v nvidia-smi >/dev/null 2>&1; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
exec "$PY" -m accelerate.commands.launch --config_file "$CONFIG" --num_processes "$NPROC" \
  -m rlhf.cli ppo "$@"
