"""bfloat16 rollouts (rlhf.ppo.rollout) on the tiny model: what changes inside, what comes back after."""

from __future__ import annotations

import pytest
import torch

from rlhf.lora import LoraSettings, lora_config
from rlhf.ppo.rollout import (autocast_without_grad, bf16_generate, bf16_generation_weights, float32_output_layer,
                              top_exact_logits)


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
    return policy.eval()


def _prompt(tiny_model_dir):
    from rlhf.modeling import load_tokenizer

    tok = load_tokenizer(tiny_model_dir, padding_side="left")
    texts = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
             for t in ("Where is my parcel?", "How do I change my password?")]
    return tok, tok(texts, return_tensors="pt", padding=True)


def test_generation_weights_are_merged_bf16_inside_and_the_same_tensors_after(lora_policy):
    from peft.tuners.lora import LoraLayer

    lora_layers = {name: m for name, m in lora_policy.named_modules() if isinstance(m, LoraLayer)}
    q_proj = next(m for name, m in lora_layers.items() if name.endswith("q_proj"))
    base = q_proj.get_base_layer()
    original = base.weight.data
    before = original.clone()
    expected = (before + q_proj.get_delta_weight("default")).to(torch.bfloat16)
    head = lora_policy.get_output_embeddings()

    with bf16_generation_weights(lora_policy):
        assert not any(isinstance(m, LoraLayer) for m in lora_policy.modules())  # no adapter code per token
        assert base.weight.dtype == torch.bfloat16
        # within bfloat16's rounding of the sum (merged_weight adds the delta in one addmm, not as peft does)
        assert torch.allclose(base.weight.data.float(), expected.float(), rtol=2 ** -8, atol=0)
        assert head.weight.dtype == torch.float32  # the output layer keeps its weight (tied to the embeddings)
        assert head.generation_weight.dtype == torch.bfloat16  # and gets a copy for top_exact_logits
    assert head.generation_weight is None

    assert set(lora_layers) == {n for n, m in lora_policy.named_modules() if isinstance(m, LoraLayer)}
    assert base.weight.data_ptr() == original.data_ptr() and torch.equal(base.weight, before)  # put back, not un-merged


def test_generation_weights_are_put_back_when_generation_fails(lora_policy):
    base = next(m for n, m in lora_policy.named_modules() if n.endswith("v_proj.base_layer"))
    original = base.weight.data
    with pytest.raises(RuntimeError, match="boom"):
        with bf16_generation_weights(lora_policy):
            raise RuntimeError("boom")
    assert base.weight.data_ptr() == original.data_ptr() and base.weight.dtype == torch.float32


def _sequence_logprobs(model, sequences, context, pad_id):
    """Log-probabilities of the sampled tokens from one full forward, as TRL's rollout makes it."""
    from trl.experimental.ppo.ppo_trainer import forward

    with torch.no_grad():
        logits = forward(model, sequences, pad_id).logits[:, context - 1:-1] / 0.7
    return torch.log_softmax(logits.float(), -1).gather(-1, sequences[:, context:, None])[..., 0]


def test_bf16_generation_samples_the_adapted_policy_with_float32_scores(lora_policy, tiny_model_dir):
    from transformers import GenerationConfig

    tok, batch = _prompt(tiny_model_dir)
    config = GenerationConfig(max_new_tokens=6, min_new_tokens=6, do_sample=True, temperature=0.7, top_k=0,
                              top_p=1.0, pad_token_id=tok.pad_token_id, eos_token_id=None)
    inner = lora_policy.get_base_model()
    float32_output_layer(inner.get_output_embeddings())
    autocast_without_grad(inner, "cpu")
    bf16_generate(lora_policy, "cpu", swap_weights=True)
    torch.manual_seed(1)
    out = lora_policy.generate(**batch, generation_config=config, return_dict_in_generate=True, output_scores=True)
    assert all(s.dtype == torch.float32 for s in out.scores)
    context = batch["input_ids"].shape[1]
    sampled = out.sequences[:, context:]
    generated = torch.log_softmax(torch.stack(out.scores, 1), -1).gather(-1, sampled[..., None])[..., 0]
    # against the float32 adapted policy (adapter on, not merged): close, not equal
    reference = _sequence_logprobs(lora_policy, out.sequences, context, tok.pad_token_id)
    assert (generated - reference).abs().max() < 0.1
    assert (generated - reference).abs().mean() < 0.02
    with lora_policy.disable_adapter():
        base_logprobs = _sequence_logprobs(lora_policy, out.sequences, context, tok.pad_token_id)
    # the adapter is in the sampled distribution: its log-probs are nearer the adapted policy than the base
    assert (generated - reference).abs().mean() < (generated - base_logprobs).abs().mean()


def test_autocast_only_without_grad_and_float32_head_inside_autocast(tiny_model_dir):
    from rlhf.modeling import load_policy

    model = load_policy(tiny_model_dir, dtype="float32").eval()
    ids = torch.tensor([[5, 17, 300, 42, 7]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    head = model.get_output_embeddings()
    float32_output_layer(head)
    autocast_without_grad(model, "cpu")
    with torch.enable_grad():  # training passes are untouched
        assert torch.equal(model(input_ids=ids).logits.detach(), plain)
    with torch.no_grad():
        fast = model(input_ids=ids).logits
    assert fast.dtype == torch.float32 and not torch.equal(fast, plain)
    assert torch.allclose(fast, plain, atol=0.1)
    hidden = torch.randn(3, head.in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(hidden.to(torch.bfloat16))
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.nn.functional.linear(hidden.to(torch.bfloat16).float(), head.weight))


def test_float32_output_layer_leaves_bfloat16_weights_alone():
    layer = torch.nn.Linear(4, 2, dtype=torch.bfloat16)
    forward = layer.forward
    float32_output_layer(layer)
    assert layer.forward == forward


def test_top_exact_logits_by_hand():
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.001, 0.0]])
    hidden = torch.tensor([[3.0078125, 1.00390625]])  # exact in float32, rounds in bfloat16
    exact = hidden @ weight.T  # [3.0078125, 1.00390625, 4.01171875, 0.0030078125]
    rounded = (hidden.bfloat16() @ weight.bfloat16().T).float()
    assert not torch.equal(rounded, exact)
    got = top_exact_logits(hidden, weight, weight.bfloat16(), k=2)
    assert torch.equal(got[0, [0, 2]], exact[0, [0, 2]])  # the two largest: float32
    assert torch.equal(got[0, [1, 3]], rounded[0, [1, 3]])  # the rest: the bfloat16 product
    bias = torch.tensor([0.5, 0.0, -0.5, 0.0])
    with_bias = top_exact_logits(hidden, weight, weight.bfloat16(), bias, k=2)
    assert torch.equal(with_bias[0, [0, 2]], exact[0, [0, 2]] + bias[[0, 2]])


def test_reply_logits_only_gives_trl_the_same_reply_logits_and_gradients(lora_policy, tiny_model_dir):
    """TRL's forward (reference pass and training forward) with the head on the reply's columns only:
    the columns TRL reads are the same, in value and in the gradient they pass back; the prompt's are zeros."""
    from trl.experimental.ppo.ppo_trainer import forward

    from rlhf.ppo.rollout import reply_logits_only

    tok, batch = _prompt(tiny_model_dir)
    context, reply = batch["input_ids"].shape[1], 5
    torch.manual_seed(0)
    sequences = torch.cat([batch["input_ids"], torch.randint(10, 100, (2, reply))], dim=1)
    float32_output_layer(lora_policy.get_base_model().get_output_embeddings())

    def reply_logits():
        lora_policy.zero_grad()
        logits = forward(lora_policy, sequences, tok.pad_token_id).logits
        logits[:, context - 1:-1].log_softmax(-1)[..., 7].sum().backward()
        grads = [p.grad.clone() for p in lora_policy.parameters() if p.requires_grad]
        return logits.detach(), grads

    full, full_grads = reply_logits()
    reply_logits_only(lora_policy.get_base_model().get_output_embeddings(), reply + 1)
    trimmed, trimmed_grads = reply_logits()
    assert trimmed.shape == full.shape
    assert torch.allclose(trimmed[:, context - 1:-1], full[:, context - 1:-1], atol=1e-5)
    assert torch.equal(trimmed[:, :context - 1], torch.zeros_like(trimmed[:, :context - 1]))
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(trimmed_grads, full_grads))
    # a call of no more columns than it keeps (generation's steps) is unchanged
    hidden = torch.randn(2, 3, lora_policy.config.hidden_size)
    head = lora_policy.get_base_model().get_output_embeddings()
    assert torch.equal(head(hidden), torch.nn.functional.linear(hidden, head.weight))


def test_a_dora_policy_is_never_merged_as_plain_lora(tiny_model_dir):
    """DoRA rescales base + B A by a learned magnitude: the fast loop refuses it (and says why), and the
    bfloat16 weight swap leaves its layers as they are, so generation samples the DoRA policy itself."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from rlhf.decode import unsupported_reason
    from rlhf.modeling import load_policy

    torch.manual_seed(0)
    policy = get_peft_model(load_policy(tiny_model_dir, dtype="float32"),
                            LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, use_dora=True,
                                       target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    assert "LoRA variant (DoraLinearVariant" in unsupported_reason(policy)
    dora = {n: m for n, m in policy.named_modules() if isinstance(m, LoraLayer)}
    plain = next(m for n, m in policy.named_modules() if n.endswith("k_proj"))
    with bf16_generation_weights(policy):
        assert {n: m for n, m in policy.named_modules() if isinstance(m, LoraLayer)} == dora
        assert all(m.get_base_layer().weight.dtype == torch.float32 for m in dora.values())
        assert plain.weight.dtype == torch.bfloat16  # layers without an adapter are still swapped
    tok, batch = _prompt(tiny_model_dir)
    with torch.no_grad():
        expected = policy(**batch).logits[:, -1].float()
        with bf16_generation_weights(policy), torch.autocast("cpu", dtype=torch.bfloat16):
            swapped = policy(**batch).logits[:, -1].float()
        with policy.disable_adapter():
            base = policy(**batch).logits[:, -1].float()
    # the swap changes precision only: nearer the DoRA policy than the base model is
    assert (swapped - expected).abs().mean() < (swapped - base).abs().mean()
