"""``rlhf grpo``, ``rlhf rloo``, ``rlhf dpo`` configs: typed models, YAML then one CLI flag per field.

The fields every policy run shares (policy, LoRA, precision, schedule, checkpoints, sample replies)
sit in ``AlignRunConfig``; the online algorithms add the reward model and the group of replies per
prompt, DPO adds the preference data. Combinations an algorithm cannot use are refused by
``check_run_config`` before any model loads.
"""

from __future__ import annotations

import hashlib
import json
from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from rlhf.config import Config
from rlhf.errors import UserError
from rlhf.guards import GUARD_FIELDS, GuardFields
from rlhf.lora import LoraSettings


class AlignRunConfig(Config):
    """What GRPO, RLOO and DPO runs share with each other and with ``rlhf ppo``."""

    policy: str = Field("bundled", description="policy model directory, HF id, or 'bundled'")
    eval_prompts_file: str | None = Field(None, description="fixed prompts for sample replies (default: the first "
                                          "training prompts)")
    output_dir: str = Field("runs/align", description="run directory: config, checkpoints, logs, TensorBoard")
    seed: int = Field(0, description="random seed")
    dtype: str = Field("float32", description="weights dtype: float32 or bfloat16")
    bf16_autocast: bool = Field(False, description="bfloat16 autocast for training steps (mixed precision; "
                                "the CPU's AMX units make training steps about 3x faster than float32)")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA on the policy (on unless "
                               "lora.enabled is false); the reference is then the policy with the adapter off")
    max_prompt_tokens: int = Field(256, ge=1, description="prompts longer than this (chat template applied) are dropped")
    response_length: int = Field(48, ge=1, description="new tokens per reply at most (sampled in training, greedy "
                                 "for the sample replies)")

    total_updates: int = Field(10, ge=1, description="optimizer updates in the run")
    per_device_batch_size: int = Field(4, ge=1, description="sequences (replies, or pairs for DPO) per process per "
                                       "micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per update")
    learning_rate: float = Field(1e-5, gt=0.0, description="AdamW learning rate (linear decay)")

    save_every: int = Field(5, ge=1, description="write a resumable checkpoint every N updates (and at the end, "
                            "and on SIGTERM)")
    keep_checkpoints: int = Field(2, ge=1, description="complete checkpoints kept (oldest removed)")
    stop_after_updates: int | None = Field(None, ge=1, description="stop this invocation (with a checkpoint) after "
                                           "N updates in total; resume later")
    sample_every: int = Field(5, ge=1, description="sample replies to the evaluation prompts every N updates")
    num_eval_prompts: int = Field(4, ge=0, description="evaluation prompts sampled (0: none)")

    @model_validator(mode="after")
    def _lora_on_by_default(self):
        if self.lora.enabled is None:
            self.lora.enabled = True
        return self

    algorithm: ClassVar[str] = "align"  # overridden by each algorithm's config

    def fingerprint(self) -> str:
        """Hash of the fields that define the training run; a checkpoint from another run is refused."""
        data = self.model_dump(mode="json", exclude=RESUMABLE_FIELDS)
        data["algorithm"] = self.algorithm
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# Fields that may change between a run and its resumption.
RESUMABLE_FIELDS = {"output_dir", "save_every", "keep_checkpoints", "stop_after_updates", "sample_every",
                    "num_eval_prompts", "eval_prompts_file", "allow_weak_reward_model",
                    "generation_backend"} | GUARD_FIELDS


class OnlineRunConfig(AlignRunConfig, GuardFields):
    """GRPO and RLOO: a group of sampled replies per prompt, scored by the reward model."""

    reward_model: str = Field(..., description="reward model directory (a *ForSequenceClassification, num_labels=1)")
    prompts_file: str = Field(..., description="prompts: 'rlhf app export --prompts' output, JSONL/TXT/JSON or a "
                              "datasets dir")
    center_rewards: bool = Field(True, description="centre and scale scores with reward_stats.json of the reward model")
    allow_weak_reward_model: bool = Field(False, description="train against a reward model whose gate.json says it "
                                          "did not pass the gate (recorded in run_info.json and the model card)")
    temperature: float = Field(0.7, gt=0.0, description="sampling temperature of the replies")
    generation_backend: str = Field("fast", pattern="^(fast|transformers)$", description="'fast' samples the groups "
                                    "with rlhf.decode's loop (Llama-shaped models; else, and under ZeRO-3, "
                                    "transformers' generate(), said in the log), 'transformers' always with "
                                    "generate()")
    # Replies to one prompt are compared with each other (GRPO: against their mean and spread; RLOO: each
    # against the mean of the others), so a group needs at least 2. 4 is the smallest group whose
    # baseline is not dominated by one reply, and a batch of 8 replies (2 prompts x 4) costs about one
    # PPO update's generation on this 2-core CPU.
    num_generations: int = Field(4, ge=1, description="replies sampled per prompt (the group); at least 2")
    per_device_batch_size: int = Field(8, ge=1, description="replies per process per micro-batch; the generation "
                                       "batch (x processes x gradient_accumulation_steps) must hold whole groups")
    epsilon: float = Field(0.2, gt=0.0, description="clip range of the policy ratio")
    # TRL's num_iterations (the GRPO paper's mu): PPO's num_ppo_epochs for these two. Sampling is the
    # expensive part on a CPU, so reusing a batch of replies for several steps is cheap per step; the
    # clipped ratio to the policy that sampled them keeps the later steps near it.
    num_iterations: int = Field(1, ge=1, description="optimizer updates on each batch of sampled replies (TRL's "
                                "num_iterations; > 1 reuses them, with the ratio clipped by epsilon); total_updates "
                                "counts optimizer updates, so a run samples total_updates / num_iterations times, "
                                "and total_updates, save_every and stop_after_updates must be multiples of it")
    beta: float = Field(0.05, gt=0.0, description="strength of the KL penalty to the reference (> 0: without it "
                        "nothing holds the policy near the base model)")


class GRPORunConfig(OnlineRunConfig):
    """``rlhf grpo``: TRL's GRPOTrainer against the reward model."""

    output_dir: str = Field("runs/grpo", description="run directory: config, checkpoints, logs, TensorBoard")
    # TRL's GRPOConfig defaults beta=0.0, which drops the reference model entirely: nothing then stops
    # the policy from drifting to whatever the reward model over-scores. 0.04 is the GRPO paper's value
    # (Shao et al. 2024, section 4.2).
    beta: float = Field(0.04, gt=0.0, description="KL penalty to the reference in the loss (> 0; TRL's default 0 "
                        "would drop the reference and let the policy exploit the reward model)")
    scale_rewards: bool = Field(True, description="divide each group's advantages by its reward std (GRPO); false "
                                "keeps the mean-only baseline (Dr. GRPO)")
    algorithm: ClassVar[str] = "grpo"


class RLOORunConfig(OnlineRunConfig):
    """``rlhf rloo``: TRL's RLOOTrainer (REINFORCE, leave-one-out baseline) against the reward model."""

    output_dir: str = Field("runs/rloo", description="run directory: config, checkpoints, logs, TensorBoard")
    # RLOO puts the KL penalty into the reward (Ahmadian et al. 2024); 0.05 is TRL's and PPO's default here.
    beta: float = Field(0.05, gt=0.0, description="KL penalty to the reference, subtracted from the reward (> 0)")
    normalize_advantages: bool = Field(False, description="whiten the advantages over the batch")
    algorithm: ClassVar[str] = "rloo"


class DPORunConfig(AlignRunConfig):
    """``rlhf dpo``: TRL's DPOTrainer straight from the reviewers' pairs; no reward model."""

    data: str = Field(..., description="'rlhf app export' folder (its K-wise rankings expanded to pairs, its "
                      "prompt-level train/test split kept), or a TRL pairwise/K-wise dataset (split by prompt hash)")
    reward_model: str | None = Field(None, description="not used by DPO: leave unset (DPO learns from the pairs)")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held-out share of prompts when the data has no "
                                 "test split (the same hash split as the reward model)")
    output_dir: str = Field("runs/dpo", description="run directory: config, checkpoints, logs, TensorBoard")
    max_length: int = Field(512, ge=8, description="tokens per prompt+reply; longer pairs are truncated by TRL")
    per_device_batch_size: int = Field(4, ge=1, description="pairs per process per micro-batch")
    # 0.1 is the DPO paper's and TRL's default: the implicit reward beta*log(pi/pi_ref) stays near the reference.
    beta: float = Field(0.1, gt=0.0, description="DPO temperature: strength of the pull towards the reference (> 0)")
    algorithm: ClassVar[str] = "dpo"


class SFTRunConfig(AlignRunConfig):
    """``rlhf sft``: TRL's SFTTrainer on demonstrations (reviewers' replies, agents' reference replies);
    the loss is on the reply's tokens only. No reward model and no reference model."""

    data: list[str] = Field(..., description="demonstrations, one path or a list: an 'rlhf app export' folder (its "
                            "sft/ split kept), a datasets directory, or prompt-completion .jsonl/.json/.parquet "
                            "(split by prompt hash)")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held-out share of prompts for files without a "
                                 "test split (the reward model's hash split)")
    output_dir: str = Field("runs/sft", description="run directory: config, checkpoints, logs, TensorBoard")
    max_length: int = Field(512, ge=8, description="tokens per prompt+reply (chat template applied); a longer "
                            "demonstration is refused, naming it, never cut")
    per_device_batch_size: int = Field(8, ge=1, description="demonstrations per process per micro-batch")
    learning_rate: float = Field(1e-3, gt=0.0, description="AdamW learning rate (linear decay); 1e-3 suits the LoRA "
                                 "adapter (bench/sft_bench.py), full fine-tuning wants about 2e-5")
    padding_free: bool = Field(False, description="train on each micro-batch's demonstrations laid end to end in one "
                               "row, no padding tokens (TRL's padding_free; position ids restart at each "
                               "demonstration and transformers masks attention across them); the same loss as padded "
                               "batches with no pad tokens computed, but on a CPU sdpa's mask over the whole row "
                               "measured slower (bench/sft_bench.py). Off under --dp")
    group_by_length: bool = Field(True, description="form micro-batches of demonstrations of similar length "
                                  "(transformers' LengthGroupedSampler: random megabatches of 50 micro-batches, "
                                  "each sorted by length), so fewer pad tokens are computed: 2.09x TRL's stock "
                                  "set-up with LoRA + bf16 where random batches gave 1.70x (bench/sft_bench.py); "
                                  "the order of demonstrations changes, not which are trained on per epoch")
    # Differential privacy (rlhf.align.sft_dp): the privacy unit is each row's 'unit' column.
    dp: bool = Field(False, description="differentially private SFT (DP-SGD through Opacus) of the LoRA adapter; the "
                     "privacy unit is the data's 'unit' column (customer, else conversation, else prompt); needs "
                     "epsilon; per_device_batch_size x gradient_accumulation_steps is then the expected units per "
                     "update")
    epsilon: float | None = Field(None, gt=0.0, description="--dp: the privacy budget epsilon per unit")
    delta: float | None = Field(None, gt=0.0, lt=1.0, description="--dp: the delta of (epsilon, delta)-DP (default "
                                "1 / (10 x training units))")
    max_grad_norm: float = Field(1.0, gt=0.0, description="--dp: each unit's summed gradient is clipped to this norm")
    dp_baseline: bool = Field(False, description="--dp: also train the same schedule without clipping and noise and "
                              "report its held-out loss beside the private one")
    algorithm: ClassVar[str] = "sft"

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_more(cls, value):
        return [value] if isinstance(value, str) else value

    @field_validator("data")
    @classmethod
    def _not_empty(cls, value):
        if not value:
            raise ValueError("give at least one demonstrations file or folder")
        return value


CONFIGS = {"grpo": GRPORunConfig, "rloo": RLOORunConfig, "dpo": DPORunConfig, "sft": SFTRunConfig}


def check_run_config(config: AlignRunConfig, world_size: int, stage: int) -> None:
    """Combinations that cannot work, refused (one line naming the field) before any model is loaded."""
    if config.dtype not in ("float32", "bfloat16"):
        raise UserError(f"field 'dtype': {config.dtype!r} is not float32 or bfloat16")
    if stage == 3 and config.lora.enabled and config.lora.modules_to_save:
        raise UserError("field 'lora.modules_to_save' cannot be used under DeepSpeed ZeRO-3 (modules trained beside "
                        "the adapter come out as empty partitions); empty it, or use ZeRO-2")
    if isinstance(config, SFTRunConfig):
        return
    if isinstance(config, DPORunConfig):
        if config.reward_model:
            raise UserError(f"field 'reward_model': DPO uses no reward model (it learns from the pairs in "
                            f"'data'); remove reward_model={config.reward_model!r}, or run 'rlhf grpo' or 'rlhf rloo'")
        return
    for field in ("total_updates", "save_every", "stop_after_updates"):
        value = getattr(config, field)
        if value is not None and value % config.num_iterations:
            raise UserError(f"field '{field}': {value} is not a multiple of num_iterations={config.num_iterations} "
                            f"(a checkpoint must fall where a new batch of replies is sampled, so that a resumed "
                            f"run samples where an uninterrupted one does)")
    if config.num_generations < 2:
        raise UserError(f"field 'num_generations': {config.algorithm.upper()} compares several replies to one "
                        f"prompt; num_generations={config.num_generations} must be at least 2")
    batch = config.per_device_batch_size * world_size * config.gradient_accumulation_steps
    if batch % config.num_generations:
        raise UserError(f"field 'num_generations': the generation batch per_device_batch_size x processes x "
                        f"gradient_accumulation_steps = {config.per_device_batch_size} x {world_size} x "
                        f"{config.gradient_accumulation_steps} = {batch} replies is not divisible by "
                        f"num_generations={config.num_generations} (TRL needs whole groups)")
