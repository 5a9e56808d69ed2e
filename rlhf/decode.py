"""A fixed-shape decode loop of our own for Llama-shaped causal LMs: the fast generation path.

``transformers``' ``generate()`` spends most of a token on this CPU in Python and framework work
(per-step mask building, cache bookkeeping, logits processors, thirty decoder layers of module
calls with their hooks), not in the matrix products: the bundled model's weights in bfloat16 are
270 MB, which the machine streams in a fraction of the 60 ms a token took. This loop runs the same
arithmetic with far fewer operations:

* the weights are packed (``PackedWeights``): q, k and v of a layer in one bfloat16 matrix, gate
  and up in another, so a layer is four matrix products. What does not train is packed once and
  reused (in PPO's LoRA policy: every base weight and the LM head); an adapter that trains is
  applied beside its packed base at every token as peft applies it (``Adapter``), so the adapter
  sampled from is always the current one and nothing is packed again after an update. Callers that
  sample many batches from a model that does not change meanwhile (``PackedWeights.kept``) get the
  adapters merged into the packed matrices instead;
* the key/value cache is allocated once at full length (prompt + new tokens) and written in place;
* the batch keeps its full width to the end (finished rows produce padding), sampling
  (temperature, top-k, top-p, or greedy) runs on tensors, and the loop stops when every row ended.

Its precision copies what a forward under bfloat16 autocast does (the training forward of
``bf16_autocast``): matrix products and attention in bfloat16 with float32 accumulation, the
residual stream, norms and rotary embeddings in float32, the LM head in float32 on its largest
logits (``top_exact_logits``). So the log-probabilities of the sampled tokens match the training
forward to the tolerance PPO's ``approxkl`` measures (tests/ppo/test_decode.py).

``supports(model)`` says whether a model can take this path (a Llama-style decoder: RMSNorm, SiLU
gated MLP, rotary embeddings, no biases, no sliding window, weights present rather than ZeRO-3
partitions); callers fall back to ``generate()`` and say so otherwise.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf import decode_native
from rlhf.lora import lora_layer_type, lora_variant, merged_weight
from rlhf.ppo.rollout import TOP_EXACT, bf16_linear, top_exact_logits

SUPPORTED_TYPES = ("llama",)


def _backbone(model):
    """(causal LM, its decoder stack) under any PEFT wrapper."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lm, getattr(lm, "model", None)


def unsupported_reason(model) -> str | None:
    """Why ``model`` cannot take the fast path, or None when it can."""
    lm, decoder = _backbone(model)
    config = getattr(lm, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "attention or MLP biases"
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "sliding_window", None):
        return "activation other than SiLU or a sliding window"
    if decoder is None or not hasattr(decoder, "rotary_emb"):
        return "no rotary embedding module"
    if any(getattr(p, "ds_id", None) is not None or p.numel() == 0 for p in lm.parameters()):
        return "weights partitioned by DeepSpeed ZeRO-3"
    LoraLayer = lora_layer_type()
    variants = {v for m in model.modules() if isinstance(m, LoraLayer) and (v := lora_variant(m))}
    if variants:
        return f"a LoRA variant ({', '.join(sorted(variants))}: its merged weight is not base + scaling B A)"
    return None


def supports(model) -> bool:
    return unsupported_reason(model) is None


# ---------------------------------------------------------------------------------------------------
# Weights


def packing_available(device) -> bool:
    """Whether oneDNN can hold bfloat16 weights in its own layout on ``device`` (CPUs with it)."""
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack(matrix: torch.Tensor, rows: int = 4) -> torch.Tensor:
    """A bfloat16 weight in oneDNN's own layout, for ``bf16_linear``.

    Given a plain bfloat16 weight, ``F.linear`` has oneDNN reorder it into its blocked layout at
    every call: for the few rows a decode step multiplies, that reordering costs as much as the
    product (bundled model, batch 4: the 30 layers' products took 18.6 ms per token plain and 12.0
    packed; the LM head 4.4 and 2.3). Packing once per generation call removes it; the products are
    the same, bit for bit. ``rows``: the batch oneDNN chooses its layout for (any batch runs).
    """
    return torch.ops.mkldnn._reorder_linear_weight(matrix, rows)


@dataclass(eq=False)
class Adapter:
    """The LoRA adapters of one product's modules (q, k and v; or gate and up; or one), applied beside the
    packed base weight as peft's LoRA layer computes them under bfloat16 autocast (the training forward):
    ``y = bf16(base(x) + bf16(bf16(bf16(x A^T) B^T) * scaling))`` per module, each product in bfloat16
    with float32 accumulation. Made once per run and given the current A and B at each call after they
    changed (``refresh``: a few copies per module, a few MB), so an optimizer step never sends the base
    weights through oneDNN's reordering again (75 ms a rollout batch for the bundled model).

    The modules' A are stacked (one product gives every module's ``x A^T``), each from an even row with
    a zero row after an odd rank, and their B laid block-diagonally, zero elsewhere (one product gives
    every module's ``u B^T``; the zeros add nothing). ``a_blocks``, ``b_blocks`` and ``segments`` are the
    same numbers laid out for the C++ step's loops (``rlhf.decode_native``), which take sixteen output
    columns and two terms at a time (``_pairs_of_16``), so a token reads the adapters as a few
    sequential streams (the 270 MB of base weights streamed in between leave none of them in cache),
    and where the processor has AVX512-BF16 one instruction multiplies and adds a pair of terms for
    sixteen columns.
    """
    a: torch.Tensor          # (R, in) bfloat16: the modules' A stacked (a view of a_rows)
    b: torch.Tensor          # (out, R) bfloat16: their B, block-diagonal (times b_times)
    scale: torch.Tensor      # (out,) float32: each output column's module scaling
    a_blocks: torch.Tensor   # (ceil(R / 16), ceil(in / 2), 16, 2) bfloat16: _pairs_of_16(a_rows)
    b_blocks: torch.Tensor   # flat bfloat16: per module _pairs_of_16 of its B, zero-padded
    segments: torch.Tensor   # (modules, 6) float64: first (even) and end row of u, first and end column,
                             # scaling, where the module's blocks start in b_blocks
    a_rows: torch.Tensor     # (16 x ceil(R / 16), in rounded up to even) bfloat16: a, zero-padded
    b_padded: list           # per module its B in bfloat16, zero-padded to (16 x blocks, even columns)
    scaling: float | None = None  # the modules' scaling when they share one (peft's usual case)
    b_times: float = 1.0     # what ``b`` is multiplied by: the shared scaling when it is a power of two

    @classmethod
    def of(cls, linears) -> "Adapter":
        """The adapters of LoRA layers with one active adapter each (``adapted_at_decode``)."""
        weights = [_lora_weights(linear) for linear in linears]
        scalings = [float(linear.scaling[linear.active_adapters[0]]) for linear in linears]
        width = weights[0][0].shape[1]
        segments, b_padded, row, column, offset = [], [], 0, 0, 0
        for (a, b), scaling in zip(weights, scalings):
            rank, out = a.shape[0], b.shape[0]
            b_padded.append(torch.zeros(_padded(out), _even(rank), dtype=torch.bfloat16))
            segments.append((row, row + rank, column, column + out, scaling, offset))
            row, column, offset = row + _even(rank), column + out, offset + b_padded[-1].numel()
        a_rows = torch.zeros(_padded(row), _even(width), dtype=torch.bfloat16)
        adapter = cls(a=a_rows[:row, :width], b=torch.zeros(column, row, dtype=torch.bfloat16),
                      scale=torch.cat([torch.full((b.shape[0],), s) for (_, b), s in zip(weights, scalings)]),
                      a_blocks=torch.zeros(_pairs_of_16(a_rows).shape, dtype=torch.bfloat16),
                      b_blocks=torch.zeros(offset, dtype=torch.bfloat16),
                      segments=torch.tensor(segments, dtype=torch.float64), a_rows=a_rows, b_padded=b_padded,
                      scaling=scalings[0] if len(set(scalings)) == 1 else None)
        # A power of two multiplies exactly: bf16(bf16(u B^T) * 2) is bf16(u (2 B)^T), one operation fewer
        # per product in the prompt pass (away from float32's limits, where the model is not).
        if adapter.scaling is not None and math.frexp(adapter.scaling)[0] == 0.5:
            adapter.b_times = adapter.scaling
        adapter.refresh(linears)
        return adapter

    def refresh(self, linears, native: bool = True) -> None:
        """Take the current A and B of ``linears`` (the layers it was made from), in place: in one C++ call
        where the step is built (12 to 37 us a product for the bundled model; a few copies per module
        through torch cost ten times that), else through torch."""
        weights = [_lora_weights(linear) for linear in linears]
        with torch.no_grad():
            if native and decode_native.available():
                decode_native.module().lay_out([a for a, _ in weights], [b for _, b in weights], self.segments,
                                               self.a_rows, self.b, self.a_blocks, self.b_blocks, self.b_times)
                return
            for (a, b), segment, padded in zip(weights, self.segments.tolist(), self.b_padded):
                (k0, k1, o0, o1), offset = map(int, segment[:4]), int(segment[5])
                self.a_rows[k0:k1, :a.shape[1]].copy_(a)
                padded[:b.shape[0], :b.shape[1]].copy_(b)
                self.b[o0:o1, k0:k1].copy_(padded[:b.shape[0], :b.shape[1]]).mul_(self.b_times)
                blocks = _pairs_of_16(padded)
                self.b_blocks[offset:offset + padded.numel()].view(blocks.shape).copy_(blocks)
            self.a_blocks.copy_(_pairs_of_16(self.a_rows))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """What the adapters add to the base product of ``x`` (bfloat16), rounded to bfloat16."""
        part = F.linear(F.linear(x, self.a), self.b)
        if self.scaling is None:
            return (part.float() * self.scale).to(torch.bfloat16)
        if self.scaling != self.b_times:  # bfloat16 times a number: computed in float32 and rounded, as above
            part.mul_(self.scaling)
        return part


def _lora_weights(linear) -> tuple[torch.Tensor, torch.Tensor]:
    """A LoRA layer's active adapter's A (rank, in) and B (out, rank) weights."""
    name = linear.active_adapters[0]
    return linear.lora_A[name].weight, linear.lora_B[name].weight


def _padded(n: int) -> int:
    return -(-n // 16) * 16


def _even(n: int) -> int:
    return n + n % 2


def _pair_layout(linears) -> torch.Tensor:
    """The layers' (merged) weights stacked in bfloat16, zero-padded to whole runs of 16 rows and an even
    width, in the layout of ``_pairs_of_16``."""
    matrix = torch.cat([merged_weight(linear).to(torch.bfloat16) for linear in linears])
    rows, cols = matrix.shape
    padded = F.pad(matrix, (0, _even(cols) - cols, 0, _padded(rows) - rows))
    return _pairs_of_16(padded).contiguous()


def _pairs_of_16(padded: torch.Tensor) -> torch.Tensor:
    """(16 x runs, 2 x pairs) -> (runs, pairs, 16, 2), a view: ``padded.T`` in runs of 16 of its columns,
    each run's rows two by two, the two values of each column side by side (``[c, p, j, e]`` is
    ``padded[16 c + j, 2 p + e]``): the layout of the C++ adapter loops."""
    rows, cols = padded.shape
    return padded.view(rows // 16, 16, cols // 2, 2).permute(0, 2, 1, 3)


def adapted_at_decode(linears) -> bool:
    """Whether the adapters of ``linears`` are applied at decode time beside their packed base (``Adapter``):
    every one a LoRA layer with one active adapter, not merged or switched off, whose base weight does not
    train while its A and B do. Otherwise the adapters are merged into the packed matrix."""
    LoraLayer = lora_layer_type()
    for linear in linears:
        if (not isinstance(linear, LoraLayer) or linear.merged or linear.disable_adapters
                or getattr(linear, "fan_in_fan_out", False)):
            return False
        names = [n for n in linear.active_adapters if n in linear.lora_A]
        if len(names) != 1 or len(linear.active_adapters) != 1 or linear.get_base_layer().weight.requires_grad:
            return False
        if not (linear.lora_A[names[0]].weight.requires_grad or linear.lora_B[names[0]].weight.requires_grad):
            return False
    return True


@dataclass
class PackedLayer:
    input_norm: torch.Tensor    # (hidden,) float32
    qkv: torch.Tensor           # (q + 2 kv widths, hidden) bfloat16
    o: torch.Tensor             # (hidden, heads * head_dim) bfloat16
    post_norm: torch.Tensor     # (hidden,) float32
    gate_up: torch.Tensor       # (2 * intermediate, hidden) bfloat16
    down: torch.Tensor          # (hidden, intermediate) bfloat16
    # the adapters applied beside each product at decode time (None: none, or merged into the matrix)
    qkv_adapter: Adapter | None = None
    o_adapter: Adapter | None = None
    gate_up_adapter: Adapter | None = None
    down_adapter: Adapter | None = None


# model -> {slot: (what the matrix was made from, the matrix)}; weakly held, and not a model attribute,
# so a deep copy of the model does not try to copy oneDNN's tensors.
_remembered: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class PackedWeights:
    """The decoder's weights for one generation call, bfloat16 matrices packed per layer.

    A matrix whose sources did not change since an earlier call is not made again: every matrix is
    remembered on the model with what it was made from (each source tensor's identity, storage and
    in-place version, and each LoRA layer's switches), and it is reused while those are the same. It is
    remembered when none of its sources trains (``requires_grad`` off), or for every matrix when
    ``keep`` (``kept``). Where a LoRA adapter trains over a frozen base (PPO's policy), the base is
    packed alone, once per run, and the adapter applied beside it at every token (``Adapter``), unless
    ``keep``: then it is merged into the matrix, which is reused while the model does not change.
    Otherwise a matrix whose sources train (full fine-tuning) is made at every call and not held after
    it, so training holds no copy.
    """

    def __init__(self, model, rows: int = 4, keep: bool = False):
        lm, decoder = _backbone(model)
        config = lm.config
        self.lm, self.decoder, self.config = lm, decoder, config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.packed = packing_available(lm.device)
        self._memo, self._keep, self._rows = _remembered.setdefault(model, {}), keep, rows
        memo, remembered = self._memo, self._remembered
        self._products = []  # per layer and product: (slot, the layers its matrix is made from)

        def bf16(slot, *linears):
            """The layers' weights stacked, in bfloat16 (each cast before stacking: fewer bytes moved)."""
            def make():
                parts = [merged_weight(linear).to(torch.bfloat16) for linear in linears]
                matrix = torch.cat(parts) if len(parts) > 1 else parts[0]
                return pack(matrix, rows) if self.packed else matrix
            return remembered(slot, linears, make)

        def product(slot, *linears):
            """(matrix, adapter applied beside it or None) for the layers' product. Whether the adapters
            are applied apart is decided again only when the layers' tensors or switches change other
            than in place; the adapter's copies are refreshed from the current A and B at every call."""
            if keep:
                self._products.append((slot, linears))
                return bf16(slot, *linears), None
            sources = [t for linear in linears for t in _sources(linear)]
            structure = (tuple((id(t), t.data_ptr(), t.dtype, t.shape, t.requires_grad) for t in sources),
                         tuple(_switches(linear) for linear in linears))
            hit = memo.get((slot, "adapter"))
            if hit is None or hit[0] != structure:
                hit = memo[(slot, "adapter")] = (structure,
                                                 Adapter.of(linears) if adapted_at_decode(linears) else None)
            elif hit[1] is not None:
                # at every call, not only when the in-place version moved: a write through ``.data``
                # (a checkpoint loaded, weights synchronised) changes the values without moving it
                hit[1].refresh(linears)
            adapter = hit[1]
            if adapter is not None:
                linears = tuple(linear.get_base_layer() for linear in linears)
            self._products.append((slot, linears))
            return bf16(slot, *linears), adapter

        self.layers = []
        with torch.no_grad():
            for i, layer in enumerate(decoder.layers):
                attn, mlp = layer.self_attn, layer.mlp
                qkv, qkv_adapter = product((i, "qkv"), attn.q_proj, attn.k_proj, attn.v_proj)
                o, o_adapter = product((i, "o"), attn.o_proj)
                gate_up, gate_up_adapter = product((i, "gate_up"), mlp.gate_proj, mlp.up_proj)
                down, down_adapter = product((i, "down"), mlp.down_proj)
                self.layers.append(PackedLayer(
                    input_norm=layer.input_layernorm.weight.float(), qkv=qkv, o=o,
                    post_norm=layer.post_attention_layernorm.weight.float(), gate_up=gate_up, down=down,
                    qkv_adapter=qkv_adapter, o_adapter=o_adapter, gate_up_adapter=gate_up_adapter,
                    down_adapter=down_adapter))
            self.final_norm = decoder.norm.weight.float()
            head = lm.get_output_embeddings()
            self.head = remembered("head", [head], lambda: merged_weight(head).float())
            self.head_bf16 = bf16("head_bf16", head)
            self.embed = decoder.embed_tokens

    def _remembered(self, slot, linears, make):
        """``make()``, or the matrix made for ``slot`` from the same sources by an earlier call."""
        sources = [t for linear in linears for t in _sources(linear)]
        key = (self.packed, self._rows, tuple(_state(t) for t in sources),
               tuple(_switches(linear) for linear in linears))
        hit = self._memo.get(slot)
        if hit is not None and hit[0] == key:
            return hit[1]
        self._memo.pop(slot, None)  # an outdated copy is freed before the new one is made
        matrix = make()
        if self._keep or not any(t.requires_grad for t in sources):
            self._memo[slot] = (key, matrix)
        return matrix

    def step_pairs(self) -> list[torch.Tensor]:
        """Each layer's four matrices (qkv, o, gate_up, down) again, in the layout of the C++ step's own
        product for a few rows (``rlhf.decode_native``: ``_pairs_of_16`` of the bfloat16 matrix,
        zero-padded), which streams the weights on every core where oneDNN's packed product of so few
        rows does not (4.9 ms a token for the bundled model's layers at batch 4, against 6.4). Used
        where the processor has AVX512-BF16, at up to 8 rows, or its tile registers (AMX), at up to 16
        (``decode_native``'s ``pair_fits``). Made on first use and
        remembered with the packed matrices (another 212 MB for the bundled model); an empty tensor
        for a matrix made per call (its weights train: the copy would cost more than it saves)."""
        pairs = self.__dict__.get("_pairs")
        if pairs is None:
            pairs = []
            with torch.no_grad():
                for slot, linears in self._products:
                    if self._keep or not any(t.requires_grad for linear in linears for t in _sources(linear)):
                        pairs.append(self._remembered((slot, "pairs"), linears, lambda: _pair_layout(linears)))
                    else:
                        pairs.append(torch.empty(0))
            self._pairs = pairs
        return pairs

    def head_pairs(self) -> torch.Tensor:
        """The LM head in the layout of the C++ product for a few rows (``_pair_layout``), for
        ``decode_native.head_logits``: made on first use and remembered like ``step_pairs`` (another 56 MB
        for the bundled model); an empty tensor where the head trains."""
        pairs = self.__dict__.get("_head_pairs")
        if pairs is None:
            head = self.lm.get_output_embeddings()
            pairs = torch.empty(0)
            if self._keep or not any(t.requires_grad for t in _sources(head)):
                with torch.no_grad():
                    pairs = self._remembered(("head", "pairs"), [head], lambda: _pair_layout([head]))
            self._head_pairs = pairs
        return pairs

    @classmethod
    def kept(cls, model) -> "PackedWeights":
        """Every matrix remembered on ``model`` (and reused while its sources are unchanged), also those
        of weights that train: for callers that generate several batches from a model that does not
        train meanwhile (``generate_replies``: candidates, held-out replies), so a job packs once rather
        than once per batch (about 0.2 s each for the bundled model). The copies stay on the model
        (about 270 MB for the bundled one) until the model goes."""
        return cls(model, keep=True)


def _sources(linear) -> list[torch.Tensor]:
    """The tensors a linear layer's (merged) weight is made from: its weight, or a LoRA layer's base
    weight and its active adapters' A and B."""
    if not isinstance(linear, lora_layer_type()):
        return [linear.weight]
    sources = [linear.get_base_layer().weight]
    if not (linear.merged or linear.disable_adapters):
        for name in linear.active_adapters:
            if name in linear.lora_A:
                sources += [linear.lora_A[name].weight, linear.lora_B[name].weight]
    return sources


def _state(tensor: torch.Tensor) -> tuple:
    """Changes when the tensor is replaced, given other storage (``.data = ``) or changed in place (an
    optimizer step, ``load_state_dict``)."""
    return id(tensor), tensor.data_ptr(), tensor._version, tensor.dtype


def _switches(linear) -> tuple:
    """A LoRA layer's switches that decide its merged weight (adapters off, active, merged, scales)."""
    if not isinstance(linear, lora_layer_type()):
        return ()
    return (linear.disable_adapters, tuple(linear.active_adapters), linear.merged,
            tuple(sorted(linear.scaling.items())))


# ---------------------------------------------------------------------------------------------------
# The forward pass over the pre-allocated cache


def _product(x, matrix, adapter: Adapter | None):
    """``x @ matrix.T`` in bfloat16 (``bf16_linear``), plus the adapter's part where it is applied apart."""
    y = bf16_linear(x, matrix)
    return y if adapter is None else y.add_(adapter.delta(x))


def _rotate(x, cos, sin):
    """Rotary embedding as transformers' Llama applies it (cos/sin of shape (batch, 1, tokens, head_dim))."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _attend_one(q, keys, values, masked) -> torch.Tensor:
    """Attention of one query per row, (batch, 1, heads x head_dim) bfloat16: what CPU flash attention
    (``scaled_dot_product_attention`` on bfloat16) computes, in a few operations instead of its 120 us
    of set-up per call (4 ms of a batch-4 token over 30 layers on this CPU).

    As flash attention does: scores from the bfloat16 query and keys with float32 accumulation; their
    exponentials less the row's largest, rounded to bfloat16 for the product with the values (float32
    accumulation), which is divided by the exponentials' float32 sum only then; bfloat16 out. That is
    torch's CPU flash attention bit for bit on 99% of its outputs here (the rest differ in the order of
    the additions), where normalising before the rounding, as a softmax does, matched 62%.
    ``q``: (batch, heads, 1, head_dim); ``keys``/``values``: (batch,
    kv_heads, length, head_dim) (grouped-query: head h reads kv head h // (heads / kv_heads), as
    transformers' ``repeat_kv``); ``masked``: boolean (batch, 1, 1, length), True where a key is hidden.
    """
    batch, heads, _, head_dim = q.shape
    kv_heads = keys.shape[1]
    grouped = q.float().view(batch, kv_heads, heads // kv_heads, head_dim)
    scores = torch.matmul(grouped, keys.float().transpose(-1, -2)).mul_(head_dim ** -0.5)
    weights = scores.masked_fill_(masked, float("-inf"))
    weights = weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
    total = weights.sum(dim=-1, keepdim=True)
    mixed = torch.matmul(weights.to(torch.bfloat16).float(), values.float()).div_(total)
    return mixed.to(torch.bfloat16).view(batch, 1, heads * head_dim)


def _forward(w: PackedWeights, ids, positions, keys, values, start: int, mask, rotary=None) -> torch.Tensor:
    """Final normed hidden state of the last token of each row, float32 (batch, hidden).

    ``ids``/``positions``: (batch, tokens) written at cache slots ``start`` to ``start + tokens``;
    ``keys``/``values``: per layer (batch, kv_heads, max_len, head_dim) bfloat16, filled in place;
    ``mask``: boolean (batch, 1, tokens, start + tokens), True where a query may attend;
    ``rotary``: (cos, sin) of shape (batch, 1, tokens, head_dim) in place of computing them from ``positions``.
    ``decode`` runs its one-token steps in C++ instead where it can (``rlhf.decode_native``).
    """
    batch, tokens = ids.shape
    end = start + tokens
    hidden = w.embed(ids).float()
    if rotary is None:
        cos, sin = w.decoder.rotary_emb(hidden, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    else:
        cos, sin = rotary
    q_width, kv_width = w.heads * w.head_dim, w.kv_heads * w.head_dim
    size = hidden.shape[-1:]
    masked = ~mask if tokens == 1 else None
    for layer, k_cache, v_cache in zip(w.layers, keys, values):
        x = F.rms_norm(hidden, size, layer.input_norm, w.eps).to(torch.bfloat16)
        qkv = _product(x, layer.qkv, layer.qkv_adapter)
        # q and k side by side in one rotation (the same cos/sin for every head).
        qk = _rotate(qkv[..., :q_width + kv_width].view(batch, tokens, w.heads + w.kv_heads, w.head_dim)
                     .transpose(1, 2), cos, sin).to(torch.bfloat16)
        q, k = qk.split((w.heads, w.kv_heads), dim=1)
        k_cache[:, :, start:end] = k
        v_cache[:, :, start:end] = qkv[..., q_width + kv_width:].view(batch, tokens, w.kv_heads, w.head_dim).transpose(1, 2)
        if masked is not None:
            attended = _attend_one(q, k_cache[:, :, :end], v_cache[:, :, :end], masked)
        else:
            attended = F.scaled_dot_product_attention(
                q, k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=mask,
                enable_gqa=w.kv_heads != w.heads).transpose(1, 2).reshape(batch, tokens, q_width)
        hidden = hidden + _product(attended, layer.o, layer.o_adapter)
        x = F.rms_norm(hidden, size, layer.post_norm, w.eps).to(torch.bfloat16)
        gate, up = _product(x, layer.gate_up, layer.gate_up_adapter).chunk(2, dim=-1)
        hidden = hidden + _product(F.silu(gate) * up, layer.down, layer.down_adapter)
    return F.rms_norm(hidden[:, -1], size, w.final_norm, w.eps)


# ---------------------------------------------------------------------------------------------------
# Sampling


def logits_of(w: PackedWeights, hidden: torch.Tensor) -> torch.Tensor:
    """The next token's logits for the final normed ``hidden`` (batch, width), as ``top_exact_logits``:
    in one C++ call for as many rows as the step's own product takes (``pair_fits``: 16 on the tile
    registers, 8 with AVX512-BF16; the head streamed on every core, the exact top entries chosen in one
    pass: 1.22 ms a token at batch 4 instead of 1.62), else the bfloat16 product of the packed head and
    torch's ``topk``."""
    # rows checked first, so a larger batch never makes the head's copy in the pairs layout
    if decode_native.available() and hidden.shape[0] <= decode_native.module().pair_rows():
        pairs = w.head_pairs()
        if decode_native.module().pair_fits(hidden.shape[0], pairs):
            return decode_native.module().head_logits(hidden, pairs, w.head, TOP_EXACT)
    return top_exact_logits(hidden, w.head, w.head_bf16)


def process_logits(logits, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The scores ``generate()`` samples from: logits / temperature, then top-k and top-p filtering
    (filtered entries -inf, at least one token kept), in that order as transformers' warpers do."""
    scores = logits / temperature if temperature != 1.0 else logits
    if top_k and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        scores = scores.masked_fill(_top_p_drop(scores, top_p), float("-inf"))
    return scores


def _top_p_drop(scores, top_p: float, candidates=(256, 2048)) -> torch.Tensor:
    """Boolean (batch, vocab): the entries top-p filtering removes, as transformers' TopPLogitsWarper.

    The warper sorts each row's whole vocabulary and drops a token when its cumulative probability
    from the bottom is at most 1 - top_p, i.e. when the tokens ranked above it already hold top_p of
    the mass (the top token always stays). A full sort of 49,152 entries per row per token took most
    of a candidate batch's sampling time on this CPU. The kept tokens are few (on the quickstart's
    candidates: median 6, at most 1,776), so they are looked for among the ``candidates`` largest
    (``topk``); where even those hold less than top_p of a row's mass the whole vocabulary is
    sorted as before.
    """
    probs = scores.softmax(dim=-1)
    for k in candidates:
        if k >= probs.shape[-1]:
            break
        top, index = probs.topk(k, dim=-1)  # descending
        if bool((top.sum(dim=-1) >= top_p).all()):  # every kept token is among them
            above = top.cumsum(dim=-1) - top  # mass ranked above each
            drop = torch.ones_like(probs, dtype=torch.bool)
            return drop.scatter_(-1, index, above >= top_p)
    ordered, order = probs.sort(dim=-1)  # ascending, as the warper
    drop = ordered.cumsum(dim=-1) <= 1 - top_p
    drop[..., -1] = False
    return drop.scatter(-1, order, drop)


@dataclass
class DecodeOutput:
    """What ``generate(..., return_dict_in_generate=True, output_scores=True)`` returns, as TRL reads it."""
    sequences: torch.Tensor          # (batch, prompt + new tokens)
    scores: tuple | None = None      # new tokens x (batch, vocab) float32 processed scores


def sample(scores: torch.Tensor) -> torch.Tensor:
    """One token per row drawn from ``softmax(scores)`` (entries of -inf are never drawn).

    By the inverse of the cumulative distribution: one uniform draw per row and a binary search.
    ``torch.multinomial`` draws an exponential variate for every entry of the vocabulary, 3.9 ms of a
    token's 40 at batch 4 on this CPU for 49,152 entries; this takes 0.1 ms, with the same distribution.
    """
    probs = scores.softmax(dim=-1)
    cumulative = probs.cumsum(dim=-1)
    total = cumulative[:, -1:]
    draw = torch.rand(total.shape, device=scores.device, dtype=cumulative.dtype) * total
    # The first token whose cumulative probability exceeds the draw: one with probability above 0.
    token = torch.searchsorted(cumulative, draw, right=True)
    if (token == scores.shape[-1]).any():  # rounding put a draw at the total: the last token with any
        last = (probs > 0).cumsum(dim=-1).argmax(dim=-1, keepdim=True)
        token = torch.minimum(token, last)
    return token.squeeze(1)


@torch.no_grad()
def decode(model, input_ids, attention_mask=None, *, max_new_tokens: int, do_sample: bool = True,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_token_id=None,
           pad_token_id: int = 0, output_scores: bool = False, weights: PackedWeights | None = None) -> DecodeOutput:
    """Sample up to ``max_new_tokens`` after left-padded ``input_ids`` (batch, prompt) from ``model``.

    Draws from torch's global random generator (seed it for reproducible samples). Finished rows get
    ``pad_token_id`` until every row has produced one of ``eos_token_id`` or the limit is reached.
    """
    w = weights or PackedWeights(model)
    device = input_ids.device
    batch, prompt = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    valid = attention_mask.bool()
    total = prompt + max_new_tokens
    shape = (batch, w.kv_heads, total, w.head_dim)
    keys = [torch.zeros(shape, dtype=torch.bfloat16, device=device) for _ in w.layers]
    values = [torch.zeros(shape, dtype=torch.bfloat16, device=device) for _ in w.layers]
    # Keys a query may see: the row's real prompt tokens, then every generated slot up to its own.
    key_valid = torch.cat([valid, torch.ones(batch, max_new_tokens, dtype=torch.bool, device=device)], dim=1)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    causal = torch.ones(prompt, prompt, dtype=torch.bool, device=device).tril()
    # A padding query sees nothing but must see something (an all-masked row is NaN); it sees itself.
    prefill_mask = (causal & valid[:, None, None, :]) | torch.eye(prompt, dtype=torch.bool, device=device)
    eos = torch.tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else
                       [] if eos_token_id is None else [eos_token_id], device=device)
    hidden = _forward(w, input_ids, positions, keys, values, 0, prefill_mask)
    # The one-token steps in C++ where it was built, over float32 copies of the cache (the same values)
    step_caches = decode_native.float_caches(keys, values) if decode_native.available() else None
    logits = logits_of(w, hidden)
    new_positions = positions[:, -1:] + 1 + torch.arange(max_new_tokens, device=device)
    cos_all, sin_all = w.decoder.rotary_emb(hidden[:, None], new_positions)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    tokens, scores = [], []
    for step in range(max_new_tokens):
        if do_sample:
            step_scores = process_logits(logits, temperature, top_k, top_p)
            token = sample(step_scores)
        else:
            step_scores = logits
            token = logits.argmax(dim=-1)
        token = torch.where(unfinished, token, torch.full_like(token, pad_token_id))
        tokens.append(token)
        if output_scores:
            scores.append(step_scores)
        if eos.numel():
            unfinished &= ~torch.isin(token, eos)
        if step + 1 == max_new_tokens or not unfinished.any():
            break
        slot = prompt + step
        cos, sin = cos_all[:, None, step:step + 1], sin_all[:, None, step:step + 1]
        mask = key_valid[:, None, None, :slot + 1]
        if step_caches is not None:
            hidden = decode_native.step(w, w.embed(token[:, None]).float(), cos, sin, *step_caches, slot, ~mask)
        else:
            hidden = _forward(w, token[:, None], None, keys, values, slot, mask, rotary=(cos, sin))
        logits = logits_of(w, hidden)
    sequences = torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)
    return DecodeOutput(sequences, tuple(scores) if output_scores else None)
