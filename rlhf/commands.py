"""Core subcommands: ``rlhf models prepare``, ``rlhf generate``, ``rlhf doctor``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import Field

from rlhf.config import Config, add_config_flags, config_from_args, save_resolved
from rlhf.errors import UserError


class GenerateConfig(Config):
    """``rlhf generate``: replies from a policy for prompts from a file or the command line."""

    model: str = Field("bundled", description="model directory, HF id, or 'bundled' (SmolLM2-135M-Instruct)")
    prompts_file: str | None = Field(None, description="JSONL/TXT/JSON/datasets directory of prompts")
    prompts: list[str] = Field(default_factory=list, description="prompts given inline (YAML list)")
    num_replies: int = Field(1, ge=1, le=16, description="replies per prompt")
    max_new_tokens: int = Field(128, ge=1, le=4096, description="new tokens per reply at most")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling mass")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    seed: int = Field(0, description="random seed")
    dtype: str = Field("float32", description="float32, bfloat16, float16 or auto")
    output: str | None = Field(None, description="write replies as JSONL here (and config.yaml beside it)")


def register(subparsers) -> None:
    models = subparsers.add_parser("models", help="manage models (prepare the bundled default)")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    prep = msub.add_parser("prepare", help="convert the bundled GGUF model into a cached HF directory (idempotent)")
    prep.add_argument("--force", action="store_true", help="convert again even if the cache is complete")
    prep.set_defaults(run=run_prepare)

    gen = subparsers.add_parser(
        "generate", help="generate replies from a policy model",
        description="Generate replies for prompts (chat template applied, batched).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                     help="a prompt (repeat for several); added to the config's prompts")
    add_config_flags(gen, GenerateConfig)
    gen.set_defaults(run=run_generate)

    doc = subparsers.add_parser("doctor", help="report versions, threads, devices and optional tools")
    doc.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    doc.set_defaults(run=run_doctor)


def run_prepare(args) -> int:
    from rlhf.modeling import prepare_bundled_model

    path = prepare_bundled_model(force=args.force, progress=True)
    print(f"bundled model ready: {path}")
    return 0


def run_generate(args) -> int:
    config = config_from_args(GenerateConfig, args)
    prompts: list = list(config.prompts) + list(args.prompt)
    if config.prompts_file:
        from rlhf.prompts import read_prompts

        prompts = read_prompts(config.prompts_file) + prompts
    if not prompts:
        raise UserError("no prompts: give --prompt TEXT, --prompts-file FILE, or 'prompts' in the config")
    if config.output:
        out = Path(config.output)
        if out.is_dir():
            raise UserError(f"{out}: output must be a file path, not a directory")

    from rlhf.generation import SamplingSettings, generate_replies
    from rlhf.modeling import load_policy, load_tokenizer

    tokenizer = load_tokenizer(config.model, padding_side="left")
    model = load_policy(config.model, dtype=config.dtype)
    sampling = SamplingSettings(config.max_new_tokens, config.temperature, config.top_p, config.seed)
    replies = generate_replies(model, tokenizer, prompts, config.num_replies, sampling, config.batch_size)

    for prompt, answers in zip(prompts, replies):
        shown = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        print(f"\n>>> {shown}")
        for j, answer in enumerate(answers, start=1):
            print(f"[{j}] {answer}")
    if config.output:
        out = Path(config.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as handle:
            for prompt, answers in zip(prompts, replies):
                handle.write(json.dumps({"prompt": prompt, "replies": answers}, ensure_ascii=False) + "\n")
        save_resolved(config, out.parent, name=out.stem + ".config.yaml")
        print(f"\nwrote {len(prompts)} prompts x {config.num_replies} replies to {out}", file=sys.stderr)
    return 0


def run_doctor(args) -> int:
    from rlhf.doctor import collect, render

    report = collect()
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0
