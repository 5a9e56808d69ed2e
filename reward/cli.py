"""``rlhf reward train`` and ``rlhf reward eval``; light at import (heavy imports inside the runs)."""

from __future__ import annotations

import argparse

from rlhf.config import add_config_flags, config_from_args

from reward.config import RewardEvalConfig, RewardTrainConfig


def register(subparsers) -> None:
    reward = subparsers.add_parser("reward", help="train and evaluate the reward model")
    sub = reward.add_subparsers(dest="reward_command", metavar="ACTION", required=True)

    train = sub.add_parser(
        "train", help="train a reward model on preference data (export folder or TRL dataset)",
        description="Train a reward model (pairwise or K-wise, full or LoRA). Works alone or under "
                    "'accelerate launch -m reward.train' with the configs in configs/accelerate/.",
    )
    add_config_flags(train, RewardTrainConfig, default_config=None)
    train.set_defaults(run=_run_train)

    ev = sub.add_parser(
        "eval", help="held-out accuracy, per reviewer, calibration, margins of a reward checkpoint",
        description="rlhf reward eval CHECKPOINT DATASET [flags], or every field from a YAML file with --config.",
    )
    # The two positionals are the config's checkpoint and dataset fields (also settable as flags or in YAML).
    ev.add_argument("cfg:checkpoint", nargs="?", default=argparse.SUPPRESS, metavar="CHECKPOINT",
                    help="reward model directory written by 'rlhf reward train'")
    ev.add_argument("cfg:dataset", nargs="?", default=argparse.SUPPRESS, metavar="DATASET",
                    help="'rlhf app export' folder, datasets directory, .jsonl/.json or .parquet")
    add_config_flags(ev, RewardEvalConfig, default_config=None)
    ev.set_defaults(run=_run_eval)


def _run_train(args) -> int:
    from reward.train import train

    train(config_from_args(RewardTrainConfig, args))
    return 0


def _run_eval(args) -> int:
    from reward.evaluate import run_eval

    return run_eval(config_from_args(RewardEvalConfig, args))
