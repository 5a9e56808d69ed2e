"""``RewardTrainConfig``: every setting of ``rlhf reward train``, one flag per field (``--lora.r 8``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rlhf.config import Config
from rlhf.lora import LoraSettings


# Why a quarter of the depth: on the efficacy suite's six learnable rules (two published scorers and four
# lexical rules, noisy and disagreeing reviewers; 64 rankings, 12 splits each, the bundled model's replies),
# the probe's held-out accuracy against the noiseless rule, averaged over the rules, was 0.806 on the last
# layer (30 of 30), 0.831 on layer 20, 0.837 on 12, 0.849 on 8 and 0.855 on 4; layer 8 beat layer 30 on every
# rule (you_share 0.835 against 0.732, offers_help 0.895 against 0.829). Surface properties of a reply
# (words, sentiment, length of words) are read best below the top, where the model has not yet turned
# them into its next-token prediction; a quarter, not lower, leaves room for preferences about meaning.
PROBE_DEPTH = 0.25


class RewardTrainConfig(Config):
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
    method: Literal["finetune", "probe", "probe_then_finetune"] = Field(
        "probe", description="probe (default): a K-wise Bradley-Terry linear probe on the frozen model's features "
        "(see pooling and probe_depth), L2 chosen on the validation split, written into the score head (seconds, no "
        "fine-tuning; on the bundled model's replies and the efficacy suite's six learnable rules it closed 58 to 84 "
        "percent of the distance from chance to the reviewers' ceiling on held-out pairs; on an earlier bench, on the "
        "last layer, about 71 percent, and fine-tuning a LoRA 31 percent); finetune: train the model (full or LoRA) on the rankings, "
        "early-stopped on validation; probe_then_finetune: the probe as the starting head, then fine-tuning (LP-FT)",
    )
    pooling: Literal["mean", "last"] = Field(
        "mean", description="the features the probe reads (and the score head of probe and probe_then_finetune): "
        "mean: the mean of the last kept layer's hidden states over prompt and reply (recorded as score_pooling in "
        "config.json; every loader re-attaches it); last: the last token's, as a plain score head reads. finetune "
        "alone always reads the last token"
    )
    probe_depth: float = Field(
        PROBE_DEPTH, gt=0.0, le=1.0, description="method probe: the share of the base model's decoder layers the "
        "reward model keeps, from the bottom (rounded up: 8 of the bundled model's 30); the probe reads the last kept "
        "layer through the model's final norm, and the saved reward model is that shorter network. 1 keeps every "
        "layer. The other methods keep every layer"
    )
    train_half: Literal["all", "first", "second"] = Field(
        "all", description="train on every training prompt, or on one half of them only (by a hash of the prompt, "
        "independent of the test and validation splits): 'rlhf loop' trains its guard's second reward model on the "
        "second half, a judge with its own errors that PPO's updates are also scored by"
    )
    validation_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of the training prompts held out (by prompt, apart from the test "
        "split) to choose the schedule on: the probe's L2, and the early-stopping update"
    )
    validation_every: int | None = Field(
        None, ge=1, description="finetune: score the validation split every N optimizer steps (default: about "
        "four times per epoch)"
    )
    early_stopping_patience: int = Field(
        3, ge=1, description="finetune: stop after this many validation checks without a lower validation loss, and "
        "keep the weights of the best check"
    )
    gate_threshold: float = Field(
        0.5, ge=0.5, lt=1.0, description="the gate passes when the lower end of the 95 percent interval of "
        "held-out accuracy exceeds this (0.5: better than chance with confidence)"
    )
    gate_shuffles: int = Field(
        99, ge=0, le=10_000, description="the gate's permutation test: the probe cross-fitted over every prompt of "
        "the export (5 folds), on the real rankings and on them shuffled this many times; pass only when the real "
        "rankings beat every shuffle (p at most 1 / (N + 1): 0.01 at 99); 0 skips it (the interval alone, which "
        "once let a rule that cannot be learned through on 20 held-out prompts). About a second per cross-fit; "
        "run only when the interval passes; needs a validation split"
    )

    @field_validator("gate_shuffles")
    @classmethod
    def _enough_shuffles(cls, value: int) -> int:
        if 0 < value < 19:
            raise ValueError(f"{value} shuffles cannot show p below 0.05 (that needs 19 or more); use 0 to skip the test")
        return value

    allow_weak_reward_model: bool = Field(
        False, description="train and save even when the held-out split is too small for the gate's interval "
        "(recorded in gate.json and the model card: the gate is then not measured)"
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
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapter (off unless lora.enabled "
                               "is true, or --dp); the score head stays fully trainable beside it")
    dp: bool = Field(False, description="differentially private training (DP-SGD through Opacus) of the LoRA "
                     "adapter and score head; the privacy unit is the export's 'unit' (customer, else conversation, "
                     "else prompt); needs epsilon; batch_size is then the expected units per step")
    epsilon: float | None = Field(None, gt=0.0, description="--dp: the privacy budget epsilon per unit for the "
                                  "whole training run")
    delta: float | None = Field(None, gt=0.0, lt=1.0, description="--dp: the delta of (epsilon, delta)-DP "
                                "(default: 1 / (10 x training units))")
    max_grad_norm: float = Field(1.0, gt=0.0, description="--dp: each unit's summed gradient is clipped to this "
                                 "L2 norm before the noise is added")
    dp_baseline: bool = Field(False, description="--dp: also train the same schedule without clipping and noise "
                              "and report its held-out accuracy beside the private model's (doubles the time)")

    @model_validator(mode="after")
    def _lora_off_by_default(self):
        if self.lora.enabled is None:
            self.lora.enabled = self.dp  # DP-SGD trains the adapter and head only
        if self.dp and self.method != "finetune":
            if "method" in self.model_fields_set:
                raise ValueError(f"method {self.method} fits a probe on the training data without noise, so it "
                                 "cannot be private; use method finetune with dp (the DP-SGD LoRA fine-tune)")
            self.method = "finetune"
        return self


class RewardEvalConfig(Config):
    """``rlhf reward eval``: score held-out rankings with a reward checkpoint and report how well it ranks them."""

    checkpoint: str = Field(..., description="reward model directory written by 'rlhf reward train'")
    dataset: str = Field(..., description="'rlhf app export' folder, datasets directory, .jsonl/.json or .parquet")
    split: Literal["test", "train", "all"] = Field("test", description="which split to score")
    test_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="held-out share of prompts when the data has no split (same hash as training)"
    )
    max_length: int | None = Field(
        None, ge=8, description="longer replies are left out, counted (default: the checkpoint's training max_length)"
    )
    batch_size: int = Field(16, ge=1, description="replies per forward pass")
    output: str | None = Field(None, description="where eval.json and plots go (default: CHECKPOINT/eval)")
