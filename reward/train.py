"""``rlhf reward train``: preference data -> a plain ``*ForSequenceClassification`` reward model.

Read top to bottom: load data -> tokenizer and vocabulary check -> tokenize (counted drops) ->
TRL trainer (stock ``RewardTrainer`` for pairwise, ``KWiseRewardTrainer`` for K-wise) -> train ->
save a plain HF directory (LoRA merged; ZeRO-3 weights gathered) -> on the main process only:
reload it, check it scores as before saving, reward stats, held-out evaluation, metrics.

Runs alone (``rlhf reward train``) or under ``accelerate launch`` (``python -m reward.train``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.config import add_config_flags, config_from_args, save_resolved
from rlhf.errors import UserError
from rlhf.lora import lora_config
from rlhf.runtime import apply_offline_env, is_main_process, zero_stage
from rlhf.schema import pair_indices

from reward.config import RewardTrainConfig

PROBE_REPLIES = 8  # replies scored before and after saving: the reload must give the same scores


# ---------------------------------------------------------------------------------------------------
# K-wise mode: a collator and a RewardTrainer whose loss sees whole rankings


@dataclass
class KWiseCollator:
    """Rankings -> one flat batch of every reply, plus the ranks that say who beat whom.

    Output: input_ids, attention_mask [N, L] with N = sum of the batch's K_b (each reply once, rows
    in order); ranks [B, K_max] (0 = no reply in that slot); pair_weights [B, K_max, K_max] if given.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from trl.trainer.utils import pad

        seqs = [torch.tensor(ids) for ex in examples for ids in ex["completion_ids"]]
        k_max = max(len(ex["ranks"]) for ex in examples)
        ranks = torch.zeros(len(examples), k_max, dtype=torch.long)
        for b, ex in enumerate(examples):
            ranks[b, : len(ex["ranks"])] = torch.tensor(ex["ranks"])
        batch = {
            "input_ids": pad(seqs, padding_value=self.pad_token_id, padding_side="right"),
            "attention_mask": pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right"),
            "ranks": ranks,
        }
        if "pair_weights" in examples[0]:
            weights = torch.zeros(len(examples), k_max, k_max)
            for b, ex in enumerate(examples):
                k = len(ex["ranks"])
                weights[b, :k, :k] = torch.tensor(ex["pair_weights"])
            batch["pair_weights"] = weights
        return batch


def _kwise_trainer_class():
    """Defined on demand so importing this module stays light (trl is imported inside)."""
    import torch
    from trl import RewardTrainer

    from reward.losses import kwise_loss, pair_mask

    class KWiseRewardTrainer(RewardTrainer):
        """TRL's RewardTrainer with the InstructGPT K-wise loss: each reply scored once per step.

        Data arrive tokenized (``completion_ids``, ``ranks``); everything else (PEFT wrapping, pad
        policy, logging, DDP/DeepSpeed) is the stock trainer's.
        """

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # tokenized and length-filtered by reward.data.tokenize_kwise

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["completion_ids", "ranks", "pair_weights"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            ranks = inputs["ranks"]
            weights = inputs.get("pair_weights")
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            flat = outputs.logits.squeeze(-1).float()  # [N]: one score per reply, rows in order (fp32 under bf16 autocast)
            # [B, K_max]: scatter the flat scores into their ranking's slots (row-major = collator order)
            scores = flat.new_zeros(ranks.shape).masked_scatter(ranks > 0, flat)
            loss = kwise_loss(scores, ranks, weights)

            if mode == "train":
                tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
                self._total_train_tokens += tokens
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            with torch.no_grad():
                mask = pair_mask(ranks)
                diff = (scores.unsqueeze(2) - scores.unsqueeze(1))[mask]  # [P]: r_better - r_worse
                pairs = self.accelerator.gather_for_metrics(torch.tensor([float(mask.sum())])).sum().item()
                self._metrics[mode]["pairs"].append(pairs)
                acc = (diff > 0).float().mean() if diff.numel() else torch.tensor(0.0)
                self._metrics[mode]["accuracy"].append(self.accelerator.gather_for_metrics(acc).mean().item())
                margin = diff.mean() if diff.numel() else torch.tensor(0.0)
                self._metrics[mode]["margin"].append(self.accelerator.gather_for_metrics(margin).mean().item())
                all_rewards = self.accelerator.gather(flat.detach())
                self._metrics[mode]["mean_reward"].append(all_rewards.mean().item())
            return (loss, outputs) if return_outputs else loss

    return KWiseRewardTrainer


# ---------------------------------------------------------------------------------------------------
# Pieces of the run


def trainer_args(config: RewardTrainConfig, out: Path):
    """TRL's ``RewardConfig`` from ours. On CPU: ``use_cpu=True`` (a gloo group when launched with N
    processes); bf16 means autocast, which accelerate also does on CPU."""
    import torch
    from trl import RewardConfig

    report_to = [r for r in config.report_to if r != "none"] or "none"
    return RewardConfig(
        output_dir=str(out / "logs"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type="linear",
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.bf16,
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=config.gradient_checkpointing,
        logging_steps=config.logging_steps,
        report_to=report_to,
        save_strategy="no",
        eval_strategy="no",
        max_length=None,  # lengths already checked, with a counted warning, by reward.data
        disable_dropout=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def build_trainer(config: RewardTrainConfig, args, kwise_rows, pairwise_rows, tokenizer):
    """Tokenize the training split and build the trainer of ``config.mode``.

    Returns (trainer, tokenized train set, pairs per epoch). The model is loaded here, after
    ``args`` exist, so that under ZeRO-3 ``from_pretrained`` partitions it as it loads.
    """
    from reward.data import pair_agreement, tokenize_kwise, tokenize_pairwise
    from rlhf.modeling import load_score_model

    if config.mode == "kwise":
        weights = pair_agreement(kwise_rows.to_list()) if config.weight_by_agreement else None
        train_set = tokenize_kwise(kwise_rows, tokenizer, config.max_length, weights)
        pairs = sum(len(pair_indices(r)) for r in train_set["ranks"])
    else:
        train_set = tokenize_pairwise(pairwise_rows, tokenizer, config.max_length)
        pairs = len(train_set)
    model = load_score_model(config.model)
    # task SEQ_CLS keeps the newly initialised `score` head fully trainable beside the adapter.
    peft_config = lora_config(config.lora, "SEQ_CLS") if config.lora.enabled else None
    if config.mode == "kwise":
        trainer = _kwise_trainer_class()(model=model, args=args, train_dataset=train_set, processing_class=tokenizer,
                                         data_collator=KWiseCollator(tokenizer.pad_token_id), peft_config=peft_config)
    else:
        from trl import RewardTrainer

        trainer = RewardTrainer(model=model, args=args, train_dataset=train_set, processing_class=tokenizer,
                                peft_config=peft_config)
    return trainer, train_set, pairs


def save_plain_checkpoint(trainer, tokenizer, out: Path, lora: bool) -> None:
    """A plain ``*ForSequenceClassification`` directory: every rank calls this (ZeRO-3 gathers)."""
    if not lora:
        trainer.save_model(str(out))  # gathers ZeRO-3 shards; only the main process writes
    elif trainer.accelerator.is_main_process:
        # DDP and ZeRO-2 keep full weights on every rank: merge in memory on the main process.
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        (out / "training_args.bin").unlink(missing_ok=True)
        shutil.rmtree(out / "logs" / "checkpoint-last", ignore_errors=True)


def reward_stats(model, tokenizer, rows: list[dict[str, Any]], max_length: int, limit: int, batch_size: int) -> dict:
    """Mean and std of the model's scores on training replies: PPO centres rewards with them."""
    from reward.evaluate import score_rows

    picked, count = [], 0
    for row in rows:
        if count >= limit:
            break
        picked.append(row)
        count += len(row["completions"])
    scores = [s for row in score_rows(model, tokenizer, picked, max_length, batch_size, what="train")
              for s in row if s is not None]
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / max(1, len(scores) - 1))
    return {"mean": mean, "std": std, "replies": len(scores)}


# ---------------------------------------------------------------------------------------------------
# The run


def train(config: RewardTrainConfig) -> dict[str, Any]:
    """Train, save and evaluate; returns the metrics written to ``metrics.json`` (main process)."""
    apply_offline_env()
    if not config.data:
        raise UserError("no training data: give --data (an 'rlhf app export' folder or a TRL dataset file)")
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: output_dir is a file")
    if config.weight_by_agreement and config.mode != "kwise":
        raise UserError("weight_by_agreement needs mode kwise (TRL's pairwise trainer has no pair weights)")
    stage = zero_stage()
    if config.lora.enabled and stage == 3:
        raise UserError("lora.enabled with DeepSpeed ZeRO-3 is not supported (the score head kept beside the "
                        "adapter can come out empty, and merging needs gathered weights); use ZeRO-2 or DDP for "
                        "LoRA, or full fine-tuning under ZeRO-3")

    from reward.data import load_preference_data, warn
    from rlhf.modeling import check_same_vocabulary, load_score_model, load_tokenizer

    data = load_preference_data(config.data, config.test_fraction)
    tokenizer = load_tokenizer(config.model, padding_side="right")
    if config.policy_model:
        check_same_vocabulary(load_tokenizer(config.policy_model, padding_side="right"), tokenizer)

    train_rows = data.kwise["train"]
    args = trainer_args(config, out)  # before the model: under ZeRO-3 it makes from_pretrained partition
    trainer, train_set, pairs = build_trainer(config, args, train_rows, data.pairwise["train"], tokenizer)

    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started

    # Scores of a few held-out replies from the in-memory model; the saved checkpoint must match them.
    probe_rows = (data.kwise["test"] if len(data.kwise["test"]) else train_rows).select(range(1)).to_list()
    from reward.data import reply_ids
    from reward.evaluate import score_ids

    probe_ids = [reply_ids(tokenizer, r["prompt"], c) for r in probe_rows for c in r["completions"]][:PROBE_REPLIES]
    probe_before = score_ids(trainer.model, probe_ids, tokenizer.pad_token_id)

    out.mkdir(parents=True, exist_ok=True)
    save_plain_checkpoint(trainer, tokenizer, out, lora=config.lora.enabled)
    if not is_main_process():
        return {}

    # From here the main process works on the saved directory alone, as PPO will. Under ZeRO-3 the
    # launch's DeepSpeed config would make from_pretrained partition (a collective the other ranks,
    # now finished, never join): load plain weights.
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from reward.evaluate import evaluate_checkpoint

    unset_hf_deepspeed_config()

    saved = load_score_model(out)
    saved_tokenizer = load_tokenizer(out, padding_side="right")
    probe_after = score_ids(saved, probe_ids, saved_tokenizer.pad_token_id)
    stats = reward_stats(saved, saved_tokenizer, train_rows.to_list(), config.max_length, config.stats_max_replies,
                         config.eval_batch_size)
    (out / "reward_stats.json").write_text(json.dumps(stats, indent=2))
    held_out = None
    if len(data.kwise["test"]):
        try:
            held_out = evaluate_checkpoint(out, data.kwise["test"].to_list(), out / "eval", config.max_length,
                                           config.eval_batch_size, model=saved, tokenizer=saved_tokenizer)
        except UserError as exc:  # the checkpoint is saved; say why there is no held-out figure
            warn(f"no held-out evaluation: {exc}")
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    metrics = {
        "mode": config.mode,
        "steps": trainer.state.global_step,
        "train_seconds": seconds,
        "train_rows": len(train_set),
        "train_pairs_per_epoch": pairs,
        "train_loss": result.training_loss,
        "loss_history": losses,
        "log_history": trainer.state.log_history,
        "processes": trainer.accelerator.num_processes,
        "zero_stage": stage,
        "lora": config.lora.enabled,
        "probe": {"ids": probe_ids, "before_save": probe_before, "after_reload": probe_after,
                  "max_abs_diff": max(abs(a - b) for a, b in zip(probe_before, probe_after))},
        "reward_stats": stats,
        "held_out": {k: v for k, v in held_out.items() if k != "calibration"} if held_out else None,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "manifest.json").write_text(json.dumps({"data": data.source, **data.manifest}, indent=2, default=str))
    save_resolved(config, out)
    print(f"reward model saved to {out} (steps {metrics['steps']}, mean training loss "
          f"{result.training_loss:.4f})", file=sys.stderr)
    if held_out:
        lo, hi = held_out["ci95_bootstrap_prompts"]
        print(f"held-out pairwise accuracy {held_out['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on "
              f"{held_out['pairs']} pairs", file=sys.stderr)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """``python -m reward.train --config FILE ...``: the entry ``accelerate launch`` runs."""
    apply_offline_env()
    parser = argparse.ArgumentParser(prog="python -m reward.train", description="Train a reward model.")
    add_config_flags(parser, RewardTrainConfig)
    args = parser.parse_args(argv)
    try:
        train(config_from_args(RewardTrainConfig, args))
    except UserError as exc:
        if is_main_process():  # every rank reads the same config and data: say it once
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
