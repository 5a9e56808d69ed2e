"""``rlhf reward train``, ``rlhf reward eval``, ``rlhf reward score`` and ``rlhf reward prioritise``; light at import (heavy imports
inside the runs)."""

from __future__ import annotations

import argparse

from rlhf.config import add_config_flags, config_from_args

from reward.config import RewardEvalConfig, RewardTrainConfig
from reward.prioritise import PrioritiseConfig
from reward.score import ScoreConfig


def register(subparsers) -> None:
    reward = subparsers.add_parser("reward", help="train and evaluate the reward model")
    sub = reward.add_subparsers(dest="reward_command", metavar="ACTION", required=True)

    train = sub.add_parser(
        "train", help="train a reward model on preference data (export folder or TRL dataset)",
        description="Train a reward model (pairwise or K-wise, full or LoRA). Works alone or under "
                    "'accelerate launch -m reward.train' with the configs in configs/accelerate/.",
    )
    add_config_flags(train, RewardTrainConfig, default_config=None)
    train.add_argument("--validate-only", action="store_true",
                       help="check the config and flags, print the resolved config, train nothing (exit 0 or 2)")
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

    score = sub.add_parser(
        "score", help="score the replies of an 'rlhf generate --output' file with a reward model",
        description="Reward and length in tokens of every reply, written as one JSON file.",
    )
    add_config_flags(score, ScoreConfig, default_config=None)
    score.set_defaults(run=_run_score)

    pri = sub.add_parser(
        "prioritise", help="what each open item's ranking would teach the reward model (rlhf app prioritise runs it)",
        description="An ensemble of probes on the rankings so far scores the open items (files in, JSON out).",
    )
    add_config_flags(pri, PrioritiseConfig, default_config=None)
    pri.set_defaults(run=_run_prioritise)


def _run_train(args) -> int:
    config = config_from_args(RewardTrainConfig, args)
    if args.validate_only:
        print(config.model_dump_json())
        return 0
    from reward.train import train

    train(config)
    return 0


def _run_eval(args) -> int:
    from reward.evaluate import run_eval

    return run_eval(config_from_args(RewardEvalConfig, args))


def _run_prioritise(args) -> int:
    from reward.prioritise import run_prioritise

    return run_prioritise(config_from_args(PrioritiseConfig, args))


def _run_score(args) -> int:
    from reward.score import run_score

    return run_score(config_from_args(ScoreConfig, args))
