"""K-wise reward training against TRL's stock pairwise RewardTrainer, on the bundled model with LoRA.

Same rankings (K = 4, 6 pairs each, no ties), same sequences per step (8: 2 rankings in K-wise mode,
4 pairs in pairwise mode), same LoRA settings, learning rate and precision, one epoch each. Reported,
as ratios against the pairwise baseline measured in the same run:
  * pairs per second (pairs per step / median step time, first step left out) and peak resident memory;
  * held-out pairwise accuracy (prompts never trained on);
  * training FLOP/s (FlopCounterMode on one forward+backward step x steps / wall time) as a fraction
    of a 4096x4096 matmul's FLOP/s in the same dtype, measured in the same process;
  * with --bf16-steps N: the same two trainers for N steps under bfloat16 autocast (accelerate's
    mixed precision, which also works on CPU), against float32.

Every variant runs in its own subprocess, so peak memory is its own.

    .venv/bin/python bench/reward_bench.py                 # full run (about 15 min on 2 cores)
    .venv/bin/python bench/reward_bench.py --train-prompts 16 --test-prompts 8 --bf16-steps 4   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUALITY = ["excellent", "helpful", "unclear", "rude"]  # earlier is better: the planted preference
OPENERS = ["Thanks for reaching out.", "Hello there.", "Hi, and welcome.", "Good day."]
BODY = ("we looked at your account and the order history shows the package left the warehouse on "
        "Monday so it should arrive within the next few business days depending on your region").split()


def make_rankings(n_prompts: int, seed: int):
    from rlhf.schema import Ranking

    rng = random.Random(seed)
    out = []
    for p in range(n_prompts):
        prompt = f"Customer {seed}-{p}: my order #{rng.randint(1000, 9999)} has not arrived. What can I do?"
        replies = []
        for word in rng.sample(QUALITY, 4):
            start = rng.randint(0, 10)
            body = " ".join(BODY[start:start + 18])
            replies.append(f"{rng.choice(OPENERS)} This answer is {word}: {body}.")
        ranks = [QUALITY.index(r.split("This answer is ")[1].split(":")[0]) + 1 for r in replies]
        out.append(Ranking(prompt=prompt, completions=replies, ranks=ranks, reviewer="r1", ranking_id=p))
    return out


def matmul_flops_per_second(dtype_name: str, n: int = 4096, repeats: int = 5) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def run_variant(args) -> dict:
    """One trainer, in this (child) process: train, count FLOPs, evaluate held-out accuracy."""
    from rlhf.runtime import apply_offline_env

    apply_offline_env()
    import torch
    from datasets import Dataset
    from torch.utils.flop_counter import FlopCounterMode

    from reward.config import RewardTrainConfig
    from reward.data import _kwise_to_pairwise
    from reward.evaluate import ranking_metrics, score_rows
    from reward.train import build_trainer, trainer_args
    from rlhf.modeling import load_tokenizer

    train_rows = Dataset.from_list([r.kwise().to_row() for r in make_rankings(args.train_prompts, seed=1)])
    test_rows = [r.kwise().to_row() for r in make_rankings(args.test_prompts, seed=2)]
    bf16 = "bf16" in args.variant
    mode = args.variant.split("-")[0]
    config = RewardTrainConfig(
        model="bundled", mode=mode, output_dir=str(Path(args.workdir) / args.variant), bf16=bf16,
        batch_size=2 if mode == "kwise" else 8, learning_rate=args.lr, num_epochs=1, max_steps=args.max_steps,
        logging_steps=5, report_to=["none"], max_length=256, seed=0,
    )
    config.lora.enabled = True
    config.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]  # as the README's figures were measured
    config.batch_size = 2 if mode == "kwise" else 4  # 8 sequences per step either way
    tokenizer = load_tokenizer("bundled", padding_side="right")
    trainer, train_set, pairs_per_epoch = build_trainer(
        config, trainer_args(config, Path(config.output_dir)), train_rows, _kwise_to_pairwise(train_rows), tokenizer)

    # FLOPs of one training step (forward + backward), counted on a real batch before training.
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    with FlopCounterMode(display=False) as counter:
        with trainer.autocast_smart_context_manager():
            loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
    step_flops = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    trainer._metrics["train"].clear()

    # Per-step wall times; the first step (allocations, lazy init) is left out of the median.
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *a, **k):
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.started)

    timer = StepTimer()
    trainer.add_callback(timer)
    matmul_before = matmul_flops_per_second("bfloat16" if bf16 else "float32")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    matmul_after = matmul_flops_per_second("bfloat16" if bf16 else "float32")
    steps = trainer.state.global_step
    step_seconds = sorted(timer.times[1:] or timer.times)[len(timer.times[1:] or timer.times) // 2]
    pairs_per_step = 12 if mode == "kwise" else 4  # 6 pairs x 2 rankings, or 4 pairs, of 8 sequences

    result = {"variant": args.variant, "steps": steps, "seconds": seconds, "pairs": pairs_per_epoch,
              "pairs_per_second": pairs_per_step / step_seconds, "seconds_per_step": step_seconds,
              "step_times": timer.times, "step_flops": step_flops, "flops_per_second": step_flops / step_seconds,
              "matmul_flops_per_second": (matmul_before + matmul_after) / 2,
              "mixed_precision": str(trainer.accelerator.mixed_precision),
              "threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    if args.max_steps < 0:
        scores = score_rows(trainer.model, tokenizer, test_rows, 256, batch_size=16)
        metrics = ranking_metrics(test_rows, scores)
        result["held_out_accuracy"] = metrics["accuracy"]
        result["held_out_ci95"] = metrics["ci95_bootstrap_prompts"]
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def child(variant: str, args, max_steps: int, lr: float | None = None) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--train-prompts", str(args.train_prompts),
           "--test-prompts", str(args.test_prompts), "--lr", str(lr or args.lr), "--max-steps", str(max_steps),
           "--workdir", args.workdir]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {variant}: {result['steps']} steps in {result['seconds']:.0f} s", file=sys.stderr, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-prompts", type=int, default=96)
    parser.add_argument("--test-prompts", type=int, default=48)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--bf16-steps", type=int, default=12, help="steps of the bf16 comparison (0: skip)")
    parser.add_argument("--kwise-lr-scale", type=float, default=3.0,
                        help="also train K-wise with the learning rate times this (it takes 3x the pairs per "
                             "step, so 3x fewer steps per epoch; the usual linear scaling); 0: skip")
    parser.add_argument("--max-steps", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="/tmp/reward_bench")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return 0

    print(f"reward bench: bundled SmolLM2-135M + LoRA r16, K=4, {args.train_prompts} train / "
          f"{args.test_prompts} held-out prompts, 8 sequences per step, one epoch", file=sys.stderr)
    runs = {v: child(v, args, -1) for v in ("pairwise-fp32", "kwise-fp32")}
    if args.kwise_lr_scale:
        runs["kwise-fp32-scaled"] = child("kwise-fp32-scaled", args, -1, lr=args.lr * args.kwise_lr_scale)
    if args.bf16_steps:
        # float32 step times come from the full runs above (median step, first step left out).
        runs["pairwise-fp32-short"], runs["kwise-fp32-short"] = runs["pairwise-fp32"], runs["kwise-fp32"]
        for v in ("pairwise-bf16", "kwise-bf16"):
            runs[v + "-short"] = child(v, args, args.bf16_steps)

    base = runs["pairwise-fp32"]
    cols = [("K-wise", runs["kwise-fp32"])]
    if "kwise-fp32-scaled" in runs:
        cols.append((f"K-wise, lr x{args.kwise_lr_scale:g}", runs["kwise-fp32-scaled"]))
    for r in [base] + [c for _, c in cols]:
        r["acc_text"] = f"{r['held_out_accuracy']:.3f} [{r['held_out_ci95'][0]:.3f}, {r['held_out_ci95'][1]:.3f}]"

    def row(label, fmt, ratio=None):
        cells = [fmt(base)] + [fmt(c) + (f" ({ratio(c, base)})" if ratio else "") for _, c in cols]
        print(f"| {label} | " + " | ".join(cells) + " |")

    print(f"\n| float32, one epoch, lr {args.lr:g} unless said | pairwise (TRL stock) | "
          + " | ".join(name for name, _ in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    row("steps", lambda r: str(r["steps"]))
    row("pairs per second", lambda r: f"{r['pairs_per_second']:.2f}",
        lambda r, b: f"{r['pairs_per_second'] / b['pairs_per_second']:.2f}x")
    row("seconds per step", lambda r: f"{r['seconds_per_step']:.2f}",
        lambda r, b: f"{r['seconds_per_step'] / b['seconds_per_step']:.2f}x")
    row("peak RSS (GB)", lambda r: f"{r['peak_rss_gb']:.2f}", lambda r, b: f"{r['peak_rss_gb'] / b['peak_rss_gb']:.2f}x")
    row("held-out accuracy [95% CI]", lambda r: r["acc_text"],
        lambda r, b: f"{r['held_out_accuracy'] - b['held_out_accuracy']:+.3f}")
    row("training GFLOP/s", lambda r: f"{r['flops_per_second'] / 1e9:.1f}")
    row("... of a float32 4096^2 matmul in the same process",
        lambda r: f"{r['flops_per_second'] / r['matmul_flops_per_second']:.0%}")
    if args.bf16_steps:
        print(f"\n| median step (fp32: one epoch; bf16: {args.bf16_steps} steps) | pairwise fp32 | pairwise bf16 | "
              f"K-wise fp32 | K-wise bf16 |")
        print("|---|---|---|---|---|")
        names = ("pairwise-fp32-short", "pairwise-bf16-short", "kwise-fp32-short", "kwise-bf16-short")
        rows = [runs[n] for n in names]
        print("| seconds per step | " + " | ".join(f"{r['seconds_per_step']:.2f}" for r in rows) + " |")
        print("| pairs per second | " + " | ".join(f"{r['pairs_per_second']:.2f}" for r in rows) + " |")
        print("| peak RSS (GB) | " + " | ".join(f"{r['peak_rss_gb']:.2f}" for r in rows) + " |")
        print("| FLOP/s vs same-dtype matmul | " + " | ".join(
            f"{r['flops_per_second'] / r['matmul_flops_per_second']:.0%}" for r in rows) + " |")
        print("| matmul GFLOP/s (same dtype) | " + " | ".join(
            f"{r['matmul_flops_per_second'] / 1e9:.0f}" for r in rows) + " |")
        pw, kb = runs["pairwise-bf16-short"]["seconds_per_step"], runs["kwise-bf16-short"]["seconds_per_step"]
        print(f"bf16 autocast speed-up per step: pairwise "
              f"{runs['pairwise-fp32-short']['seconds_per_step'] / pw:.2f}x, K-wise "
              f"{runs['kwise-fp32-short']['seconds_per_step'] / kb:.2f}x "
              f"(accelerate mixed_precision={runs['kwise-bf16-short']['mixed_precision']})")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    (Path(args.workdir) / "results.json").write_text(json.dumps(runs, indent=2, default=str))
    loads = [r["load_average"][0] for r in runs.values()]
    print(f"\nload average during the runs: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores "
          f"(other jobs share this CPU; ratios are measured in the same run)")
    print(f"\nreproduce: .venv/bin/python bench/reward_bench.py --train-prompts {args.train_prompts} "
          f"--test-prompts {args.test_prompts} --lr {args.lr} --bf16-steps {args.bf16_steps} "
          f"--kwise-lr-scale {args.kwise_lr_scale:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
