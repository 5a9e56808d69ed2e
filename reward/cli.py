"""``rlhf reward train`` and ``rlhf reward eval``; light at import (heavy imports inside the runs)."""

from __future__ import annotations

import argparse

from rlhf.config import add_config_flags, config_from_args

from reward.config import RewardConfig


def register(subparsers) -> None:
    reward = subparsers.add_parser("reward", help="train and evaluate the reward model")
    sub = reward.add_subparsers(dest="reward_command", metavar="ACTION", required=True)

    train = sub.add_parser(
        "train", help="train a reward model on preference data (export folder or TRL dataset)",
        description="Train a reward model (pairwise or K-wise, full or LoRA). Works alone or under "
                    "'accelerate launch -m reward.train' with the configs in configs/accelerate/.",
    )
    add_config_flags(train, RewardConfig, default_config=None)
    train.set_defaults(run=_run_train)

    ev = sub.add_parser(
        "eval", help="held-out accuracy, per reviewer, calibration, margins of a reward checkpoint",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ev.add_argument("checkpoint", help="reward model directory written by 'rlhf reward train'")
    ev.add_argument("dataset", help="'rlhf app export' folder, datasets directory, .jsonl/.json or .parquet")
    ev.add_argument("--split", choices=("test", "train", "all"), default="test", help="which split to score")
    ev.add_argument("--test-fraction", type=float, default=0.1,
                    help="held-out share of prompts when the data has no split (same hash as training)")
    ev.add_argument("--max-length", type=int, default=None,
                    help="longer replies are left out, counted (default: the checkpoint's training max_length)")
    ev.add_argument("--batch-size", type=int, default=16, help="replies per forward pass")
    ev.add_argument("--output", default=None, help="where eval.json and plots go (default: CHECKPOINT/eval)")
    ev.set_defaults(run=_run_eval)


def _run_train(args) -> int:
    from reward.train import train

    train(config_from_args(RewardConfig, args))
    return 0


def _run_eval(args) -> int:
    from reward.evaluate import run_eval

    return run_eval(args)
