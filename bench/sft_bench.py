"""SFT speed on the bundled model: TRL's stock SFTTrainer set-up against this project's default.

Every variant runs `rlhf sft`'s own trainer (rlhf/align/sft.py: TRL 1.12 SFTTrainer, prompt-completion
rows, loss on the reply tokens) in its own process, on the same demonstrations
(configs/sft/contact_centre_demos.jsonl), batch, number of updates and seed, changing one thing at a time:

  a_trl_stock     full fine-tuning in float32 at TRL's default learning rate 2e-5 (SFTConfig's defaults,
                  with bf16 and gradient checkpointing off as a CPU needs), padded micro-batches
  b_default       configs/sft/default.yaml but random batches: LoRA + bfloat16 autocast, LR 1e-3 (padded)
  lora            a LoRA adapter (r 16, alpha 32, every linear layer) at 1e-3: no gradients or AdamW state
                  for the frozen weights; an adapter wants a much larger step than full fine-tuning
  padding_free    each micro-batch laid end to end in one row with position ids restarting per
                  demonstration (TRL's padding_free): no pad tokens computed; transformers builds a
                  block-diagonal causal mask from the restarts for sdpa, so the loss is the padded one
                  (tests/align/test_sft.py); on a CPU the mask over the whole row costs more than the
                  padding it saves (measured 2026-11-30 under load, see the README), so it is off by default
  bf16_autocast   bfloat16 autocast for the forward and backward (the CPU's AMX units), full fine-tuning
  group_by_length micro-batches of demonstrations of similar length (transformers' LengthGroupedSampler),
                  full fine-tuning: fewer pad tokens computed for the same real tokens
  default_grouped configs/sft/default.yaml as shipped: b_default with group_by_length

TRL's BFD packing (rows filled up to max_length) is not used: within a micro-batch it is the same
padding-free layout, and across micro-batches it changes which demonstrations form an update.

Figures: training tokens per second (the real prompt + reply tokens TRL counts as seen, ``num_tokens``:
the attention mask's sum for padded batches, the row length for padding-free ones, so every variant
counts the same tokens for the same updates; over the wall time from the end of update 1 to the end
of the last, so loading and the first update's warm-up are left out), seconds per update, and the
held-out loss per reply token (float32, padded batches, the same held-out prompts) after the run beside
the loss before it: every variant sees the same demonstrations in the same order for the same number
of updates. Ratios are against a_trl_stock measured in the same invocation.

    .venv/bin/python bench/sft_bench.py [--updates 12] [--batch 8] [--variants a_trl_stock,b_default]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_STOCK = {"lora": {"enabled": False}, "bf16_autocast": False, "padding_free": False, "group_by_length": False,
          "learning_rate": 2e-5}
_DEFAULT_LR = 1e-3  # configs/sft/default.yaml's learning rate for the LoRA adapter
VARIANTS = {
    "a_trl_stock": _STOCK,
    "b_default": {"group_by_length": False},  # configs/sft/default.yaml with random batches
    "lora": {**_STOCK, "lora": {"enabled": True}, "learning_rate": _DEFAULT_LR},
    "padding_free": {**_STOCK, "padding_free": True},
    "bf16_autocast": {**_STOCK, "bf16_autocast": True},
    "group_by_length": {**_STOCK, "group_by_length": True},
    "default_grouped": {},  # configs/sft/default.yaml as shipped (group_by_length: true)
}


def child(name: str, args) -> dict:
    """One variant in this process: build the trainer, time the updates, measure held-out loss."""
    from transformers import TrainerCallback

    from rlhf.align.config import SFTRunConfig
    from rlhf.align.sft import build_trainer, heldout_loss
    from rlhf.config import load_config

    marks: list[tuple[float, float]] = []  # (time, cumulative tokens) at each update's log

    class Clock(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kwargs):
            if logs and "num_tokens" in logs:
                marks.append((time.perf_counter(), float(logs["num_tokens"])))

    overrides = {**VARIANTS[name], "output_dir": args.out, "total_updates": args.updates,
                 "per_device_batch_size": args.batch, "save_every": 10_000, "num_eval_prompts": 0, "seed": 0}
    config = load_config(SFTRunConfig, REPO / "configs" / "sft" / "default.yaml", overrides)
    trainer = build_trainer(config)
    trainer.add_callback(Clock())
    before = heldout_loss(trainer)
    trainer.train()
    after = heldout_loss(trainer)
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    return {"tokens_per_s": (n1 - n0) / (t1 - t0), "tokens": n1, "s_per_update": (t1 - t0) / (len(marks) - 1),
            "loss_before": before[0], "loss_after": after[0], "heldout_tokens": after[1],
            "lora": config.lora.enabled, "bf16_autocast": config.bf16_autocast, "learning_rate": config.learning_rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return 0

    results = {}
    for name in args.variants.split(","):
        with tempfile.TemporaryDirectory(prefix=f"sft-bench-{name}-") as out:
            cmd = [sys.executable, __file__, "--child", name, "--out", str(Path(out) / "run"), "--updates",
                   str(args.updates), "--batch", str(args.batch)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ))
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not found:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[name] = json.loads(found[-1][len("RESULT "):])
        r = results[name]  # each variant as it finishes: on a shared machine a long run may be cut short
        print(f"measured {name}: {r['tokens_per_s']:.0f} tokens/s, {r['s_per_update']:.2f} s/update, held-out loss "
              f"{r['loss_before']:.4f} -> {r['loss_after']:.4f}", file=sys.stderr, flush=True)

    base = results.get("a_trl_stock")
    print(f"SFT on the bundled SmolLM2-135M-Instruct, shipped demonstrations: batch {args.batch}, "
          f"{args.updates} updates, {os.environ.get('OMP_NUM_THREADS', 'default')} threads")
    print(f"{'variant':<15}{'tokens/s':>10}{'x stock':>9}{'tokens':>8}{'s/update':>10}{'lr':>9}"
          f"{'held-out loss before -> after':>32}")
    for name, r in results.items():
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "n/a"
        print(f"{name:<15}{r['tokens_per_s']:>10.0f}{ratio:>9}{r['tokens']:>8.0f}{r['s_per_update']:>10.2f}{r['learning_rate']:>9.0e}"
              f"{r['loss_before']:>20.4f} -> {r['loss_after']:.4f}")
    print(f"held-out loss: mean cross-entropy per reply token over {next(iter(results.values()))['heldout_tokens']} "
          f"tokens of held-out prompts, float32")
    print("reproduce: .venv/bin/python bench/sft_bench.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
