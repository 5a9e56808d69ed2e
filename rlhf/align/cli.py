"""``rlhf grpo``, ``rlhf rloo``, ``rlhf dpo``, ``rlhf sft``: registration only; the heavy work is imported when a command runs.

One command per algorithm, like ``rlhf ppo``: each has its own typed config and defaults, and
``rlhf export`` turns any of their run directories into the same plain Hugging Face model directory.
"""

from __future__ import annotations

import argparse

from rlhf.config import add_config_flags, config_from_args

HELP = {
    "grpo": ("fine-tune the policy against a reward model with TRL's GRPO (groups of replies per prompt)",
             "GRPO (TRL GRPOTrainer): num_generations replies per prompt, advantages relative to the group, KL to "
             "the reference in the loss."),
    "rloo": ("fine-tune the policy against a reward model with TRL's RLOO (leave-one-out REINFORCE)",
             "RLOO (TRL RLOOTrainer): num_generations replies per prompt, each reply's baseline the mean reward of "
             "the others, KL to the reference subtracted from the reward."),
    "dpo": ("fine-tune the policy straight from the reviewers' preference pairs with TRL's DPO (no reward model)",
            "DPO (TRL DPOTrainer) on an 'rlhf app export' folder (K-wise rankings expanded to pairs, the reward "
            "model's prompt-level train/test split kept); the reference is the policy with its adapter off."),
    "sft": ("supervised fine-tuning on demonstrations (reviewers' replies, agents' reference replies) with TRL's SFT",
            "SFT (TRL SFTTrainer) on prompt-completion demonstrations, loss on the reply's tokens only; held-out "
            "loss before and after in metrics.json. Its exported model can start candidate generation, the reward "
            "model and the policy trainers."),
}


def register(subparsers) -> None:
    from rlhf.align.config import CONFIGS

    for name, cls in CONFIGS.items():
        short, long = HELP[name]
        parser = subparsers.add_parser(
            name, help=short, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            description=long + " One CPU, or under 'accelerate launch' with DDP or DeepSpeed ZeRO-2/3; "
                               "'rlhf export RUN_DIR OUT_DIR' writes the aligned model.",
        )
        parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                            help="continue from the newest complete checkpoint of output_dir, or from CHECKPOINT")
        add_config_flags(parser, cls, default_config=f"configs/{name}/default.yaml")
        parser.add_argument("--validate-only", action="store_true",
                            help="check the config and flags, print the resolved config, train nothing (exit 0 or 2)")
        parser.set_defaults(run=run_command, algorithm=name)


def run_command(args) -> int:
    from rlhf.align.config import CONFIGS, check_run_config
    from rlhf.runtime import world_size, zero_stage

    config = config_from_args(CONFIGS[args.algorithm], args)
    # The combinations an algorithm cannot use are refused here, before TRL or any model is imported.
    check_run_config(config, world_size(), zero_stage())
    if args.validate_only:
        print(config.model_dump_json())
        return 0
    if args.algorithm == "sft":
        from rlhf.align.demonstrations import load_checked

        if config.dp:  # DP-SGD per unit: settings it cannot use are refused before the demonstrations are read
            from rlhf.align.sft_dp import check_dp_config

            check_dp_config(config, args.resume)
        load_checked(config.data, config.test_fraction, config.policy, config.max_length)  # bad rows: before TRL
        if config.dp:
            from rlhf.align.sft_dp import run_sft_dp

            run_sft_dp(config, resume=args.resume)  # units and the privacy plan are checked before TRL loads
        else:
            from rlhf.align.sft import run_sft

            run_sft(config, resume=args.resume)
    elif args.algorithm == "dpo":
        from rlhf.align.dpo import run_dpo

        run_dpo(config, resume=args.resume)
    else:
        from rlhf.align.online import run_online

        run_online(config, resume=args.resume)
    return 0
