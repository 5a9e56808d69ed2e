"""The fast decode loop (rlhf.decode) on the tiny model: its sampled tokens' log-probabilities against
the training forward's, with and without an adapter, before and after an optimizer step; seeded
reproducibility; the fallback to generate() where it cannot run."""

from __future__ import annotations

import logging

import pytest
import torch

from rlhf.decode import decode, process_logits, unsupported_reason
from rlhf.lora import LoraSettings, lora_config
from rlhf.ppo.rollout import float32_output_layer

TEMPERATURE = 0.7


@pytest.fixture
def lora_policy(tiny_model_dir):
    """A PEFT policy whose adapter is not zero (B starts at zero; give it values so merging matters)."""
    from peft import get_peft_model

    from rlhf.modeling import load_policy

    torch.manual_seed(0)
    policy = get_peft_model(load_policy(tiny_model_dir, dtype="float32"),
                            lora_config(LoraSettings(r=4, alpha=8), "CAUSAL_LM"))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    float32_output_layer(policy.get_base_model().get_output_embeddings())  # as PPO's bf16 settings do
    return policy.eval()


def _prompts(tiny_model_dir):
    from rlhf.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model_dir, padding_side="left")
    texts = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
             for t in ("Where is my parcel?", "How do I change my password? It says the link expired.", "Hi")]
    return tok, tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _training_logprobs(model, sequences, context, pad_id):
    """The sampled tokens' log-probabilities from the training forward: TRL's PPO forward under
    bfloat16 autocast (default.yaml's bf16_autocast), float32 output layer, logits / temperature."""
    from trl.experimental.ppo.ppo_trainer import forward

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = forward(model, sequences, pad_id).logits[:, context - 1:-1] / TEMPERATURE
    return torch.log_softmax(logits.float(), -1).gather(-1, sequences[:, context:, None])[..., 0]


def _decode_logprobs(model, tok, batch, seed=1, tokens=8):
    torch.manual_seed(seed)
    out = decode(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=tokens,
                 temperature=TEMPERATURE, eos_token_id=None, pad_token_id=tok.pad_token_id, output_scores=True)
    context = batch["input_ids"].shape[1]
    scores = torch.stack(out.scores, 1)
    assert scores.dtype == torch.float32 and scores.shape[:2] == (3, tokens)
    sampled = out.sequences[:, context:]
    return out.sequences, torch.log_softmax(scores, -1).gather(-1, sampled[..., None])[..., 0]


def _approxkl(a, b):
    """PPO's approxkl: 0.5 * mean squared log-probability difference per token."""
    return float(0.5 * ((a - b) ** 2).mean())


def test_decode_logprobs_match_the_training_forward_with_and_without_adapter_and_after_a_step(lora_policy,
                                                                                          tiny_model_dir):
    tok, batch = _prompts(tiny_model_dir)
    context = batch["input_ids"].shape[1]

    sequences, fast = _decode_logprobs(lora_policy, tok, batch)
    adapted = _training_logprobs(lora_policy, sequences, context, tok.pad_token_id)
    assert _approxkl(fast, adapted) <= 0.001 and (fast - adapted).abs().max() < 0.1
    with lora_policy.disable_adapter():
        base_seq, base_fast = _decode_logprobs(lora_policy, tok, batch)
        base = _training_logprobs(lora_policy, base_seq, context, tok.pad_token_id)
        assert _approxkl(base_fast, base) <= 0.001
        # the adapter is in the sampled distribution: without it the same tokens score differently
        off = _training_logprobs(lora_policy, sequences, context, tok.pad_token_id)
        assert _approxkl(fast, off) > 10 * _approxkl(fast, adapted)

    # One optimizer step on the adapter: the next decode sees the new weights (packed again per call).
    optimizer = torch.optim.AdamW([p for p in lora_policy.parameters() if p.requires_grad], lr=0.05)
    lora_policy.train()
    from trl.experimental.ppo.ppo_trainer import forward

    logits = forward(lora_policy, sequences, tok.pad_token_id).logits[:, context - 1:-1] / TEMPERATURE
    loss = -torch.log_softmax(logits, -1).gather(-1, sequences[:, context:, None]).mean()
    loss.backward()
    optimizer.step()
    lora_policy.eval()
    stepped_seq, stepped = _decode_logprobs(lora_policy, tok, batch)
    after = _training_logprobs(lora_policy, stepped_seq, context, tok.pad_token_id)
    assert _approxkl(stepped, after) <= 0.001
    # the step moved the sampled distribution: the first rollout's tokens score differently now
    if torch.equal(stepped_seq, sequences):
        assert _approxkl(stepped, fast) > 1e-4


def test_seeded_sampling_is_reproducible_and_greedy_matches_generate(lora_policy, tiny_model_dir):
    tok, batch = _prompts(tiny_model_dir)
    first, _ = _decode_logprobs(lora_policy, tok, batch, seed=7)
    again, _ = _decode_logprobs(lora_policy, tok, batch, seed=7)
    other, _ = _decode_logprobs(lora_policy, tok, batch, seed=8)
    assert torch.equal(first, again) and not torch.equal(first, other)

    greedy = decode(lora_policy, batch["input_ids"], batch["attention_mask"], max_new_tokens=6, do_sample=False,
                    eos_token_id=None, pad_token_id=tok.pad_token_id).sequences
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = lora_policy.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                                         eos_token_id=None)
    context = batch["input_ids"].shape[1]
    # greedy picks agree with generate() under autocast except where two logits tie within rounding
    assert (greedy[:, context:] == reference[:, context:]).float().mean() >= 0.9


def test_rows_stop_at_eos_and_pad_after(lora_policy, tiny_model_dir):
    tok, batch = _prompts(tiny_model_dir)
    torch.manual_seed(0)
    probe = decode(lora_policy, batch["input_ids"], batch["attention_mask"], max_new_tokens=4, do_sample=False,
                   eos_token_id=None, pad_token_id=tok.pad_token_id)
    context = batch["input_ids"].shape[1]
    stop = int(probe.sequences[0, context])  # row 0's first greedy token plays the end token
    out = decode(lora_policy, batch["input_ids"], batch["attention_mask"], max_new_tokens=4, do_sample=False,
                 eos_token_id=[stop], pad_token_id=tok.pad_token_id)
    new = out.sequences[:, context:]
    assert int(new[0, 0]) == stop and all(int(t) == tok.pad_token_id for t in new[0, 1:])
    ran_on = [row for row in probe.sequences[:, context:] if stop not in row.tolist()]
    if ran_on:  # a row that never wrote it keeps the batch going to the limit, as generate() does
        assert new.shape[1] == 4


def test_process_logits_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.equal(process_logits(logits, 2.0, 0, 1.0), logits / 2)
    top2 = process_logits(logits, 1.0, 2, 1.0)
    assert torch.equal(top2[0, :2], logits[0, :2]) and torch.isinf(top2[0, 2:]).all()
    # softmax([2, 1, 0, -1]) = [0.644, 0.237, 0.087, 0.032]: top_p 0.85 keeps the first two (0.881)
    nucleus = process_logits(logits, 1.0, 0, 0.85)
    assert torch.equal(nucleus[0, :2], logits[0, :2]) and torch.isinf(nucleus[0, 2:]).all()
    assert torch.isfinite(process_logits(logits, 1.0, 0, 0.5)[0, 0])  # at least one token kept


def test_unsupported_model_falls_back_and_says_so(tiny_model_dir, tmp_path, caplog):
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf.generation import SamplingSettings, generate_replies
    from rlhf.modeling import load_tokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.attention_bias = True  # a Llama with biases (Qwen-style): not what the fast loop computes
    model = AutoModelForCausalLM.from_config(config)
    assert "bias" in unsupported_reason(model)
    tok = load_tokenizer(tiny_model_dir, padding_side="left")
    with caplog.at_level(logging.WARNING, logger="rlhf.generation"):
        replies = generate_replies(model, tok, ["Hello?"], 2, SamplingSettings(max_new_tokens=4), progress=False)
    assert len(replies[0]) == 2
    assert any("transformers' generate()" in r.getMessage() and "bias" in r.getMessage() for r in caplog.records)


def test_sample_draws_from_the_softmax_and_never_a_filtered_token(monkeypatch):
    from rlhf.decode import sample

    torch.manual_seed(0)
    # softmax([log 1, log 2, -inf, log 7]) = [0.1, 0.2, 0, 0.7]
    scores = torch.tensor([[0.0, float(torch.log(torch.tensor(2.0))), float("-inf"),
                            float(torch.log(torch.tensor(7.0)))]]).expand(20000, 4)
    drawn = sample(scores)
    counts = torch.bincount(drawn, minlength=4).float() / len(drawn)
    assert counts[2] == 0
    # binomial spread of a share p over 20,000 draws: sqrt(p(1-p)/20000) <= 0.0033; 4 of them
    assert torch.allclose(counts, torch.tensor([0.1, 0.2, 0.0, 0.7]), atol=0.014)
    # a draw rounded up to the total probability falls on the last token that has any
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.ones(shape, dtype=kw.get("dtype")))
    assert sample(torch.tensor([[1.0, 2.0, float("-inf")], [0.0, float("-inf"), 3.0]])).tolist() == [1, 2]


def test_one_query_attention_matches_flash_attention():
    from rlhf.decode import _attend_one

    torch.manual_seed(0)
    q = torch.randn(2, 6, 1, 8).bfloat16()
    keys, values = torch.randn(2, 2, 5, 8).bfloat16(), torch.randn(2, 2, 5, 8).bfloat16()
    hidden = torch.tensor([[False, False, True, False, False], [True, False, False, False, False]])[:, None, None, :]
    got = _attend_one(q, keys, values, hidden)
    want = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=~hidden, enable_gqa=True)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 1, 48)
    # heads 0-2 read kv head 0 and 3-5 kv head 1; the same to bfloat16 rounding of the output
    want = want.transpose(1, 2).reshape(2, 1, 48)
    assert torch.allclose(got.float(), want.float(), atol=0.02, rtol=0.01)
    # flash attention's own roundings (the unnormalised exponentials to bfloat16): bit for bit but for
    # the order of additions, on a long row too (normalising first, as a softmax, matched about 60%)
    q, keys, values = (torch.randn(4, 9, 1, 64) * 2).bfloat16(), (torch.randn(4, 3, 120, 64) * 2).bfloat16(), \
        torch.randn(4, 3, 120, 64).bfloat16()
    hidden = torch.zeros(4, 1, 1, 120, dtype=torch.bool)
    hidden[0, ..., :30] = True
    got = _attend_one(q, keys, values, hidden)
    want = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=~hidden, enable_gqa=True)
    assert (got == want.transpose(1, 2).reshape(4, 1, 576)).float().mean() > 0.95


def test_packed_weights_give_the_same_products_and_samples(lora_policy, tiny_model_dir, monkeypatch):
    import rlhf.decode as decode_module
    from rlhf.decode import PackedWeights, pack, packing_available
    from rlhf.ppo.rollout import bf16_linear

    if not packing_available(torch.device("cpu")):  # a CPU without oneDNN bfloat16: plain weights, said so
        assert not PackedWeights(lora_policy).packed
        return
    matrix = torch.randn(24, 16).bfloat16()
    for rows in (1, 4, 7):
        x = torch.randn(rows, 16).bfloat16()
        assert torch.equal(bf16_linear(x, pack(matrix)), torch.nn.functional.linear(x, matrix))
    tok, batch = _prompts(tiny_model_dir)
    assert PackedWeights(lora_policy).packed
    packed = _decode_logprobs(lora_policy, tok, batch, seed=3)
    monkeypatch.setattr(decode_module, "packing_available", lambda device: False)
    assert not PackedWeights(lora_policy).packed
    plain = _decode_logprobs(lora_policy, tok, batch, seed=3)
    assert torch.equal(packed[0], plain[0]) and torch.equal(packed[1], plain[1])


def test_kept_weights_are_packed_again_when_the_model_changes(lora_policy):
    from rlhf.decode import PackedWeights

    first = PackedWeights.kept(lora_policy)
    assert PackedWeights.kept(lora_policy).layers[0].qkv is first.layers[0].qkv
    with lora_policy.disable_adapter():
        off = PackedWeights.kept(lora_policy)
        assert not torch.equal(off.layers[0].qkv.to_dense(), first.layers[0].qkv.to_dense())
        assert off.head_bf16 is first.head_bf16  # the head has no adapter: the same matrix
    again = PackedWeights.kept(lora_policy)
    assert again.layers[0].qkv is not off.layers[0].qkv
    assert torch.equal(again.layers[0].qkv.to_dense(), first.layers[0].qkv.to_dense())
    with torch.no_grad():  # an in-place change (as an optimizer step makes) is seen
        next(p for n, p in lora_policy.named_parameters() if "lora_B" in n).add_(1.0)
    changed = PackedWeights.kept(lora_policy)
    assert changed.layers[0].qkv is not again.layers[0].qkv and changed.layers[1].qkv is again.layers[1].qkv


def test_per_call_weights_pack_the_frozen_base_once_and_apply_the_training_adapter_beside_it(lora_policy):
    """PPO's rollouts: the base weights (frozen) are packed once and reused across calls; the adapter, whose
    A and B train, is applied beside them at every call from its current values, as peft's layer computes it
    under bfloat16 autocast (the training forward)."""
    import rlhf.decode as decode_module
    from rlhf.decode import PackedWeights, _product, _remembered

    assert any(p.requires_grad for n, p in lora_policy.named_parameters() if "lora_A" in n)
    first, second = PackedWeights(lora_policy), PackedWeights(lora_policy)
    assert second.head_bf16 is first.head_bf16 and second.layers[0].qkv is first.layers[0].qkv
    attn = lora_policy.get_base_model().model.layers[0].self_attn
    base = torch.cat([m.get_base_layer().weight for m in (attn.q_proj, attn.k_proj, attn.v_proj)]).bfloat16()
    assert torch.equal(first.layers[0].qkv.to_dense() if first.packed else first.layers[0].qkv, base)
    layers = len(first.layers)
    slots = {(i, name) for i in range(layers) for name in ("qkv", "o", "gate_up", "down")}
    remembered = set(_remembered[lora_policy]) - {(slot, "pairs") for slot in slots}  # the C++ step's copies
    assert remembered == slots | {(slot, "adapter") for slot in slots} | {"head", "head_bf16"}
    assert second.layers[0].qkv_adapter is first.layers[0].qkv_adapter  # made once, refreshed in place

    torch.manual_seed(0)
    x = torch.randn(3, 1, attn.q_proj.in_features).bfloat16()

    def training_qkv():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], -1)

    got = _product(x, first.layers[0].qkv, first.layers[0].qkv_adapter)
    assert got.dtype == torch.bfloat16
    # the same roundings as peft's layer under autocast; only oneDNN's order of summation may differ
    assert torch.allclose(got.float(), training_qkv().float(), rtol=2 ** -7, atol=1e-6)
    assert (got != training_qkv()).float().mean() < 0.02

    with torch.no_grad():  # an optimizer step changes B in place: the next call reads the new values
        attn.q_proj.lora_B["default"].weight.add_(0.5)
    third = PackedWeights(lora_policy)
    assert third.layers[0].qkv is first.layers[0].qkv and third.layers[0].qkv_adapter is first.layers[0].qkv_adapter
    moved = _product(x, third.layers[0].qkv, third.layers[0].qkv_adapter)
    assert not torch.allclose(moved.float(), got.float())
    assert torch.allclose(moved.float(), training_qkv().float(), rtol=2 ** -7, atol=1e-6)
    # a write through .data (a checkpoint loaded, weights synchronised) does not move the version: seen too
    attn.q_proj.lora_B["default"].weight.data.add_(0.5)
    fourth = PackedWeights(lora_policy)
    assert torch.allclose(_product(x, fourth.layers[0].qkv, fourth.layers[0].qkv_adapter).float(),
                          training_qkv().float(), rtol=2 ** -7, atol=1e-6)
    # merged into the matrix when kept (a model that does not train meanwhile): no adapter beside it
    kept = PackedWeights.kept(lora_policy)
    assert kept.layers[0].qkv_adapter is None and kept.layers[0].qkv is not first.layers[0].qkv
    assert decode_module.adapted_at_decode([attn.q_proj]) and not decode_module.adapted_at_decode([attn.q_proj.base_layer])


def test_top_p_drops_what_transformers_warper_drops_with_or_without_the_full_sort():
    from transformers.generation.logits_process import TopPLogitsWarper

    from rlhf.decode import _top_p_drop

    torch.manual_seed(0)
    for scale in (0.5, 3.0, 10.0):  # flat rows (the nucleus beyond the top 2,048: full sort) to peaked rows
        logits = torch.randn(6, 5000) * scale
        for top_p in (0.5, 0.95):
            want = torch.isinf(TopPLogitsWarper(top_p)(None, logits.clone()))
            assert torch.equal(_top_p_drop(logits, top_p), want)
            assert torch.equal(_top_p_drop(logits, top_p, candidates=(8,)), want)  # too few: falls back


@pytest.mark.parametrize("packed", [True, False])
def test_the_cpp_step_samples_what_the_python_loop_samples(lora_policy, tiny_model_dir, monkeypatch, packed):
    """rlhf.decode_native runs the one-token step from C++ (built here with g++ and the pinned ninja): the
    same sampled tokens as the Python loop, packed weights or not, and the same scores but for the order
    in which its norms add up their squares (float32 rounding: at most about 1e-6 here)."""
    import rlhf.decode as decode_module
    from rlhf import decode_native

    assert decode_native.available(), decode_native._failed
    if not packed:
        monkeypatch.setattr(decode_module, "packing_available", lambda device: False)
    tok, batch = _prompts(tiny_model_dir)
    calls = []
    forward = decode_module._forward
    monkeypatch.setattr(decode_module, "_forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    native = _decode_logprobs(lora_policy, tok, batch, seed=5, tokens=12)
    assert len(calls) == 1  # the prompt pass; the 11 one-token steps ran in C++
    if decode_native.module().native_pairs():  # with its own product for these 3 rows
        assert ((0, "qkv"), "pairs") in decode_module._remembered[lora_policy]
    monkeypatch.setattr(decode_native, "available", lambda: False)
    python = _decode_logprobs(lora_policy, tok, batch, seed=5, tokens=12)
    assert len(calls) == 13  # and the prompt pass and 11 steps, all in Python this time
    assert torch.equal(native[0], python[0])
    assert (native[1] - python[1]).abs().max() < 1e-4


def test_the_cpp_product_for_a_few_rows_gives_torchs_product():
    """rlhf.decode_native.pair_product (the C++ step's product for a few rows, on every thread: through the
    tile registers (AMX) at up to 16 rows where the processor has them and the width is whole blocks of
    32, through vdpbf16ps at up to 8 rows where it has that) against torch's bfloat16 product: an odd
    width, a width of whole blocks, outputs that are not a whole number of its 16-column runs nor of
    its groups of four runs, both ways where both run. Only the order of the float32 additions differs,
    so a value may differ by its last bfloat16 bit; nearly all are equal."""
    from rlhf import decode_native
    from rlhf.decode import _pair_layout

    native = decode_native.module()
    # the logs name the way the products run (PPO's generation line, generate_replies' log)
    assert ("tile registers" in decode_native.describe()) == (native.pair_rows() > 8)
    torch.manual_seed(0)
    odd = torch.nn.Linear(41, 37, bias=False)
    pairs = _pair_layout([odd])
    assert pairs.shape == (3, 21, 16, 2) and not pairs[2, :, 5:].any() and not pairs[:, 20, :, 1].any()
    blocks = torch.nn.Linear(64, 100, bias=False)  # 7 runs: a group of four and three left, split between threads
    equal = total = 0
    for linear in (odd, blocks):
        pairs = _pair_layout([linear])
        for tiles in (True, False):
            most = native.pair_rows() if tiles and pairs.shape[1] % 16 == 0 else min(native.pair_rows(), 8)
            if tiles:  # what the step asks before it takes this product
                assert native.pair_fits(most, pairs) and not native.pair_fits(most + 1, pairs)
            for rows in range(1, most + 1):
                x = torch.randn(rows, 1, linear.in_features).bfloat16()
                want = torch.nn.functional.linear(x, linear.weight.bfloat16())
                got = native.pair_product(x, pairs, linear.out_features, tiles)
                assert got.shape == want.shape and got.dtype == torch.bfloat16
                assert torch.allclose(got.float(), want.float(), rtol=2 ** -7, atol=1e-3)
                equal, total = equal + int((got == want).sum()), total + got.numel()
    assert equal / total > 0.95


def test_the_tile_product_and_onednns_products_interleave():
    """The step's product loads its own tile configuration and releases the tiles after it; oneDNN's
    bfloat16 products (which use the same tile registers on a processor with AMX: the prompt pass, the
    training forward) run between its calls, as they do in a PPO update, and both stay right."""
    from rlhf import decode_native
    from rlhf.decode import _pairs_of_16, pack, packing_available
    from rlhf.ppo.rollout import bf16_linear

    native = decode_native.module()
    torch.manual_seed(0)
    weight = torch.randn(160, 64).bfloat16()
    pairs = _pairs_of_16(weight).contiguous()
    packed = pack(weight) if packing_available(torch.device("cpu")) else weight
    a, b = torch.randn(300, 64).bfloat16(), torch.randn(64, 200).bfloat16()
    rows = max(1, native.pair_rows())
    x = torch.randn(rows, 64).bfloat16()
    for _ in range(20):
        assert torch.allclose((a @ b).float(), a.float() @ b.float(), rtol=1e-2, atol=0.25)
        if native.pair_fits(rows, pairs):
            assert torch.allclose(native.pair_product(x, pairs, 160).float(), x.float() @ weight.float().T,
                                  rtol=1e-2, atol=0.1)
        assert torch.allclose(bf16_linear(a, packed).float(), a.float() @ weight.float().T, rtol=1e-2, atol=0.25)


def test_the_cpp_head_gives_top_exact_logits():
    """rlhf.decode_native.head_logits (the LM head for a few rows: the bfloat16 product in the pairs layout,
    each row's 64 largest recomputed in float32) against rlhf.ppo.rollout.top_exact_logits: the entries
    it ranks highest are the float32 products, and the rest the bfloat16 product (the two may pick a
    different entry where the 64th ties in bfloat16, so the rest is compared within its rounding): an
    odd width (vdpbf16ps) and one of whole blocks (the tile registers where the processor has them)."""
    from rlhf import decode_native
    from rlhf.decode import _pair_layout
    from rlhf.ppo.rollout import TOP_EXACT, top_exact_logits

    native = decode_native.module()
    torch.manual_seed(1)
    for width in (64, 41):
        head = torch.nn.Linear(width, 1000, bias=False)  # 62.5 runs of 16 columns
        pairs = _pair_layout([head])
        for rows in sorted({1, 3, native.pair_rows() if width % 32 == 0 else min(native.pair_rows(), 8)}):
            hidden = torch.randn(rows, width) * 3
            got = native.head_logits(hidden, pairs, head.weight, TOP_EXACT)
            want = top_exact_logits(hidden, head.weight, head.weight.bfloat16())
            assert got.shape == want.shape == (rows, 1000) and got.dtype == torch.float32
            exact = hidden @ head.weight.T
            # each row has its 64 float32 products, and they are the largest (a bfloat16 value may
            # pass the smallest of them by its rounding, as in top_exact_logits)
            assert ((got - exact).abs() <= 1e-5 * exact.abs() + 1e-5).sum(dim=-1).min() >= TOP_EXACT
            top = got.topk(TOP_EXACT // 2, dim=-1).indices
            assert torch.allclose(got.gather(1, top), exact.gather(1, top), rtol=1e-5, atol=1e-5)
            assert torch.allclose(got, want, rtol=2 ** -7, atol=2e-2)
            assert (got == want).float().mean() > 0.95


def test_the_cpp_adapter_adds_what_the_python_adapter_adds():
    """rlhf.decode_native's adapter loops against Adapter.delta (peft's arithmetic under autocast, through
    torch's products): an odd input width, odd ranks and widths that are not multiples of its 16-wide
    runs, two modules with their own rank and scaling, one to six rows (its blocks of four rows and what
    is left), through AVX512-BF16's pair products where the processor has them and through the portable
    loops. They sum in another order than oneDNN, so a value may differ by its last bfloat16 bit; nearly
    all are equal. An adapter refreshed after an in-place change equals one made afresh."""
    from peft import LoraConfig, get_peft_model

    from rlhf import decode_native
    from rlhf.decode import Adapter, _pairs_of_16, adapted_at_decode

    # the layout by hand: [c, p, j, e] is padded[16 c + j, 2 p + e]
    padded = torch.zeros(16, 4)
    padded[:3] = torch.arange(12.0).view(3, 4)
    pairs = _pairs_of_16(padded)
    assert pairs.shape == (1, 2, 16, 2)
    assert pairs[0, :, :3].tolist() == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [10, 11]]]
    assert not pairs[0, :, 3:].any()

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = torch.nn.Linear(41, 24, bias=False), torch.nn.Linear(41, 37, bias=False)

    torch.manual_seed(0)
    model = get_peft_model(Two(), LoraConfig(r=5, lora_alpha=10, target_modules=["q", "k"],
                                             rank_pattern={"k": 19}, alpha_pattern={"k": 7}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    layers = [model.base_model.model.q, model.base_model.model.k]
    assert adapted_at_decode(layers)
    adapter = Adapter.of(layers)
    assert adapter.scaling is None and adapter.segments[:, 4].tolist() == [2.0, 7 / 19]
    assert adapter.segments[:, 0].tolist() == [0, 6]  # each module's rows of u from an even row
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.mul_(1.5)
    stale = adapter.delta(torch.ones(1, 41).bfloat16())
    adapter.refresh(layers)
    fresh, through_torch = Adapter.of(layers), Adapter.of(layers)
    through_torch.refresh(layers, native=False)  # where the C++ step is not built
    assert not torch.equal(stale, adapter.delta(torch.ones(1, 41).bfloat16()))
    for name in ("a", "b", "a_blocks", "b_blocks"):
        assert torch.equal(getattr(adapter, name), getattr(fresh, name)), name
        assert torch.equal(getattr(adapter, name), getattr(through_torch, name)), name
    portable = [False] + ([True] if decode_native.module().native_pairs() else [])
    equal = total = 0
    for rows in range(1, 7):
        x, y = torch.randn(rows, 1, 41).bfloat16(), torch.randn(rows, 1, 61).bfloat16()
        want = y + adapter.delta(x)
        for native in portable:
            got = decode_native.module().adapt(x, y.clone(), adapter.a_blocks, adapter.b_blocks, adapter.segments,
                                               native)
            assert torch.allclose(got.float(), want.float(), rtol=2 ** -7, atol=1e-3)
            equal, total = equal + int((got == want).sum()), total + got.numel()
    assert equal / total > 0.95
