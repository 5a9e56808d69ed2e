"""The reward model's pass read from the reference pass, when both are the same frozen network.

The default reward model (``rlhf reward train``'s probe) is a linear head on the frozen policy's
mean-pooled layer: its backbone holds exactly the policy's base weights. With a LoRA policy the
reference is that same base with the adapter off, and every PPO update runs it over the very query +
reply ids the reward model then scores (TRL cuts the reply after its first EOS; generation has
already padded everything after it). So the reward pass, and the guard's second reward model when it
is a probe on the same base too, would compute the reference pass's final hidden states again: one
full forward pass of the model each, a twelfth of a default update on the bundled model.

The reward model may also keep only the bottom layers of that network (``rlhf reward train``'s
``probe_depth``: 8 of the bundled model's 30): its pass is then the reference pass's output of that
layer through the final norm, which the reference pass computes on the way.

``ReferenceStates`` keeps the final hidden states of the latest reference passes (and the outputs of
the layers shallower score models end at) with the inputs they were computed from;
``read_from_reference`` makes a score model's backbone return them when it is called, without
gradients, on the same inputs (ids, attention mask and positions all equal), and run as before
otherwise. Nothing is approximated: the first reused call is also computed in full
and compared, and any difference switches the reuse off for the run, said in the log.
"""

from __future__ import annotations

import collections
import functools

import torch

# The first reused pass must match the full pass this closely (largest absolute difference of the
# final hidden states, relative to their largest magnitude); the same kernels on the same inputs give 0.
MATCH_TOLERANCE = 1e-5


def body_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer under a causal LM or score head (``model.model`` for Llama-shaped models)."""
    return getattr(model, model.base_model_prefix)


def frozen_weights_differ(body: torch.nn.Module, reference_body: torch.nn.Module) -> str | None:
    """Why ``body`` (a score model's backbone) does not compute what ``reference_body`` does, or None
    when every weight is equal. LoRA layers of the reference are read through their base layers and
    their adapter weights skipped (the reference pass runs with the adapter off)."""
    theirs = {}
    for name, tensor in reference_body.named_parameters():
        if ".lora_" in name or "lora_magnitude" in name:
            continue
        theirs[name.replace(".base_layer.", ".")] = tensor
    mine = dict(body.named_parameters())
    if type(body).__name__ != type(reference_body).__name__:
        return "its backbone is another architecture"
    depth = depth_of(body)
    below = {name for name in theirs if not _layer_at_or_above(name, depth)}
    if depth is None or depth > (depth_of(reference_body) or 0) or mine.keys() != below:
        return "its backbone's layers are not the policy's"
    if depth < depth_of(reference_body) and not isinstance(getattr(body, "norm", None), torch.nn.Module):
        return f"its backbone ends at layer {depth} without a final norm named 'norm'"
    with torch.no_grad():
        for name, tensor in mine.items():
            other = theirs[name]
            if tensor.shape != other.shape or tensor.dtype != other.dtype or not torch.equal(tensor, other):
                return f"its backbone's weights differ from the policy's base ({name})"
    return None


def depth_of(body: torch.nn.Module) -> int | None:
    """Decoder layers of a backbone (``body.layers``), or None for a layout this does not know."""
    layers = getattr(body, "layers", None)
    return len(layers) if isinstance(layers, torch.nn.ModuleList) else None


def _layer_at_or_above(name: str, depth: int | None) -> bool:
    """Whether a parameter name (``layers.12.mlp...``) belongs to decoder layer ``depth`` or above (0-based)."""
    parts = name.split(".")
    return depth is not None and len(parts) > 1 and parts[0] == "layers" and parts[1].isdigit() and int(parts[1]) >= depth


class ReferenceStates:
    """Final hidden states of the latest reference passes, with the inputs they came from."""

    def __init__(self, keep: int = 16):
        self.entries: collections.deque = collections.deque(maxlen=keep)
        self.recording = False  # set while the policy's LoRA reference pass runs (adapter off)
        self.reused = 0  # passes answered from here
        self.depths: set[int] = set()  # depths of shallower score models: those layers' outputs are kept too
        self._layer_outputs: dict[int, torch.Tensor] = {}

    def attach(self, reference_body: torch.nn.Module, always: bool) -> None:
        """Record the reference body's passes (and the outputs of the layers in ``depths``)."""
        for depth in sorted(self.depths):
            reference_body.layers[depth - 1].register_forward_hook(self._layer_hook(depth, always))
        reference_body.register_forward_hook(self.record_hook(always), with_kwargs=True)

    def _layer_hook(self, depth: int, always: bool):
        def hook(module, args, output):
            if not torch.is_grad_enabled() and (always or self.recording):
                self._layer_outputs[depth] = output[0] if isinstance(output, tuple) else output
            return output
        return hook

    def record_hook(self, always: bool):
        """A forward hook (with kwargs) for the reference model's body: keeps its inputs and output
        when ``always`` (a separate reference model) or while ``recording`` is set."""
        def hook(module, args, kwargs, output):
            if torch.is_grad_enabled() or not (always or self.recording):
                return output
            ids, mask, positions = kwargs.get("input_ids"), kwargs.get("attention_mask"), kwargs.get("position_ids")
            if ids is None or mask is None or positions is None or mask.dim() != 2:
                return output
            layers = {depth: self._layer_outputs.pop(depth, None) for depth in self.depths}
            self.entries.append((ids, mask, positions, output.last_hidden_state, layers))
            return output
        return hook

    def find(self, input_ids, attention_mask, position_ids, depth: int | None = None):
        """The recorded final hidden states for exactly these inputs (or, with ``depth``, that layer's
        output before the final norm), or None."""
        if input_ids is None or attention_mask is None or position_ids is None:
            return None
        for ids, mask, positions, hidden, layers in reversed(self.entries):
            if (ids.shape == input_ids.shape and torch.equal(ids, input_ids) and torch.equal(mask, attention_mask)
                    and torch.equal(positions, position_ids)):
                return hidden if depth is None else layers.get(depth)
        return None


def read_from_reference(score_model: torch.nn.Module, states: ReferenceStates, name: str, say=print,
                        reference_depth: int | None = None) -> None:
    """Make ``score_model``'s backbone answer a call without gradients on inputs the reference pass
    has just run with the reference's final hidden states, or, when the backbone keeps only the
    bottom layers of the reference's ``reference_depth``, with its own final norm of the reference's
    output of its last layer (its forward hooks, such as mean pooling, still apply). The first such
    call is checked against a full pass."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    body = body_of(score_model)
    forward = body.forward
    checked = {"done": False, "on": True}
    depth = depth_of(body)
    shallower = depth is not None and reference_depth is not None and depth < reference_depth
    if shallower:
        states.depths.add(depth)

    @functools.wraps(forward)
    def run(*args, **kwargs):
        if args or torch.is_grad_enabled() or not checked["on"]:
            return forward(*args, **kwargs)
        hidden = states.find(kwargs.get("input_ids"), kwargs.get("attention_mask"), kwargs.get("position_ids"),
                             depth if shallower else None)
        if hidden is None:
            return forward(*args, **kwargs)
        if shallower:
            hidden = body.norm(hidden)
        if not checked["done"]:
            checked["done"] = True
            output = forward(*args, **kwargs)
            full = output.last_hidden_state.detach()
            gap = float((full.float() - hidden.float()).abs().max()) / float(full.abs().max().clamp_min(1e-6))
            if gap > MATCH_TOLERANCE:
                checked["on"] = False
                say(f"{name}: computed in full (its pass differs from the reference pass by {gap:.1e} of its scale)")
                return output
            say(f"{name}: read from the reference pass (same frozen weights and inputs; checked on the first "
                f"batch, largest difference {gap:.1e})")
        states.reused += 1
        return BaseModelOutputWithPast(last_hidden_state=hidden,
                                       hidden_states=(hidden,) if kwargs.get("output_hidden_states") else None)

    body.forward = run
