"""``rlhf sft``: TRL 1.12's SFTTrainer on demonstrations, the loss on the reply's tokens only.

InstructGPT's first step (Ouyang et al. 2022, section 3.5): fine-tune the policy on replies written the
way the contact centre wants them (reviewers' demonstrations, agents' reference replies) before any
reward model or PPO. Rows are conversational prompt-completion pairs (``rlhf.align.demonstrations``):
TRL renders prompt and prompt+reply with the chat template and, with ``completion_only_loss``, sets the
labels of every prompt token (and the collator those of padding) to -100, so the loss is the mean
cross-entropy over reply tokens. SmolLM2's template has no ``{% generation %}`` markers, so TRL's
``assistant_only_loss`` on whole conversations is not available; prompt-completion rows need none.

Everything around the trainer is shared with GRPO, RLOO and DPO (``rlhf.align.trainer``): checkpoints,
resume, SIGTERM, metrics, TensorBoard, sample replies, export. Held-out loss (mean cross-entropy per
reply token on the held-out prompts' demonstrations, float32) is measured before the first update and
after the last, into ``metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from trl import SFTConfig, SFTTrainer

from rlhf.align.config import SFTRunConfig, check_run_config
from rlhf.align.demonstrations import load_checked, word_f1
from rlhf.align.trainer import ResumableRun, prepare_output_dir, trainer_args, write_run_info
from rlhf.errors import UserError
from rlhf.lora import lora_config
from rlhf.runtime import world_size, zero_stage

BEFORE = "heldout_before.json"  # the loss before update 1, kept for a resumed run's metrics.json


class ResumableSFTTrainer(ResumableRun, SFTTrainer):
    """TRL's SFTTrainer with this project's checkpoints, stopping, metrics and sample replies."""


@torch.no_grad()
def completion_loss(model, batches) -> tuple[float, int]:
    """Mean cross-entropy per reply token over ``batches`` (collated: ``input_ids``, ``attention_mask``,
    ``labels`` with -100 on prompt and padding), and the number of reply tokens.

    Token ``t`` is predicted from positions ``< t``: logits ``[:, :-1]`` against labels ``[:, 1:]``, the shift
    every causal LM loss makes. Summed over tokens before dividing, so batches of different sizes weigh by
    their reply tokens (not a mean of batch means).
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for batch in batches:
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits[:, :-1].float()
        labels = batch["labels"][:, 1:].to(device)
        mask = labels != -100
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        total += losses[mask].sum().item()
        count += int(mask.sum().item())
    model.train(was_training)
    return (total / count if count else float("nan")), count


def heldout_loss(trainer: ResumableSFTTrainer) -> tuple[float, int] | None:
    """``completion_loss`` of the current policy on the held-out demonstrations (None without any).

    Every process computes it on the whole held-out set (small; no collective call, so it works before
    DeepSpeed has wrapped the model); under ZeRO-3 the parameters are gathered first."""
    if trainer.eval_dataset is None:
        return None
    from trl.models.utils import unwrap_model_for_generation

    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rows = [trainer.eval_dataset[i] for i in range(len(trainer.eval_dataset))]
    size = trainer.args.per_device_eval_batch_size
    # Always padded batches with an attention mask (the training collator may be padding-free), so the figure
    # is computed the same way whatever the training batches look like.
    collate = DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id)
    batches = [collate([{k: r[k] for k in ("input_ids", "labels")} for r in rows[i:i + size]])
               for i in range(0, len(rows), size)]
    if trainer.model_wrapped is trainer.model:  # before train(): the plain (or peft-wrapped) model
        return completion_loss(trainer.model, batches)
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
        return completion_loss(model, batches)


def build_trainer(run: SFTRunConfig, resume: str | None = None) -> ResumableSFTTrainer:
    from datasets import Dataset

    from rlhf.modeling import load_policy

    world = world_size()
    check_run_config(run, world, zero_stage())
    resume_from = prepare_output_dir(run, resume)
    # Every demonstration is checked (fields, then length with the policy's tokenizer) before the model loads.
    demos, tokenizer, longest = load_checked(run.data, run.test_fraction, run.policy, run.max_length)
    per_update = run.per_device_batch_size * world * run.gradient_accumulation_steps
    if len(demos.train) < per_update:
        raise UserError(f"{', '.join(run.data)}: only {len(demos.train)} training demonstrations, fewer than one "
                        f"update's {per_update} (per_device_batch_size x processes x gradient_accumulation_steps)")

    # Sample replies answer held-out prompts (never trained on) and are scored against their demonstration.
    references: dict[str, str] = {}
    for demo in demos.test + demos.train:
        references.setdefault(json.dumps(demo.prompt, sort_keys=True), demo.completion)
    eval_prompts = [json.loads(key) for key in references][:run.num_eval_prompts]

    def scorer(prompts: list, replies: list[str]) -> list[float]:
        return [word_f1(r, references[json.dumps(p, sort_keys=True)]) for p, r in zip(prompts, replies)]

    torch.manual_seed(run.seed)
    policy = load_policy(run.policy, dtype=run.dtype)
    # Padding-free batches (one row, position ids restarting at each demonstration) are correct without
    # FlashAttention here: with no attention mask, transformers' create_causal_mask reads the restarts in
    # position_ids and builds a block-diagonal causal mask for sdpa/eager, so no demonstration attends to
    # another (tests/align/test_sft.py compares the loss with padded batches). TRL still warns that only
    # FlashAttention is "known" to support it. DP-SGD's per-unit loop needs padded batches with a mask.
    # TRL refuses max_length with padding-free batches (it would not cut them); no cut is needed: load_checked
    # has already refused any demonstration longer than max_length.
    padding_free = run.padding_free and not run.dp
    args = SFTConfig(**trainer_args(run), max_length=None if padding_free else run.max_length,
                     completion_only_loss=True, packing=False,
                     padding_free=padding_free, per_device_eval_batch_size=run.per_device_batch_size,
                     train_sampling_strategy="group_by_length" if run.group_by_length else "random")
    trainer = ResumableSFTTrainer(
        model=policy, args=args, train_dataset=Dataset.from_list([d.row() for d in demos.train]),
        eval_dataset=Dataset.from_list([d.row() for d in demos.test]) if demos.test else None,
        processing_class=tokenizer, peft_config=lora_config(run.lora, "CAUSAL_LM") if run.lora.enabled else None,
    )
    trainer.setup_run(run, eval_prompts, scorer, resume_from)
    trainer.demonstrations = {**demos.counts(), "sources": demos.sources, "longest_tokens": longest}
    write_run_info(trainer, run, {"reward_model_path": None, "data": demos.sources, **trainer.demonstrations})
    return trainer


def run_sft(run: SFTRunConfig, resume: str | None = None) -> int:
    if run.dp:  # DP-SGD per privacy unit: this project's loop over the same trainer's data and model
        from rlhf.align.sft_dp import run_sft_dp

        return run_sft_dp(run, resume)
    trainer = build_trainer(run, resume)
    out = Path(run.output_dir)
    if trainer.resume_from is None:
        before = heldout_loss(trainer)
        if trainer.accelerator.is_main_process:
            (out / BEFORE).write_text(json.dumps({"loss": before[0] if before else None,
                                                  "tokens": before[1] if before else 0}))
        if before:
            trainer.say(f"held-out loss before SFT: {before[0]:.4f} over {before[1]} reply tokens")
    step = trainer.train()
    if step >= run.total_updates:
        after = heldout_loss(trainer)
        before = json.loads((out / BEFORE).read_text()) if (out / BEFORE).is_file() else {}
        metrics = {"heldout_loss_before": before.get("loss"), "heldout_loss_after": after[0] if after else None,
                   "heldout_tokens": after[1] if after else 0, "updates": step, **trainer.demonstrations}
        if trainer.accelerator.is_main_process:
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if after:
            trainer.say(f"held-out loss after SFT: {after[0]:.4f} (before {before.get('loss', float('nan')):.4f})")
        else:
            trainer.say("held-out loss not measured: no demonstration fell on the held-out side of the split")
    trainer.say(f"done: {step}/{run.total_updates} updates; run directory {out}")
    return step
