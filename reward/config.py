"""``RewardConfig``: every setting of ``rlhf reward train``, one flag per field (``--lora.r 8``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf.config import Config


class LoraSection(Config):
    """LoRA adapter (peft, task SEQ_CLS: the ``score`` head stays fully trainable beside it)."""

    enabled: bool = Field(False, description="train a LoRA adapter instead of every weight (merged on save)")
    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="adapter scaling numerator (lora_alpha)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="module names that get an adapter",
    )


class RewardConfig(Config):
    """``rlhf reward train``: a reward model from preference data (export folder or TRL dataset)."""

    model: str = Field("bundled", description="base model: directory, HF id, or 'bundled'")
    policy_model: str | None = Field(
        None, description="the policy PPO will train; its vocabulary must match (default: same as model)"
    )
    data: str | None = Field(
        None, description="'rlhf app export' folder, datasets directory, .jsonl/.json or .parquet file"
    )
    output_dir: str = Field("runs/reward", description="checkpoint directory written at the end")
    mode: Literal["kwise", "pairwise"] = Field(
        "kwise", description="kwise: every pair of a ranking in one batch, each reply scored once; "
        "pairwise: TRL's stock RewardTrainer on chosen/rejected pairs",
    )
    weight_by_agreement: bool = Field(
        False, description="kwise: weight each pair by the share of reviewers of that prompt who agree on it"
    )
    test_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="held-out share of prompts when the data has no test split"
    )
    max_length: int = Field(512, ge=8, description="tokens per prompt+reply; longer replies are dropped and counted")
    batch_size: int = Field(4, ge=1, description="per process and step: rankings (kwise) or pairs (pairwise)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="steps per optimizer update")
    learning_rate: float = Field(1e-4, gt=0.0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0, description="share of steps with linear warm-up")
    num_epochs: float = Field(1.0, gt=0.0, description="passes over the training data")
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: num_epochs decides)")
    seed: int = Field(0, description="random seed (score head init, data order)")
    bf16: bool = Field(False, description="bfloat16 autocast (mixed precision; on CPU too)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    logging_steps: int = Field(10, ge=1, description="log loss and accuracy every N steps")
    report_to: list[str] = Field(
        default_factory=lambda: ["tensorboard"], description="tensorboard, wandb, or none"
    )
    eval_batch_size: int = Field(16, ge=1, description="replies per forward pass when scoring")
    stats_max_replies: int = Field(
        2000, ge=10, description="training replies scored for reward_stats.json (mean, std)"
    )
    lora: LoraSection = Field(default_factory=LoraSection)
