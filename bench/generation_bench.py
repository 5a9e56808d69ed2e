"""Generation speed on the bundled model: ms per new token beside the machine's lower bound.

The model is PPO's default policy: the bundled model in float32 with the default LoRA adapter.

Variants (same prompts, same number of new tokens, end token ignored so every row runs to the limit):

  float32_eager   transformers' generate() on the float32 model
  bf16_generate   the generate() path of PPO's bf16_rollouts before the fast loop: bfloat16 copies of the
                  weights made once per batch, bfloat16 autocast, LM head top-exact in float32
  bf16_model      generate() on a whole bfloat16 copy of the model (weights stored in bfloat16, no autocast)
  static_cache    the same with transformers' static KV cache (cache_implementation="static")
  compiled        the same, static cache + torch.compile of the forward (only with --compile: the first
                  call compiles for minutes on two cores; its compile time is printed)
  fast_plain      rlhf.decode's loop as it was before its weights were packed: plain bfloat16 weights
                  (oneDNN reorders each at every product), torch.multinomial, flash attention per token,
                  top-p by a sort of the whole vocabulary (these variants sample with top-p 1: no sort)
  fast_python     rlhf.decode's loop with its one-token steps in Python (as before rlhf.decode_native)
  fast            rlhf.decode's loop (the default of PPO rollouts and generate_replies): the frozen
                  base weights and head packed in oneDNN's layout once, the adapter changed in place
                  before each call (as PPO's update does) and applied beside the base at every token
                  (its layouts refreshed once per call); inverse-CDF
                  sampling, one-query attention, top-p among the largest 256 or 2,048 entries, each
                  one-token step over the layers in one C++ call (rlhf.decode_native)
  fast_kept       the same with the packed weights kept from call to call (as generate_replies keeps
                  them for the batches of one job: candidates, held-out replies)

In the same run the machine's memory bandwidth (the faster of a 512 MB tensor copy and a read-only sum
over it; measured before the variants and after each round of them, the median taken, as the variants'
times are: the host's bandwidth moves with its other tenants, from 42 to 77 GB/s within one run) and
matrix throughput (bfloat16 and float32 matmuls) are measured, and each variant's lower bound per token
is printed beside it: for every new token the larger of (bytes of weights it reads / bandwidth) and
(its FLOPs / matmul throughput), plus the prompt pass's share (its matrix FLOPs, prompt tokens x batch,
/ matmul throughput, spread over the new tokens), since the time measured includes the prompt pass. Variants run interleaved (a, b, c, a, b, c, ...) and the medians are compared, so a busy
spell of a shared machine is spread over all of them. ``--profile`` adds the torch profiler's split of
a batch-4 token into matrix products, attention, sampling, other tensor operations and the rest
(Python and framework overhead: wall time not spent inside any operator).

    .venv/bin/python bench/generation_bench.py [--batches 1,4,8,16] [--tokens 32] [--repeats 3] [--profile] [--compile]
        [--candidates]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = ["How do I reset my password?", "Where is my order? It was due on Monday.",
           "Can I get a refund for a damaged item?", "What are your opening hours on Sundays?",
           "My invoice shows the wrong address, can you fix it?", "How do I cancel my subscription?",
           "The app crashes when I open my basket.", "Do you ship to Norway?"]


# ---------------------------------------------------------------------------------------------------
# The machine


def memory_bandwidth(torch, megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second streamed from memory: the faster of a large tensor copy (read + write counted)
    and a read-only sum over the same tensor (as a decode step reads its weights), best of ``repeats``."""
    src = torch.ones(megabytes * 2 ** 20 // 4)
    dst = torch.empty_like(src)
    best_copy = best_read = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best_copy = min(best_copy, time.perf_counter() - start)
        start = time.perf_counter()
        src.sum()
        best_read = min(best_read, time.perf_counter() - start)
    return max(2 * src.numel() * 4 / best_copy, src.numel() * 4 / best_read)


def matmul_flops(torch, dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n matrix product in ``dtype``, best of ``repeats``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


# ---------------------------------------------------------------------------------------------------
# The variants


def load(torch):
    """The bundled model as PPO's default policy: float32, the default LoRA adapter on every projection
    (its B given small values, as after some updates; the base weights frozen), the head in float32."""
    from peft import get_peft_model

    from rlhf.lora import LoraSettings, lora_config
    from rlhf.modeling import load_policy, load_tokenizer, prepare_bundled_model
    from rlhf.ppo.rollout import float32_output_layer

    path = prepare_bundled_model(progress=False)
    tokenizer = load_tokenizer(path, padding_side="left")
    torch.manual_seed(0)
    model = get_peft_model(load_policy(path, dtype="float32"), lora_config(LoraSettings(), "CAUSAL_LM")).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    float32_output_layer(model.get_output_embeddings())  # as PPO's bf16 settings do
    return model, tokenizer


def adapter_step(model):
    """Mark the adapter's weights changed in place, as PPO's optimizer step does between rollout batches
    (their values stay: every call samples from the same policy). The parameters are listed once per
    model: walking the model's modules (4 ms) is not part of generation."""
    import torch

    adapter = _adapter_parameters.get(model)
    if adapter is None:
        adapter = _adapter_parameters[model] = [p for name, p in model.named_parameters() if "lora_" in name]
    with torch.no_grad():
        for param in adapter:
            param.add_(0)


_adapter_parameters: dict = {}


def encode(tokenizer, batch: int):
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], tokenize=False,
                                           add_generation_prompt=True) for i in range(batch)]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def variants(torch, model, tokenizer, tokens: int, compile_: bool) -> dict:
    """name -> function(batch encoding) generating ``tokens`` new tokens per row."""
    from rlhf.decode import PackedWeights, decode
    from rlhf.ppo.rollout import bf16_generation_weights

    plain = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True, temperature=0.7, top_k=0, top_p=1.0,
                 pad_token_id=tokenizer.pad_token_id)

    def float32_eager(enc):
        with torch.no_grad():
            model.generate(**enc, **plain)

    def bf16(cache=None):
        def run(enc):
            extra = {"cache_implementation": cache} if cache else {}
            with torch.no_grad(), bf16_generation_weights(model), torch.autocast("cpu", dtype=torch.bfloat16):
                model.generate(**enc, **plain, **extra)
        return run

    def fast(enc):
        adapter_step(model)  # as an update does: the adapted layers are packed again, the frozen head is not
        decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=tokens, temperature=0.7,
               eos_token_id=None, pad_token_id=tokenizer.pad_token_id, output_scores=True)

    def fast_plain(enc):
        with loop_before(torch):
            fast(enc)

    def fast_python(enc):
        with python_steps():
            fast(enc)

    # generate_replies' case on its own copy of the policy: "fast" changes the adapter before each call
    import copy

    kept_model = copy.deepcopy(model)

    def fast_kept(enc):
        decode(kept_model, enc["input_ids"], enc["attention_mask"], max_new_tokens=tokens, temperature=0.7,
               eos_token_id=None, pad_token_id=tokenizer.pad_token_id, output_scores=True,
               weights=PackedWeights.kept(kept_model))

    # A whole bfloat16 copy (weights, norms, embeddings, cache): transformers' static cache needs one
    # dtype (under autocast the keys come out float32 and the values bfloat16, which it refuses).
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    # the copy's head would keep the float32 wrapper of the original (it closes over the original layer)
    vars(bf16_model.get_output_embeddings()).pop("forward", None)

    def bf16_weights(cache=None, forward=None):
        def run(enc):
            extra = {"cache_implementation": cache} if cache else {}
            original = bf16_model.forward
            if forward is not None:
                bf16_model.forward = forward
            try:
                with torch.no_grad():
                    bf16_model.generate(**enc, **plain, **extra)
            finally:
                bf16_model.forward = original
        return run

    out = {"float32_eager": float32_eager, "bf16_generate": bf16(), "bf16_model": bf16_weights(),
           "static_cache": bf16_weights("static")}
    if compile_:
        out["compiled"] = bf16_weights("static", torch.compile(bf16_model.forward, dynamic=False))
    out["fast_plain"] = fast_plain
    out["fast_python"] = fast_python
    out["fast"] = fast
    out["fast_kept"] = fast_kept
    return out


def lower_bound(model, name: str, batch: int, prompt: int, tokens: int, bandwidth: float, bf16_flops: float,
                fp32_flops: float) -> float:
    """Seconds per new token: for each new token, weights read once (bfloat16 matrices and the bfloat16
    head copy in the bfloat16 variants; float32 in float32_eager) against bandwidth, or the matrix FLOPs
    against throughput, whichever is longer; plus the prompt pass (``prompt`` tokens a row: the decoder
    layers' matrix FLOPs for every token, the head's for the last) against throughput, spread over the
    ``tokens`` new tokens. Attention, norms and sampling count as free."""
    embed = model.get_input_embeddings().weight.numel()
    # decoder layers (norms are tiny), adapters not counted (the merged weight is what is read)
    matrices = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n) - embed
    params = matrices + embed  # the tied LM head is read once per token too
    float32 = name == "float32_eager"
    throughput = fp32_flops if float32 else bf16_flops
    per_token = max(params * (4 if float32 else 2) / bandwidth, 2 * params * batch / throughput)
    prompt_pass = 2 * (matrices * prompt + embed) * batch / throughput
    return per_token + prompt_pass / tokens


# ---------------------------------------------------------------------------------------------------
# Profile


CATEGORIES = {
    "matmul": ("mm", "addmm", "bmm", "linear", "matmul", "mkldnn", "onednn", "_weight_int", "_reorder"),
    "attention": ("scaled_dot_product", "_flash_attention", "softmax_backward"),
    "sampling": ("multinomial", "softmax", "topk", "sort", "cumsum", "argmax", "isin", "where", "scatter",
                 "exponential", "log_softmax"),
}


def profile_split(torch, function, enc, tokens: int) -> dict:
    """Per-token ms by category: operators' self time, and the rest of the wall time as overhead."""
    from torch.profiler import ProfilerActivity, profile

    function(enc)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        function(enc)
    wall = (time.perf_counter() - start) * 1000
    split = {"matmul": 0.0, "attention": 0.0, "sampling": 0.0, "other ops": 0.0}
    for event in prof.key_averages():
        namespace, _, name = event.key.partition("::")
        if namespace not in ("aten", "mkldnn"):  # operators (not the profiler's own spans)
            continue
        category = next((c for c, keys in CATEGORIES.items() if any(k in name for k in keys)), "other ops")
        split[category] += event.self_cpu_time_total / 1000
    split["python/framework"] = max(0.0, wall - sum(split.values()))
    return {k: v / tokens for k, v in split.items()} | {"wall (profiled)": wall / tokens}


# ---------------------------------------------------------------------------------------------------
# The quickstart's candidates


def candidates(torch, model, tokenizer) -> None:
    """Seconds for the quickstart's candidate generation (configs/quickstart/full.yaml: 84 training
    prompts x 4 replies, at most 40 new tokens, temperature 0.8, top-p 0.95, ending at the end token)
    through ``generate_replies``, as ``rlhf app generate`` runs it, in turn: transformers' float32
    ``generate()`` in batches of 16 (the app's candidates when issue #16 was filed: the baseline of its
    3x goal), the fast loop before its weights were packed (``fast_plain``) in batches of 16, and the
    fast loop in batches of 16 and of 32 (the quickstart's setting now)."""
    from rlhf.generation import SamplingSettings, generate_replies
    from rlhf.prompts import read_prompts

    prompts = read_prompts(REPO / "configs/quickstart/train_prompts.jsonl")
    seconds = {}
    for name, batch in (("transformers", 16), ("fast_plain", 16), ("fast", 16), ("fast", 32)):
        sampling = SamplingSettings(max_new_tokens=40, temperature=0.8, top_p=0.95, seed=0,
                                    backend="transformers" if name == "transformers" else "fast")
        start = time.perf_counter()
        with loop_before(torch) if name == "fast_plain" else contextlib.nullcontext():
            replies = generate_replies(model, tokenizer, prompts, 4, sampling, batch, progress=False)
        seconds[name, batch] = time.perf_counter() - start
        print(f"candidates {name:<11} batch {batch}: {seconds[name, batch]:6.1f} s for {sum(map(len, replies))} "
              f"replies", file=sys.stderr, flush=True)
    before = seconds["transformers", 16]
    print(f"\nquickstart candidates ({len(prompts)} prompts x 4, 40 new tokens): "
          + ", ".join(f"{name} batch {batch} {s:.1f} s ({before / s:.2f}x)" for (name, batch), s in seconds.items()))


@contextlib.contextmanager
def python_steps():
    """rlhf.decode's loop with its one-token steps in Python, as before its C++ step."""
    from rlhf import decode_native

    saved = decode_native.available
    decode_native.available = lambda: False
    try:
        yield
    finally:
        decode_native.available = saved


@contextlib.contextmanager
def loop_before(torch):
    """rlhf.decode's loop as it was before its weights were packed: plain bfloat16 weights (oneDNN
    reorders each at every product), torch.multinomial, flash attention for one query, and top-p
    by a sort of the whole vocabulary."""
    import rlhf.decode as loop

    def attend(q, keys, values, masked):
        return torch.nn.functional.scaled_dot_product_attention(
            q, keys, values, attn_mask=~masked, enable_gqa=True).transpose(1, 2).flatten(2)

    saved = loop.packing_available, loop.sample, loop._attend_one, loop._top_p_drop
    top_p_drop = loop._top_p_drop
    loop.packing_available = lambda device: False
    loop.sample = lambda scores: torch.multinomial(scores.softmax(dim=-1), 1).squeeze(1)
    loop._attend_one = attend
    loop._top_p_drop = lambda scores, top_p: top_p_drop(scores, top_p, candidates=())
    try:
        with python_steps():
            yield
    finally:
        loop.packing_available, loop.sample, loop._attend_one, loop._top_p_drop = saved


# ---------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,4,8,16")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=None, help="comma-separated subset of the variants")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--candidates", action="store_true",
                        help="also time the quickstart's candidate generation (84 x 4 replies) before and after")
    args = parser.parse_args()

    from rlhf.runtime import apply_memory_setting, apply_offline_env

    apply_offline_env()
    apply_memory_setting()  # as every rlhf command runs (RLHF_KEEP_FREED_MEMORY=0 turns it off)
    import torch

    model, tokenizer = load(torch)
    bandwidths = [memory_bandwidth(torch)]
    bandwidth = bandwidths[0]
    bf16_flops, fp32_flops = matmul_flops(torch, torch.bfloat16), matmul_flops(torch, torch.float32)
    print(f"machine: {torch.get_num_threads()} threads, bandwidth {bandwidth / 1e9:.1f} GB/s, matmul "
          f"bf16 {bf16_flops / 1e9:.0f} GFLOP/s, fp32 {fp32_flops / 1e9:.0f} GFLOP/s", flush=True)
    runs = variants(torch, model, tokenizer, args.tokens, args.compile)
    if args.variants:
        runs = {k: v for k, v in runs.items() if k in args.variants.split(",")}

    compile_seconds = {}
    table = []
    for batch in (int(b) for b in args.batches.split(",") if b):
        enc = encode(tokenizer, batch)
        for name, function in runs.items():  # warm-up (and compilation) outside the measurement
            start = time.perf_counter()
            function(enc)
            if name == "compiled" and name not in compile_seconds:
                compile_seconds[name] = time.perf_counter() - start
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, function in runs.items():
                start = time.perf_counter()
                function(enc)
                times[name].append((time.perf_counter() - start) / args.tokens * 1000)
            bandwidths.append(memory_bandwidth(torch, repeats=2))
        prompt = enc["input_ids"].shape[1]
        base = statistics.median(times[next(iter(runs))])
        for name in runs:
            ms = statistics.median(times[name])
            table.append((batch, name, ms, base / ms, prompt))
            print(f"batch {batch:>2}  {name:<14} {ms:7.1f} ms/token  x{base / ms:5.2f} vs {next(iter(runs))}",
                  file=sys.stderr, flush=True)

    # every bound from the median bandwidth of the run, as every time is a median
    bandwidth = statistics.median(bandwidths)
    print(f"\nbatch  {'variant':<14}{'ms/token':>9}{'speed-up':>10}{'bound ms':>10}{'x bound':>9}")
    for batch, name, ms, speedup, prompt in table:
        bound = lower_bound(model, name, batch, prompt, args.tokens, bandwidth, bf16_flops, fp32_flops) * 1000
        print(f"{batch:>5}  {name:<14}{ms:>9.1f}{speedup:>10.2f}{bound:>10.1f}{ms / bound:>9.1f}")
    print(f"(ms per new token including the prompt pass, median of {args.repeats}; speed-up against "
          f"{next(iter(runs))} in this run; bound: per new token weights bytes / bandwidth or FLOPs / matmul "
          f"throughput, plus the prompt pass's FLOPs / matmul throughput shared over the new tokens; bandwidth "
          f"the median of {len(bandwidths)} measurements in the run, {bandwidth / 1e9:.1f} GB/s, from "
          f"{min(bandwidths) / 1e9:.1f} to {max(bandwidths) / 1e9:.1f})")
    for name, seconds in compile_seconds.items():
        print(f"{name}: first call (compilation) {seconds:.1f} s, paid once per process")

    if args.profile:
        enc = encode(tokenizer, 4)
        print("\nprofile, batch 4, ms per token:")
        splits = {name: profile_split(torch, function, enc, args.tokens) for name, function in runs.items()}
        keys = list(next(iter(splits.values())))
        print(f"{'variant':<14}" + "".join(f"{k:>18}" for k in keys))
        for name, split in splits.items():
            print(f"{name:<14}" + "".join(f"{split[k]:>18.1f}" for k in keys))
    if args.candidates:
        candidates(torch, model, tokenizer)
    print("reproduce: .venv/bin/python bench/generation_bench.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
