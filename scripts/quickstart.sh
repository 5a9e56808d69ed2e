#!/usr/bin/env bash
# The whole loop on one machine, offline, with the bundled model:
#   start the feedback app -> import prompts -> generate K candidates -> scripted reviewers rank them
#   -> export -> train the reward model -> PPO -> export the aligned checkpoint -> replies of base and
#   aligned to held-out prompts -> scripted reviewers judge them blind (A/B) -> REPORT.md
# A thin wrapper of `rlhf loop` (rlhf/pipeline.py), which runs each stage as the documented `rlhf`
# command, prints each one and keeps them in RUN_DIR/commands.sh, so every step can be re-run by hand.
#
#   scripts/quickstart.sh                       full loop, rule "fewer apologies" (configs/quickstart/full.yaml)
#   scripts/quickstart.sh --small               a few-minute smoke run (configs/quickstart/small.yaml)
#   scripts/quickstart.sh --config configs/quickstart/full_concise.yaml   the second rule (shorter replies)
#   options: --run-dir DIR (default runs/quickstart-<time>), --policy MODEL_DIR (instead of the bundled model),
#            --resume (with --run-dir: continue an interrupted run, finished stages are skipped),
#            --algorithm ppo|grpo|rloo|dpo (policy training; default ppo; dpo trains on the rankings directly),
#            --sft (supervised fine-tuning on the shipped demonstrations first; the SFT model starts the round)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=configs/quickstart/full.yaml
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --small) CONFIG=configs/quickstart/small.yaml ;;
    --config) CONFIG="$2"; shift ;;
    --run-dir) ARGS+=(--run-dir "$2"); shift ;;
    --policy) ARGS+=(--policy "$2"); shift ;;
    --algorithm) ARGS+=(--algorithm "$2"); shift ;;
    --resume) ARGS+=(--resume) ;;
    --sft) ARGS+=(--sft) ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see $0 --help)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
"$PY" -m rlhf.cli models prepare >/dev/null   # convert the bundled model once (no-op when cached)
exec "$PY" -m rlhf.cli loop --config "$CONFIG" "${ARGS[@]}"
