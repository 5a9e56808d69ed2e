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
