"""``rlhf dpo``: TRL 1.12's DPOTrainer straight from the reviewers' preference pairs; no reward model.

DPO (Rafailov et al. 2023) minimises ``-log sigmoid(beta * ((log pi(y_w|x) - log pi_ref(y_w|x)) -
(log pi(y_l|x) - log pi_ref(y_l|x))))`` over the pairs: TRL's own loss (``loss_type`` sigmoid),
computed with the reference as the policy's adapter switched off (LoRA, the default) or a frozen copy
loaded by ``rlhf.modeling``. Pairs come from ``rlhf.align.data`` with the reward model's prompt-level
train/test split; the held-out pairs are scored once at the end (``heldout.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from trl import DPOConfig, DPOTrainer

from rlhf.align.config import DPORunConfig, check_run_config
from rlhf.align.trainer import ResumableRun, prepare_output_dir, trainer_args, write_run_info
from rlhf.errors import UserError
from rlhf.lora import lora_config
from rlhf.runtime import world_size, zero_stage


class ResumableDPOTrainer(ResumableRun, DPOTrainer):
    """TRL's DPOTrainer with this project's checkpoints, stopping, metrics and sample replies."""


def implicit_reward_scorer(trainer, beta: float):
    """``scorer(prompts, replies)``: DPO's implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` of
    each reply, the score DPO itself raises for chosen replies (there is no reward model to ask)."""
    from rlhf.generation import render_prompt

    def logp(model, ids: torch.Tensor, start: int) -> float:
        logits = model(input_ids=ids[None]).logits[0, start - 1:-1].float()
        return torch.log_softmax(logits, -1).gather(1, ids[start:, None]).sum().item()

    @torch.no_grad()
    def score(prompts: list, replies: list[str]) -> list[float]:
        tok = trainer.processing_class
        model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
        device = trainer.accelerator.device
        out = []
        for prompt, reply in zip(prompts, replies):
            start = len(tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"])
            text = tok.apply_chat_template(prompt + [{"role": "assistant", "content": reply}], tokenize=False)
            ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], device=device)
            if ids.shape[0] <= start:
                out.append(0.0)
                continue
            policy = logp(model, ids, start)
            if hasattr(model, "disable_adapter"):
                with model.disable_adapter():
                    reference = logp(model, ids, start)
            else:
                reference = logp(trainer.accelerator.unwrap_model(trainer.ref_model), ids, start)
            out.append(beta * (policy - reference))
        return out

    return score


def build_trainer(run: DPORunConfig, resume: str | None = None) -> ResumableDPOTrainer:
    from datasets import Dataset

    from rlhf.align.data import load_pairs
    from rlhf.align.online import load_prompts
    from rlhf.modeling import load_policy, load_tokenizer

    world = world_size()
    check_run_config(run, world, zero_stage())
    resume_from = prepare_output_dir(run, resume)
    train, test, manifest = load_pairs(run.data, run.test_fraction)
    per_update = run.per_device_batch_size * world * run.gradient_accumulation_steps
    if len(train) < per_update:
        raise UserError(f"{run.data}: only {len(train)} training pairs, fewer than one update's {per_update} "
                        f"(per_device_batch_size x processes x gradient_accumulation_steps)")

    tokenizer = load_tokenizer(run.policy, padding_side="left")
    if run.eval_prompts_file:
        eval_prompts = load_prompts(run.eval_prompts_file, tokenizer, run.max_prompt_tokens)
    else:  # the first distinct held-out prompts (never trained on), else training ones
        seen = {}
        for pair in test + train:
            seen.setdefault(json.dumps(pair["prompt"], sort_keys=True), pair["prompt"])
        eval_prompts = list(seen.values())

    torch.manual_seed(run.seed)
    policy = load_policy(run.policy, dtype=run.dtype)
    reference = None if run.lora.enabled else load_policy(run.policy, dtype=run.dtype)
    args = DPOConfig(**trainer_args(run), beta=run.beta, max_length=run.max_length, loss_type=["sigmoid"],
                     per_device_eval_batch_size=run.per_device_batch_size)
    trainer = ResumableDPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(test) if test else None, processing_class=tokenizer,
        peft_config=lora_config(run.lora, "CAUSAL_LM") if run.lora.enabled else None,
    )
    trainer.setup_run(run, eval_prompts[:run.num_eval_prompts], implicit_reward_scorer(trainer, run.beta),
                      resume_from)
    write_run_info(trainer, run, {"reward_model_path": None, "data": str(run.data), "train_pairs": len(train),
                                  "heldout_pairs": len(test), "export_manifest": manifest.get("exported_at")
                                  or manifest.get("source")})
    return trainer


def score_heldout(trainer: ResumableDPOTrainer, run: DPORunConfig) -> dict | None:
    """Held-out pairs (prompts never trained on): how often the implicit reward ranks them as reviewers
    did, and by what margin; written to ``heldout.json``. None when the data has no held-out pair."""
    if trainer.eval_dataset is None:
        return None
    metrics = trainer.evaluate()
    if trainer.accelerator.is_main_process:
        (Path(run.output_dir) / "heldout.json").write_text(json.dumps(metrics, indent=2))
    trainer.say(f"held-out pairs: accuracy {metrics.get('eval_rewards/accuracies', float('nan')):.3f}  "
                f"margin {metrics.get('eval_rewards/margins', float('nan')):+.3f}")
    return metrics


def run_dpo(run: DPORunConfig, resume: str | None = None) -> int:
    trainer = build_trainer(run, resume)
    step = trainer.train()
    if step >= run.total_updates:
        score_heldout(trainer, run)
    trainer.say(f"done: {step}/{run.total_updates} updates; run directory {Path(run.output_dir)}")
    return step
