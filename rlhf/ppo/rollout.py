"""Rollouts in bfloat16: generation and the reference, value and reward passes of each PPO update.

Most of a PPO update on a CPU is spent without gradients: sampling the replies token by token, then
scoring them with the reference, value and reward models. Those passes read every weight for little
arithmetic, so they are bound by memory traffic, and bfloat16 halves it (the CPU's AMX units do the
arithmetic). The pieces:

* ``float32_output_layer`` (with ``bf16_autocast`` or ``bf16_rollouts``): the output layers, the LM
  head and the score heads, run in float32 on the hidden states of a bfloat16 pass. Rounding logits
  of 20 to 30 to bfloat16's 8 bits is most of the log-probability error of a bfloat16 pass:
  measured on the bundled model against a float32 forward, 0.5 * mean (delta log p)^2 per token is
  0.00087 for an autocast forward with a bfloat16 head and 0.00042 with a float32 head.
* ``autocast_without_grad`` (``bf16_rollouts``): a model's forward runs under bfloat16 autocast when
  gradients are off, and unchanged when they are on, so the training step keeps its own precision
  setting (``bf16_autocast``).
* ``bf16_generation_weights`` (``bf16_rollouts``): while generating, every linear layer of the
  policy reads a bfloat16 copy of its weight, made once per rollout batch instead of once per token
  (autocast casts a frozen weight again at every call), with the LoRA adapter merged in; the LoRA
  layers are swapped out for their base layers, so no adapter code runs per token. The original
  float32 tensors and modules are put back afterwards, so the reference (adapter off) never drifts
  as it would with merge then unmerge. The LM head gets a bfloat16 copy too, used by
  ``top_exact_logits``: logits from the bfloat16 product with the largest 64 per row recomputed in
  float32. Generation log-probabilities are then 0.00025 from a float32 forward by the measure
  above, the same as with a float32 head, at 61 to 68 ms per token instead of 81 to 93 (bundled
  model, batch 4; float32 generation takes about 100 to 130).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from rlhf.lora import lora_layer_type, lora_variant, merged_weight


def _bf16_autocast(device_type: str):
    return torch.autocast(device_type, dtype=torch.bfloat16)


def autocast_without_grad(module: torch.nn.Module, device_type: str) -> None:
    """Run ``module.forward`` under bfloat16 autocast whenever gradients are disabled."""
    forward = module.forward

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return forward(*args, **kwargs)
        with _bf16_autocast(device_type):
            return forward(*args, **kwargs)

    module.forward = run


def float32_output_layer(layer: torch.nn.Module) -> None:
    """Run ``layer`` (a head producing logits or scores) in float32, also inside autocast regions
    (a layer whose weights are not float32, as with ``dtype: bfloat16``, is left as it is)."""
    if layer.weight.dtype != torch.float32:
        return
    forward = layer.forward

    @functools.wraps(forward)
    def run(hidden, *args, **kwargs):
        with torch.autocast(hidden.device.type, enabled=False):
            fast = getattr(layer, "generation_weight", None)
            if fast is not None and not torch.is_grad_enabled():
                return top_exact_logits(hidden, layer.weight, fast, layer.bias)
            return forward(hidden.float(), *args, **kwargs)

    layer.forward = run


def reply_logits_only(layer: torch.nn.Module, keep: int) -> None:
    """Run the LM head ``layer`` on the last ``keep`` columns of a longer sequence only; the logits
    of the columns before them are zeros.

    TRL's PPO reads the policy's logits at columns ``context_length - 1`` to ``-2`` only (the
    reference pass and the training forward both slice ``output.logits[:, context_length - 1:-1]``):
    with replies of at most ``response_length`` tokens those are among the last
    ``response_length + 1``. The head's product over the prompt's columns, which nothing reads, is
    about a fifth of a forward pass's arithmetic, and more in training, where the head is float32.
    A call of ``keep`` columns or fewer (generation) is unchanged.
    """
    forward = layer.forward

    @functools.wraps(forward)
    def run(hidden, *args, **kwargs):
        skip = hidden.shape[-2] - keep if hidden.dim() == 3 else 0
        if skip <= 0:
            return forward(hidden, *args, **kwargs)
        return torch.nn.functional.pad(forward(hidden[:, skip:], *args, **kwargs), (0, 0, skip, 0))

    layer.forward = run


TOP_EXACT = 64


def bf16_linear(x, weight):
    """``x @ weight.T`` for a bfloat16 weight, plain or laid out by oneDNN in advance
    (``rlhf.decode.pack``; the same products, bit for bit, without oneDNN reordering the weight at
    every call)."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
    return torch.nn.functional.linear(x, weight)


def top_exact_logits(hidden, weight, weight_bf16, bias=None, k: int = TOP_EXACT):
    """Logits from one bfloat16 product, with the ``k`` largest of each row recomputed in float32.

    The bfloat16 product reads half the bytes of a float32 one (the LM head is a fifth of the
    policy's weights, read again for every generated token), but rounds logits of 20 to 30 by up to
    0.06. A sampled token's log-probability depends on its own logit and on the largest ones (they
    make up the normaliser), so those are made exact; the rest keep bfloat16 error, weighted by the
    little probability they carry.
    """
    logits = bf16_linear(hidden.to(torch.bfloat16), weight_bf16).float()
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    exact = (weight[top] * hidden.float().unsqueeze(-2)).sum(-1)
    if bias is not None:
        logits += bias
        exact += bias[top]
    return logits.scatter_(-1, top, exact)


def _linear_layers(policy: torch.nn.Module):
    """(parent, attribute, linear layer, LoRA layer or None) for every linear layer of the policy but
    its output layer; for a LoRA layer, the linear layer is its base layer."""
    LoraLayer = lora_layer_type()
    output = policy.get_output_embeddings()
    adapters = [m for m in policy.modules() if isinstance(m, LoraLayer)]
    inside = {id(m) for lora in adapters for m in lora.modules()}  # reached through their LoRA layer only
    for parent in policy.modules():
        if id(parent) in inside:
            continue
        for attribute, module in parent.named_children():
            if isinstance(module, LoraLayer):
                yield parent, attribute, module.get_base_layer(), module
            elif isinstance(module, torch.nn.Linear) and module is not output:
                yield parent, attribute, module, None


@contextlib.contextmanager
def bf16_generation_weights(policy: torch.nn.Module):
    """Inside the block each linear layer of ``policy`` holds a bfloat16 copy of its weight; a LoRA
    layer is replaced by its base layer holding the merged weight (base plus the active adapters'
    delta), so generation runs no adapter code. A merged LoRA layer only has its base weight swapped; a
    LoRA variant's layer (DoRA: not base + B A) is left as it is and runs its own forward under
    autocast. Everything is put back afterwards: the original float32 tensors, not a subtraction of
    the delta."""
    weights, modules = [], []
    head = policy.get_output_embeddings()
    try:
        if getattr(head, "weight", None) is not None and head.weight.dtype == torch.float32:
            head.generation_weight = head.weight.detach().to(torch.bfloat16)  # read by float32_output_layer
        with torch.no_grad():
            for parent, attribute, linear, lora in list(_linear_layers(policy)):
                if linear.weight.dtype != torch.float32 or (lora is not None and lora_variant(lora)):
                    continue  # a DoRA layer keeps its float32 weights and its own forward (under autocast)
                merged = merged_weight(lora if lora is not None else linear).detach()
                if lora is not None and not lora.merged and not lora.disable_adapters:
                    modules.append((parent, attribute, lora))
                    setattr(parent, attribute, linear)
                weights.append((linear.weight, linear.weight.data))
                linear.weight.data = merged.to(torch.bfloat16)
        yield
    finally:  # also when building the copies failed half-way
        if head is not None:
            head.generation_weight = None
        for parent, attribute, lora in modules:
            setattr(parent, attribute, lora)
        for weight, original in weights:
            weight.data = original


def bf16_generate(policy: torch.nn.Module, device_type: str, swap_weights: bool, backend: str = "transformers",
                  say=print) -> None:
    """Make ``policy.generate`` sample under bfloat16 autocast, with bfloat16 (merged) weights if
    ``swap_weights``; with ``backend`` "fast", by rlhf.decode's loop where the model and the
    generation settings allow it (not under ZeRO-3, where ``swap_weights`` is off), said by ``say``."""
    generate = policy.generate
    fast = None
    if backend == "fast":
        from rlhf.decode import unsupported_reason

        reason = "weights partitioned by DeepSpeed ZeRO-3" if not swap_weights else unsupported_reason(policy)
        if reason:
            say(f"generation: transformers' generate() with bfloat16 weights (the fast decode loop cannot run: {reason})")
        else:
            from rlhf import decode_native

            say("generation: the fast decode loop (rlhf.decode), bfloat16 weights packed once, a training LoRA adapter "
                f"applied beside them at every token; {decode_native.describe()}")
            fast = policy

    @functools.wraps(generate)
    def run(*args, **kwargs):
        if fast is not None and not args:
            output = _fast_generate(fast, **kwargs)
            if output is not None:
                return output
        weights = bf16_generation_weights(policy) if swap_weights else contextlib.nullcontext()
        with torch.no_grad(), weights, _bf16_autocast(device_type):
            output = generate(*args, **kwargs)
        scores = getattr(output, "scores", None)
        if scores is not None and scores and scores[0].dtype != torch.float32:
            output.scores = tuple(s.float() for s in scores)
        return output

    policy.generate = run


def route_generate(policy: torch.nn.Module, say=print, blocked: str | None = None) -> bool:
    """Answer ``policy.generate(input_ids=..., attention_mask=..., generation_config=...)``, the call TRL's
    GRPO and RLOO make for their groups of replies, with rlhf.decode's loop; any other call, and options
    the loop lacks (beams, repetition penalty, ...), go to ``generate()`` unchanged. The loop's sampling
    is in bfloat16 (as PPO's rollouts); the trainers take the old log-probabilities from a training
    forward, not from generation, so the loss is computed as before. ``blocked``: a reason the caller
    knows the loop cannot run (ZeRO-3). One log line, through ``say``, tells which path is taken."""
    from rlhf.decode import unsupported_reason

    reason = blocked or unsupported_reason(policy)
    if reason:
        say(f"generation: transformers' generate() (the fast decode loop cannot run: {reason})")
        return False
    say("generation: the fast decode loop (rlhf.decode), bfloat16 weights packed once, a training LoRA adapter "
        "applied beside them at every token")
    generate = policy.generate

    @functools.wraps(generate)
    def run(*args, **kwargs):
        if not args:
            output = _fast_generate(policy, **kwargs)
            if output is not None:
                return output
        return generate(*args, **kwargs)

    policy.generate = run
    return True


# generate() options the fast loop reproduces at these values only; anything else goes to generate().
_PLAIN = {"num_beams": 1, "repetition_penalty": 1.0, "min_new_tokens": None, "min_p": None,
          "no_repeat_ngram_size": 0, "bad_words_ids": None, "typical_p": 1.0, "num_return_sequences": 1}


def _fast_generate(policy, input_ids=None, attention_mask=None, generation_config=None,
                   return_dict_in_generate=False, output_scores=False, **kwargs):
    """TRL's ``generate(...)`` call answered by rlhf.decode, or None when it asks for what the loop lacks."""
    from rlhf.decode import decode

    config = generation_config
    if config is None or input_ids is None or kwargs:
        return None
    for name, plain in _PLAIN.items():
        value = getattr(config, name, None)
        if value is not None and value != plain:
            return None
    defaults = policy.generation_config
    eos = config.eos_token_id if config.eos_token_id is not None else defaults.eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else defaults.pad_token_id
    out = decode(policy, input_ids, attention_mask, max_new_tokens=config.max_new_tokens,
                 do_sample=bool(config.do_sample), temperature=config.temperature or 1.0, top_k=int(config.top_k or 0),
                 top_p=config.top_p if config.top_p is not None else 1.0, eos_token_id=eos,
                 pad_token_id=pad if pad is not None else 0, output_scores=output_scores)
    return out if return_dict_in_generate else out.sequences
