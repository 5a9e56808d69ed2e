"""``rlhf ppo`` and ``rlhf export``: registration only; the heavy work is imported when a command runs."""

from __future__ import annotations

import argparse

from rlhf.config import add_config_flags, config_from_args


def register(subparsers) -> None:
    from rlhf.ppo.config import PPORunConfig

    ppo = subparsers.add_parser(
        "ppo", help="fine-tune the policy against a reward model with TRL's PPO",
        description="PPO (TRL) on one CPU, or under 'accelerate launch' with DDP or DeepSpeed ZeRO-2/3.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ppo.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                     help="continue from the newest complete checkpoint of output_dir, or from CHECKPOINT")
    add_config_flags(ppo, PPORunConfig, default_config="configs/ppo/default.yaml")
    ppo.add_argument("--validate-only", action="store_true",
                     help="check the config and flags, print the resolved config, train nothing (exit 0 or 2)")
    ppo.set_defaults(run=run_ppo_command)

    exp = subparsers.add_parser(
        "export", help="write a policy run's aligned policy (ppo, grpo, rloo, dpo) as one Hugging Face model directory",
        description="Consolidate the newest checkpoint of RUN_DIR (ZeRO shards gathered, LoRA merged) into OUT_DIR "
                    "with tokenizer, generation config, model card and plots.",
    )
    exp.add_argument("run_dir", metavar="RUN_DIR", help="output_dir of an 'rlhf ppo|grpo|rloo|dpo' run")
    exp.add_argument("out_dir", metavar="OUT_DIR", help="where to write the model directory (must not exist)")
    exp.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: the newest complete one)")
    exp.add_argument("--adapter-only", action="store_true", help="write the LoRA adapter alone, not merged")
    exp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                     help="dtype of the written weights")
    exp.set_defaults(run=run_export_command)


def run_ppo_command(args) -> int:
    from rlhf.ppo.config import PPORunConfig

    config = config_from_args(PPORunConfig, args)
    if args.validate_only:
        print(config.model_dump_json())
        return 0
    from rlhf.ppo.trainer import run_ppo

    run_ppo(config, resume=args.resume)
    return 0


def run_export_command(args) -> int:
    from rlhf.export import export_run

    out = export_run(args.run_dir, args.out_dir, checkpoint=args.checkpoint, adapter_only=args.adapter_only,
                     dtype=args.dtype)
    print(f"exported: {out}")
    return 0
