"""``rlhf grpo`` and ``rlhf rloo``: TRL 1.12's GRPOTrainer and RLOOTrainer against this project's reward model.

Both sample ``num_generations`` replies per prompt and compare each reply with the others of its
group (GRPO: advantage = (r - group mean) / group std, KL to the reference in the loss; RLOO: the
mean reward of the other replies as baseline, KL subtracted from the reward). The reward model is
loaded by ``rlhf.modeling`` and handed to TRL as a model, its head centred with
``reward_stats.json`` (``rlhf.rewards``), exactly as ``rlhf ppo`` does. With LoRA (the default) the
reference is the policy with its adapter switched off.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from rlhf.align.config import GRPORunConfig, OnlineRunConfig, RLOORunConfig, check_run_config
from rlhf.align.trainer import EpochSeededRepeatSampler, ResumableRun, prepare_output_dir, trainer_args, write_run_info
from rlhf.errors import UserError
from rlhf.guards import build_guard
from rlhf.lora import lora_config
from rlhf.ppo.rollout import route_generate
from rlhf.runtime import world_size, zero_stage
from rlhf.schema import as_messages

log = logging.getLogger(__name__)


class _GroupSampling:
    """The prompt order of both trainers: TRL's RepeatSampler, each epoch drawn from ``seed + epoch``."""

    def _get_train_sampler(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        prompts_per_update = self.args.generation_batch_size // self.num_generations
        # each batch of prompts is sampled once and trained on for num_iterations updates
        updates_per_epoch = max(len(dataset) // prompts_per_update, 1) * self.num_iterations
        return EpochSeededRepeatSampler(
            data_source=dataset, mini_repeat_count=self.num_generations, batch_size=prompts_per_update,
            repeat_count=self.num_iterations * self.args.steps_per_generation, shuffle=self.shuffle_dataset,
            seed=self.args.seed, epoch_of=lambda: self.state.global_step // updates_per_epoch)


class ResumableGRPOTrainer(ResumableRun, _GroupSampling, GRPOTrainer):
    """TRL's GRPOTrainer with this project's checkpoints, stopping, metrics and sample replies."""


class ResumableRLOOTrainer(ResumableRun, _GroupSampling, RLOOTrainer):
    """TRL's RLOOTrainer with this project's checkpoints, stopping, metrics and sample replies."""


# ---------------------------------------------------------------------------------------------------
# Prompts and the reward model


def load_prompts(path: str, tokenizer, max_tokens: int) -> list[list[dict]]:
    """Prompts as chat messages (TRL applies the chat template, as PPO's rollouts do); longer ones dropped."""
    from rlhf.generation import render_prompt
    from rlhf.prompts import read_prompts

    prompts = read_prompts(path)
    kept = [as_messages(p) for p in prompts
            if len(tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) <= max_tokens]
    if len(kept) < len(prompts):
        log.warning("%s: %d of %d prompts are longer than max_prompt_tokens=%d tokens and were dropped",
                    path, len(prompts) - len(kept), len(prompts), max_tokens)
    if not kept:
        raise UserError(f"{path}: no usable prompt (all {len(prompts)} are longer than "
                        f"max_prompt_tokens={max_tokens}); raise max_prompt_tokens or shorten them")
    return kept


def reward_scorer(reward_model, tokenizer):
    """``scorer(prompts, replies) -> scores``: the reward model's (centred) score of each reply, read as it
    was trained (``rlhf.generation.scored_ids``), padded on the right. (TRL's GRPO and RLOO read the
    chat template's text, one newline after the end token longer.)"""
    from trl.trainer.utils import pad

    from rlhf.generation import scored_ids

    @torch.no_grad()
    def score(prompts: list, replies: list[str]) -> list[float]:
        seqs = [torch.tensor(scored_ids(tokenizer, p, r)) for p, r in zip(prompts, replies)]
        device = next(reward_model.parameters()).device
        input_ids = pad(seqs, padding_value=tokenizer.pad_token_id, padding_side="right").to(device)
        mask = pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right").to(device)
        return reward_model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().tolist()

    return score


# ---------------------------------------------------------------------------------------------------
# Building a run


def build_trainer(run: OnlineRunConfig, resume: str | None = None):
    from datasets import Dataset

    from rlhf.modeling import load_policy, load_tokenizer, resolve_model_path
    from rlhf.rewards import check_reward_model, load_reward_model

    world = world_size()
    check_run_config(run, world, zero_stage())
    resume_from = prepare_output_dir(run, resume)

    from rlhf.gate import require_gate  # the same gate as PPO: a reward model at chance stops here (exit 2)

    gate = require_gate(run.reward_model, run.allow_weak_reward_model)
    tokenizer = load_tokenizer(run.policy, padding_side="left")
    stats = check_reward_model(run.reward_model, tokenizer)
    prompts = load_prompts(run.prompts_file, tokenizer, run.max_prompt_tokens)
    eval_prompts = load_prompts(run.eval_prompts_file, tokenizer, run.max_prompt_tokens) \
        if run.eval_prompts_file else prompts
    prompts_per_update = run.per_device_batch_size * world * run.gradient_accumulation_steps // run.num_generations
    if len(prompts) < prompts_per_update:
        raise UserError(f"{run.prompts_file}: only {len(prompts)} usable prompts, fewer than one update's "
                        f"{prompts_per_update} (per_device_batch_size x processes x gradient_accumulation_steps / "
                        f"num_generations)")

    torch.manual_seed(run.seed)
    policy = load_policy(run.policy, dtype=run.dtype)
    reward_model = load_reward_model(run.reward_model, run.dtype, stats, run.center_rewards)
    reward_tokenizer = load_tokenizer(run.reward_model, padding_side="right")

    guard = build_guard(run, tokenizer, zero_stage())
    common = dict(trainer_args(run), beta=run.beta, num_generations=run.num_generations,
                  max_completion_length=run.response_length, temperature=run.temperature, epsilon=run.epsilon,
                  num_iterations=run.num_iterations, shuffle_dataset=True)
    if guard is not None:  # the second reward model is scored and logged, and weighs nothing in the loss
        common["reward_weights"] = [1.0, 0.0]
    if isinstance(run, GRPORunConfig):
        args = GRPOConfig(**common, scale_rewards="group" if run.scale_rewards else "none")
        trainer_class = ResumableGRPOTrainer
    elif isinstance(run, RLOORunConfig):
        args = RLOOConfig(**common, normalize_advantages=run.normalize_advantages)
        trainer_class = ResumableRLOOTrainer
    else:
        raise TypeError(f"not an online algorithm config: {type(run).__name__}")
    trainer = trainer_class(
        model=policy, reward_funcs=reward_model if guard is None else [reward_model, guard.model], args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
        reward_processing_classes=reward_tokenizer if guard is None else [reward_tokenizer, guard.tokenizer],
        peft_config=lora_config(run.lora, "CAUSAL_LM") if run.lora.enabled else None,
    )
    trainer.setup_run(run, eval_prompts[:run.num_eval_prompts], reward_scorer(reward_model, reward_tokenizer),
                      resume_from)
    if run.generation_backend == "fast":  # the policy object TRL unwraps for generation (PEFT wrapper or model)
        route_generate(trainer.model, trainer.say,
                       "weights partitioned by DeepSpeed ZeRO-3" if zero_stage() == 3 else None)
    else:
        trainer.say("generation: transformers' generate() (generation_backend: transformers)")
    if guard is not None:
        guard.reward_names = tuple(trainer.reward_func_names)
        trainer.guard = guard
    write_run_info(trainer, run, {"reward_model_path": resolve_model_path(run.reward_model), "reward_stats": stats,
                                  "reward_gate": gate, "num_prompts": len(prompts), "num_generations": run.num_generations})
    return trainer


def run_online(run: OnlineRunConfig, resume: str | None = None) -> int:
    trainer = build_trainer(run, resume)
    step = trainer.train()
    trainer.say(f"done: {step}/{run.total_updates} updates; run directory {Path(run.output_dir)}")
    return step
