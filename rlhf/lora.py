"""LoRA, one section for every stage: the ``lora:`` block of the reward and policy configs, and the
peft ``LoraConfig`` built from it. Light at import (peft is imported when a config is built)."""

from __future__ import annotations

from pydantic import Field

from rlhf.config import Config


class LoraSettings(Config):
    """LoRA adapter instead of full fine-tuning.

    ``enabled`` left unset takes the stage's default: on for the PPO policy (the reference is then the
    same weights with the adapter switched off), off for the reward model (whose ``score`` head stays
    fully trainable beside an adapter). Every resolved config saved beside an output says true or false.
    """

    enabled: bool | None = Field(None, description="train a LoRA adapter instead of every weight (merged on export "
                                 "and save); unset: the stage's default (PPO policy: on, reward model: off)")
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names that get an adapter")
    modules_to_save: list[str] = Field(default_factory=list,
                                       description="modules trained in full beside the adapter (not under ZeRO-3)")


def lora_config(settings: LoraSettings, task_type: str):
    """peft's ``LoraConfig`` for ``settings``.

    ``task_type``: "CAUSAL_LM" for a policy; "SEQ_CLS" for a reward model, which makes peft keep the
    newly initialised ``score`` head fully trainable beside the adapter.
    """
    from peft import LoraConfig

    return LoraConfig(task_type=task_type, r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules),
                      modules_to_save=list(settings.modules_to_save) or None)


def lora_layer_type() -> type:
    """peft's LoRA layer class (imported on first use: importing peft loads transformers)."""
    from peft.tuners.lora import LoraLayer

    return LoraLayer


def lora_variant(layer) -> str | None:
    """The name of a LoRA variant (peft's DoRA, ...) one of ``layer``'s active adapters uses, else None.
    Such a layer's weight is not base + scaling x B @ A (DoRA rescales it by a learned magnitude), so
    neither the fast loop nor the bfloat16 weight swap may merge it that way."""
    if layer.merged or layer.disable_adapters:
        return None
    for name in layer.active_adapters:
        variant = getattr(layer, "lora_variant", {}).get(name)
        if variant is not None:
            return type(variant).__name__
    return None


def merged_weight(layer):
    """A linear layer's weight with its active LoRA adapters merged in: base + scaling x B @ A for each
    (peft's ``get_delta_weight``), without touching the layer. A plain linear layer's weight, or a merged
    or disabled LoRA layer's base weight, as it is (the same tensor). Check ``lora_variant`` first: a
    variant's weight is not this sum.

    For float32 weights in the usual layout the sum is one ``addmm``: peft's product, scaling and sum are
    three passes over the full matrix (0.07 of the 0.16 s it took to pack the bundled model's LoRA policy).
    """
    import torch

    if not isinstance(layer, lora_layer_type()):
        return layer.weight
    weight = layer.get_base_layer().weight
    if layer.merged or layer.disable_adapters:
        return weight
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        if layer.fan_in_fan_out or not weight.dtype == a.dtype == b.dtype == torch.float32:
            weight = weight + layer.get_delta_weight(name)
        else:
            weight = torch.addmm(weight, b, a, alpha=layer.scaling[name])
    return weight
