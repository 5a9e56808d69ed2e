"""The ``rlhf`` command: one composition root for every stage.

Each stage contributes a light module with ``register(subparsers)``; building the parser imports no
torch, trl, deepspeed or gradio, so ``rlhf --help`` is instant. The stages' heavy imports happen
inside the functions a subcommand runs. This is the one core module that imports the ``reward`` and
``feedback_app`` packages (their registration modules only).
"""

from __future__ import annotations

import argparse
import sys

from rlhf.errors import UserError
from rlhf.runtime import apply_memory_setting, apply_offline_env, run_entry_point


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: ``import rlhf.cli`` stays cheap for tools that only need main().
    import feedback_app.cli
    import reward.cli
    import rlhf.align.cli
    import rlhf.commands
    import rlhf.pipeline
    import rlhf.ppo.cli

    parser = argparse.ArgumentParser(
        prog="rlhf",
        description="Rankings from reviewers -> reward model -> PPO -> aligned checkpoint.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    rlhf.commands.register(subparsers)  # models prepare, generate, doctor
    reward.cli.register(subparsers)  # reward train, reward eval, reward score
    feedback_app.cli.register(subparsers)  # app serve/users/import/generate/export/backup/ab, simulate
    rlhf.ppo.cli.register(subparsers)  # ppo, export
    rlhf.align.cli.register(subparsers)  # grpo, rloo, dpo, sft (exported by 'rlhf export' too)
    rlhf.pipeline.register(subparsers)  # loop: every stage above in order, with its report
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_offline_env()
    apply_memory_setting()  # no page faults for the tensors every update, step or batch allocates again
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


def entry() -> None:
    """The ``rlhf`` console script: as ``python -m rlhf.cli``, so ``accelerate launch $(which rlhf) ...``
    workers leave as ``run_entry_point`` says."""
    run_entry_point(main)


if __name__ == "__main__":
    run_entry_point(main)  # a launched worker skips native teardown, which could abort a finished run
