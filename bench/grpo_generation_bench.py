"""GRPO's generation of one update's groups: rlhf.decode's loop against transformers' generate().

Builds a real ``rlhf grpo`` trainer (configs/grpo/default.yaml unless --config) and times TRL's own call
shape, ``policy.generate(input_ids, attention_mask, generation_config=trainer.generation_config)``, on
one generation batch of prompts (per_device_batch_size replies, num_generations per prompt), the two
paths interleaved --repeats times from the same seed. The rest of a GRPO update (reference and policy
forwards, backward, reward model) does not depend on the path.

    .venv/bin/python bench/grpo_generation_bench.py --reward-model runs/reward            # bundled policy
    .venv/bin/python bench/grpo_generation_bench.py --policy DIR --reward-model DIR --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs/grpo/default.yaml"))
    parser.add_argument("--policy", default="bundled")
    parser.add_argument("--reward-model", required=True, help="a reward model folder (rlhf reward train output)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import torch

    from rlhf.align import online
    from rlhf.align.config import GRPORunConfig
    from rlhf.config import load_config

    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="grpo_generation_bench_"))
    run = load_config(GRPORunConfig, args.config, {"policy": args.policy, "reward_model": args.reward_model,
                                                   "output_dir": str(out), "num_eval_prompts": 0,
                                                   "allow_weak_reward_model": True})
    trainer = online.build_trainer(run)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    fast, slow = policy.generate, getattr(policy.generate, "__wrapped__", None)
    if slow is None:
        sys.exit("the fast loop is not in use for this model (see the log line above)")
    tok = trainer.processing_class
    prompts = online.load_prompts(run.prompts_file, tok, run.max_prompt_tokens)
    groups = run.per_device_batch_size // run.num_generations
    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
             for p in prompts[:groups] for _ in range(run.num_generations)]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    config = trainer.generation_config

    def timed(generate) -> tuple[float, int]:
        torch.manual_seed(run.seed)
        start = time.perf_counter()
        with torch.no_grad():
            ids = generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], generation_config=config)
        return time.perf_counter() - start, ids.shape[1] - enc["input_ids"].shape[1]

    timed(fast), timed(slow)  # warm-up: first-call allocations and lazy imports
    results = {"fast loop": [], "generate()": []}
    for _ in range(args.repeats):
        for name, generate in (("fast loop", fast), ("generate()", slow)):
            seconds, steps = timed(generate)
            results[name].append(seconds / steps * 1000)
    print(f"\nGRPO generation batch: {len(texts)} replies ({groups} prompts x {run.num_generations}), up to "
          f"{run.response_length} new tokens, {args.threads} threads, policy {args.policy}")
    for name, ms in results.items():
        print(f"  {name:11s} ms per token (whole batch): median {statistics.median(ms):7.1f}   runs "
              f"{', '.join(f'{m:.1f}' for m in ms)}")
    ratio = statistics.median(results["generate()"]) / statistics.median(results["fast loop"])
    print(f"  fast loop is {ratio:.2f}x generate()")
    print(f"reproduce: .venv/bin/python bench/grpo_generation_bench.py --config {args.config} --policy {args.policy} "
          f"--reward-model {args.reward_model} --repeats {args.repeats} --threads {args.threads}")


if __name__ == "__main__":
    main()
