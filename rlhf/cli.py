"""The ``rlhf`` command: one composition root for every stage.

Each stage contributes a light module with ``register(subparsers)``; building the parser imports no
torch, trl, deepspeed or gradio, so ``rlhf --help`` is instant. The stages' heavy imports happen
inside the functions a subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rlhf.errors import UserError
from rlhf.runtime import apply_offline_env

# Stage modules, imported lazily in this order to build the subcommands.
COMMAND_MODULES = [
    "rlhf.commands",  # models prepare, generate, doctor
    "reward.cli",  # reward train, reward eval
    "feedback_app.cli",  # app serve/users/import/generate/export/backup, simulate
    "rlhf.ppo.cli",  # ppo, export
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf",
        description="Rankings from reviewers -> reward model -> PPO -> aligned checkpoint.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_offline_env()
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
