"""``rlhf ppo`` config: one typed model, YAML then one CLI flag per field (rlhf.config)."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, model_validator

from rlhf.guards import GUARD_FIELDS, GuardFields
from rlhf.lora import LoraSettings


class PPORunConfig(GuardFields):
    """``rlhf ppo``: fine-tune a policy against a reward model with TRL's PPO."""

    policy: str = Field("bundled", description="policy model directory, HF id, or 'bundled'")
    reward_model: str = Field(..., description="reward model directory (a *ForSequenceClassification, num_labels=1)")
    prompts_file: str = Field(..., description="prompts: 'rlhf app export --prompts' output, JSONL/TXT/JSON or a datasets dir")
    eval_prompts_file: str | None = Field(None, description="fixed prompts for sample replies (default: first prompts)")
    output_dir: str = Field("runs/ppo", description="run directory: config, checkpoints, logs, TensorBoard")
    seed: int = Field(0, description="random seed")
    dtype: str = Field("float32", description="weights dtype: float32 or bfloat16")
    bf16_autocast: bool = Field(False, description="bfloat16 autocast for training steps (mixed precision; output "
                                "layers stay float32)")
    bf16_rollouts: bool = Field(False, description="generate and score rollouts in bfloat16: autocast for the passes "
                                "without gradients, bfloat16 weights while generating (the fast loop: packed, the "
                                "LoRA adapter applied beside them; generate(): copies with it merged); output "
                                "layers stay float32")
    generation_backend: str = Field("fast", pattern="^(fast|transformers)$", description="with bf16_rollouts: "
                                    "'fast' samples rollouts with rlhf.decode's loop (Llama-shaped models; else, and "
                                    "under ZeRO-3, transformers' generate(), said in the log), 'transformers' always "
                                    "with generate()")
    freeze_gc: bool = Field(True, description="move the objects alive when training starts out of the garbage "
                            "collector's reach (gc.freeze), so the two gc.collect() calls TRL's loop makes per update "
                            "cost nothing instead of about 0.3 s each")
    reply_logits_only: bool = Field(True, description="the policy's LM head computes logits for the reply's "
                                    "columns only (the last response_length + 1), zeros before them: TRL's PPO reads "
                                    "no other column, and the head's product over the prompt is about a fifth of a "
                                    "forward pass (float32 in training)")
    reward_from_reference: bool = Field(True, description="when the reward model's backbone (or the guard's) holds "
                                        "the very weights of the reference pass (the default probe on the frozen "
                                        "policy), score the rollouts from the reference pass's final hidden states "
                                        "instead of running the same network again; checked on the first batch, "
                                        "said in the log (rlhf.ppo.reuse)")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA on the policy (on unless "
                               "lora.enabled is false); the reference is then the policy with the adapter off")
    value_lora: bool = Field(False, description="train the value model through a LoRA adapter (lora's r, alpha and "
                             "target modules) plus its score head, instead of in full: no gradients or AdamW state "
                             "for its 135M backbone weights (ignored under ZeRO-3)")

    value_lora_top_layers: int | None = Field(None, ge=1, description="with value_lora: the adapter in the last N "
                                              "transformer layers only (unset: all); the backward pass of the value "
                                              "model stops below them")

    max_prompt_tokens: int = Field(256, ge=1, description="prompts longer than this (chat template applied) are dropped")
    response_length: int = Field(32, ge=1, description="new tokens per reply at most")
    temperature: float = Field(0.7, gt=0.0, description="sampling temperature of the rollouts")

    total_updates: int = Field(10, ge=1, description="PPO updates (rollout batch + optimisation) in the run")
    per_device_batch_size: int = Field(4, ge=1, description="rollouts per process per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per rollout batch")
    num_mini_batches: int = Field(1, ge=1, description="minibatches per rollout batch")
    num_ppo_epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    learning_rate: float = Field(1e-5, gt=0.0, description="AdamW learning rate (linear decay)")
    kl_coef: float = Field(0.05, ge=0.0, description="KL penalty coefficient to the reference")
    kl_estimator: str = Field("k1", pattern="^(k1|k3)$", description="KL estimator: k1 or k3")
    whiten_rewards: bool = Field(False, description="whiten per-token rewards (needs minibatches of >= 8 per process)")
    missing_eos_penalty: float | None = Field(1.0, description="subtracted from the score of replies that never end with EOS")
    center_rewards: bool = Field(True, description="centre and scale scores with reward_stats.json of the reward model")
    allow_weak_reward_model: bool = Field(False, description="train against a reward model whose gate.json says it "
                                          "did not pass the gate (recorded in run_info.json and the model card)")
    cliprange: float = Field(0.2, gt=0.0, description="PPO policy clip range")
    cliprange_value: float = Field(0.2, gt=0.0, description="value clip range")
    vf_coef: float = Field(0.1, ge=0.0, description="value loss coefficient")
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="discount")
    lam: float = Field(0.95, ge=0.0, le=1.0, description="GAE lambda")

    save_every: int = Field(5, ge=1, description="write a resumable checkpoint every N updates (and at the end, and on SIGTERM)")
    keep_checkpoints: int = Field(2, ge=1, description="complete checkpoints kept (oldest removed)")
    stop_after_updates: int | None = Field(None, ge=1, description="stop this invocation (with a checkpoint) after N updates in total; resume later")
    sample_every: int = Field(5, ge=1, description="sample replies to the evaluation prompts every N updates")
    num_eval_prompts: int = Field(4, ge=0, description="evaluation prompts sampled (0: none)")

    @model_validator(mode="after")
    def _lora_on_by_default(self):
        if self.lora.enabled is None:
            self.lora.enabled = True
        return self

    def fingerprint(self) -> str:
        """Hash of the fields that define the training run; a checkpoint from another run is refused.

        Fields that only steer this invocation (stopping, saving, sampling) are left out, so a run
        may be resumed with another ``stop_after_updates`` or checkpoint interval.
        """
        data = self.model_dump(mode="json", exclude=RESUMABLE_FIELDS)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# Fields that may change between a run and its resumption.
RESUMABLE_FIELDS = {"output_dir", "save_every", "keep_checkpoints", "stop_after_updates", "sample_every",
                    "num_eval_prompts", "eval_prompts_file", "freeze_gc", "allow_weak_reward_model",
                    "generation_backend", "reply_logits_only", "reward_from_reference"} | GUARD_FIELDS
