"""Which reward model generalises from about a hundred rankings? (issue 14, part R)

One candidate generation (the bundled model's replies to every shipped prompt, K = 4), then, per
rule of a suite of preferences nobody tuned for, scripted reviewers rank ~100 training prompts and
each method is scored on held-out prompts against the reviewers' (noisy) labels:

  lora_default  today's default: ``rlhf reward train --config configs/reward/default.yaml`` (real CLI)
  probe_last    K-wise Bradley-Terry linear probe on the frozen last-token hidden state of the last
                layer (what a ``*ForSequenceClassification`` score head reads: the probe IS a head)
  probe_*       the same on other features (mean-pooled, middle layer), L2 chosen on validation
  ensemble      mean of the standardised scores of the probes above
  lpft          probe_last as the head, then LoRA fine-tuning with early stopping on validation
                (LP-FT, Kumar et al. 2022)

Ceiling: how often the reviewers' labels agree with the noiseless rule on held-out pairs. Reported:
accuracy with a 95% bootstrap interval over prompts, the ceiling, the share of the distance from
chance to the ceiling closed, and wall time. Resumable: candidates, features and each (rule, method)
result are cached under --out.

    nice -n 10 .venv/bin/python bench/reward_generalisation.py            # the whole suite
    .venv/bin/python bench/reward_generalisation.py --rules vader,hash --methods probe_last
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT_FILES = ["configs/quickstart/train_prompts.jsonl", "configs/quickstart/heldout_prompts.jsonl",
                "configs/quickstart/concise_train_prompts.jsonl", "configs/quickstart/small_train_prompts.jsonl",
                "configs/quickstart/small_heldout_prompts.jsonl", "configs/prompts/support_questions.jsonl",
                "configs/prompts/support_demo.jsonl"]
K = 4
MAX_NEW_TOKENS = 48
TEMPERATURE = 0.8


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json(path: Path, value) -> None:
    """Atomic: an interrupted run never leaves half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# Stage 1: candidates (once for every rule)


def load_prompts() -> list[str]:
    from rlhf.prompts import read_prompts

    seen, out = set(), []
    for name in PROMPT_FILES:
        for p in read_prompts(REPO / name):
            if isinstance(p, str) and p not in seen:
                seen.add(p)
                out.append(p)
    return out


def candidates(out: Path) -> list[dict]:
    """[{prompt, completions[K]}] of the bundled model; generated once, then read from the cache."""
    path = out / "candidates.json"
    if path.exists():
        return json.loads(path.read_text())
    from rlhf.generation import SamplingSettings, generate_replies
    from rlhf.modeling import load_policy, load_tokenizer

    prompts = load_prompts()
    log(f"generating {K} replies to each of {len(prompts)} prompts ({MAX_NEW_TOKENS} new tokens)")
    started = time.perf_counter()
    model, tokenizer = load_policy("bundled"), load_tokenizer("bundled", padding_side="left")
    replies = generate_replies(model, tokenizer, prompts, K, SamplingSettings(MAX_NEW_TOKENS, TEMPERATURE, 0.95, 0),
                               batch_size=16)
    rows = [{"prompt": p, "completions": r} for p, r in zip(prompts, replies)]
    write_json(path, rows)
    log(f"candidates: {time.perf_counter() - started:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "reward_generalisation"))
    parser.add_argument("--stage", default="all", choices=["candidates", "all"])
    args = parser.parse_args(argv)
    from rlhf.runtime import apply_offline_env

    apply_offline_env()
    out = Path(args.out)
    rows = candidates(out)
    log(f"{len(rows)} prompts x {K} replies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
