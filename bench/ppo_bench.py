"""PPO speed and memory on the bundled model: TRL's reference set-up against this project's default.

Every variant runs in its own process (so peak memory is its own) with the same prompts, rollout
batch, response length and seed, and changes one thing at a time from the baseline so each gain
names its cause:

  a_trl_reference   full fine-tuning, separate reference copy, float32 (TRL's PPO example set-up)
  lora_shared_ref   LoRA policy; the reference is the same weights with the adapter off
  bf16_autocast     bfloat16 autocast for the training forward/backward (the CPU's AMX units)
  bf16_rollouts     generation and the reference, value and reward passes in bfloat16 (the policy's
                    weights copied to bfloat16 once per rollout batch; output layers in float32)
  value_lora        the value model trained through a LoRA adapter + its score head (no AdamW state or
                    gradients for its backbone)
  freeze_gc         gc.freeze() before the loop: TRL's two gc.collect() calls per update skip the
                    half a million objects that imports and models created
  fast_decode       bf16_rollouts with rollouts sampled by rlhf.decode's loop (generation_backend: fast;
                    the other variants use transformers' generate())
  reply_logits      the policy's LM head computes logits for the reply's columns only (TRL reads no
                    other), not the prompt's (reply_logits_only)
  malloc_keep       glibc's malloc keeps freed memory for reuse (rlhf.runtime.keep_freed_memory): large
                    tensors allocated again at every update are not faulted in and zeroed page by page
  value_top8        value_lora with the adapter in the value model's last 8 layers only
                    (value_lora_top_layers): its backward pass stops there
  reward_reuse      LoRA policy whose reference pass also gives the reward model's final hidden states
                    (the bench's reward model, like the default probe, is a head on the frozen policy:
                    reward_from_reference); measured beside lora_shared_ref, not a_trl_reference
  b_default         configs/ppo/default.yaml and the process setting above, as ``rlhf ppo`` runs: all of
                    the above

Each update is also split into phases by timing TRL's functions (generation, the reference pass,
the value and reward passes, the training forward, backward, optimizer step, gc.collect, and the rest:
TRL's per-update Python work); ``--profile`` adds the torch profiler's table of the operators that
took the most time in the default variant.

Figures: seconds per update (median over the updates after the first, which warms caches up;
checkpoint writing excluded), episodes per second, peak resident memory of the process, the share
of each update spent generating, and how far rollout log-probabilities are from the training
forward's. Ratios are against a_trl_reference measured in the same invocation. With --repeats N
the variants run N times in turn (a, b, ..., a, b, ...) and the medians pool all their updates, so
a slow spell of the shared machine does not land on one variant only.

    .venv/bin/python bench/ppo_bench.py [--updates 6] [--repeats 2] [--batch 4] [--response-length 32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_OFF = {"lora.enabled": False, "bf16_autocast": False, "bf16_rollouts": False, "value_lora": False,
        "freeze_gc": False, "generation_backend": "transformers", "reply_logits_only": False,
        "reward_from_reference": False}
VARIANTS = {
    "a_trl_reference": _OFF,
    "lora_shared_ref": {**_OFF, "lora.enabled": True},
    "bf16_autocast": {**_OFF, "bf16_autocast": True},
    "bf16_rollouts": {**_OFF, "bf16_rollouts": True},
    "value_lora": {**_OFF, "value_lora": True},
    "freeze_gc": {**_OFF, "freeze_gc": True},
    "fast_decode": {**_OFF, "bf16_rollouts": True, "generation_backend": "fast"},
    "reply_logits": {**_OFF, "reply_logits_only": True},
    "malloc_keep": _OFF,
    "value_top8": {**_OFF, "value_lora": True, "value_lora_top_layers": 8},
    "reward_reuse": {**_OFF, "lora.enabled": True, "reward_from_reference": True},
    "b_default": {},  # configs/ppo/default.yaml as it is
}
# Variants that run with the process setting every ``rlhf`` command applies first (not a config field)
KEEP_FREED_MEMORY = {"malloc_keep", "b_default"}


def reward_model_dir() -> Path:
    """A reward model of the bundled model's shape (random head: speed does not depend on its skill)."""
    from rlhf.modeling import load_score_model, load_tokenizer, prepare_bundled_model
    from rlhf.runtime import cache_home

    out = Path(cache_home()) / "bench" / "reward-bundled"
    if not (out / "config.json").is_file():
        base = prepare_bundled_model(progress=False)
        load_score_model(base).save_pretrained(out, safe_serialization=True)
        load_tokenizer(base, padding_side="right").save_pretrained(out)
    return out


def _timed(function, seconds: list):
    """``function``, appending the duration of each call to ``seconds``."""
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)
    return run


PHASES = ("generate", "reference", "value+reward", "train forward", "backward", "optimizer", "gc")


def _phase(function, seconds: dict, name):
    """``function`` adding its duration to ``seconds[name]`` (``name`` may be a function of the call)."""
    def run(*args, **kwargs):
        key = name() if callable(name) else name
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
    return run


def child(variant: str, args) -> dict:
    """One variant, in this process: build the run, time each update and its generation."""
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from transformers import TrainerCallback

    from rlhf.config import load_config
    from rlhf.ppo.config import PPORunConfig
    from rlhf.ppo.trainer import build_trainer

    if variant in KEEP_FREED_MEMORY:
        from rlhf.runtime import keep_freed_memory

        assert keep_freed_memory(), "this C library has no mallopt"
    overrides = {"reward_model": args.reward_model, "output_dir": args.out, "total_updates": args.updates,
                 "per_device_batch_size": args.batch, "response_length": args.response_length,
                 "num_eval_prompts": 0, "save_every": 10_000, **VARIANTS[variant]}
    config = load_config(PPORunConfig, REPO / "configs/ppo/default.yaml", overrides)
    trainer = build_trainer(config)

    generating, saving = [], []
    # TRL's loop looks batch_generation up in its module at each update; the final checkpoint is
    # written inside the last update's step-end callbacks and is taken out of that update's time.
    ppo_module.batch_generation = _timed(ppo_module.batch_generation, generating)
    trainer.save_checkpoint = _timed(trainer.save_checkpoint, saving)
    # Phases of each update: TRL's loop looks these functions up in its module at each call.
    import gc

    import torch

    phase: dict = {}
    ppo_module.batch_generation = _phase(ppo_module.batch_generation, phase, "generate")
    ppo_module.forward = _phase(ppo_module.forward, phase,
                                lambda: "train forward" if torch.is_grad_enabled() else "reference")
    ppo_module.get_reward = _phase(ppo_module.get_reward, phase, "value+reward")
    trainer.accelerator.backward = _phase(trainer.accelerator.backward, phase, "backward")
    trainer.optimizer.step = _phase(trainer.optimizer.step, phase, "optimizer")
    gc.collect = _phase(gc.collect, phase, "gc")
    ends, phases = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **kw):
            ends.append((time.perf_counter(), sum(saving)))
            phases.append(dict(phase))
            phase.clear()

    trainer.add_callback(Clock())
    start = (time.perf_counter(), 0.0)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.train()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr, flush=True)
    else:
        trainer.train()
    per_update = [(b - a) - (sb - sa) for (a, sa), (b, sb) in zip([start] + ends[:-1], ends)]
    measured = per_update[1:] or per_update  # the first update warms caches up
    gen = generating[1:] if len(generating) > 1 else generating
    # One PPO epoch over one minibatch: the training forward sees the very weights that made the
    # rollout, so its log-probabilities differ from the rollout's only by arithmetic. approxkl
    # (mean of (new - old)^2 / 2 per token) measures that; so does the KL to the reference at
    # update 1, where policy and reference are still the same weights.
    metrics = [json.loads(x) for x in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(args.out)  # a full fine-tuning checkpoint is over 3 GB; fourteen of them fill a disk
    split = [{**p, "rest": s - sum(p.values())} for p, s in zip(phases[1:] or phases, measured)]
    return {"variant": variant, "update_seconds": measured, "generate_seconds": gen, "phases": split,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
            "approxkl": sum(m["policy/approxkl_avg"] for m in metrics) / len(metrics),
            "kl_update_1": metrics[0]["kl"]}


def summarise(runs: list[dict], batch: int) -> dict:
    """Medians over every measured update of every repeat; the largest peak memory."""
    seconds = statistics.median(s for r in runs for s in r["update_seconds"])
    generating = statistics.median(s for r in runs for s in r["generate_seconds"])
    return {"s_per_update": seconds, "episodes_per_s": batch / seconds, "generate_share": generating / seconds,
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
            "approxkl": statistics.mean(r["approxkl"] for r in runs),
            "kl_update_1": statistics.mean(r["kl_update_1"] for r in runs),
            "spread": (min(s for r in runs for s in r["update_seconds"]), max(s for r in runs for s in r["update_seconds"])),
            "phases": {k: statistics.median(p.get(k, 0.0) for r in runs for p in r["phases"]) for k in PHASES + ("rest",)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--profile", action="store_true", help="torch profiler's operator table of each variant (stderr)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reward-model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from rlhf.runtime import apply_offline_env

    apply_offline_env()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return 0

    reward = reward_model_dir()
    runs = {name: [] for name in args.variants.split(",")}
    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as tmp:
        for repeat in range(args.repeats):
            for name in runs:
                cmd = [sys.executable, __file__, "--child", name, "--reward-model", str(reward), "--out",
                       os.path.join(tmp, f"{name}-{repeat}"), "--updates", str(args.updates), "--batch",
                       str(args.batch), "--response-length", str(args.response_length)] + \
                    (["--profile"] if args.profile else [])
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if args.profile:
                    print(proc.stderr[proc.stderr.find("---"):][-6000:], file=sys.stderr)
                if proc.returncode or not line:
                    print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                    return 1
                runs[name].append(json.loads(line[0][7:]))
                print(f"measured {name} ({repeat + 1}/{args.repeats}): "
                      f"{statistics.median(runs[name][-1]['update_seconds']):.2f} s/update", file=sys.stderr, flush=True)
    results = {name: summarise(r, args.batch) for name, r in runs.items()}

    base = results.get("a_trl_reference") or next(iter(results.values()))
    print(f"PPO on the bundled SmolLM2-135M-Instruct: batch {args.batch}, {args.response_length} new tokens, "
          f"{args.updates} updates (first excluded) x {args.repeats} repeats, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'variant':<18}{'s/update':>10}{'episodes/s':>12}{'x eps':>8}{'peak GB':>10}{'x mem':>8}{'generate':>10}"
          f"{'approxkl':>10}{'kl@1':>8}{'min-max s':>14}")
    for name, r in results.items():
        print(f"{name:<18}{r['s_per_update']:>10.2f}{r['episodes_per_s']:>12.3f}"
              f"{r['episodes_per_s'] / base['episodes_per_s']:>8.2f}{r['peak_rss_gb']:>10.2f}"
              f"{r['peak_rss_gb'] / base['peak_rss_gb']:>8.2f}{r['generate_share']:>10.0%}"
              f"{r['approxkl']:>10.5f}{r['kl_update_1']:>8.3f}{r['spread'][0]:>7.2f}-{r['spread'][1]:<6.2f}")
    print("approxkl: rollout log-probs against the training forward's, same weights (arithmetic only); "
          "kl@1: summed KL to the reference at update 1, where the two are the same weights")
    print("\nseconds per update by phase (medians; rest: TRL's per-update Python work and everything untimed)")
    print(f"{'variant':<18}" + "".join(f"{k:>14}" for k in PHASES + ("rest",)))
    for name, r in results.items():
        print(f"{name:<18}" + "".join(f"{r['phases'][k]:>14.2f}" for k in PHASES + ("rest",)))
    print("reproduce: .venv/bin/python bench/ppo_bench.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
