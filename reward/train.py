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
from rlhf.runtime import (apply_memory_setting, apply_offline_env, is_main_process, run_entry_point, world_size,
                          zero_stage)
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


def build_trainer(config: RewardTrainConfig, args, kwise_rows, pairwise_rows, tokenizer, head=None, callbacks=None):
    """Tokenize the training split and build the trainer of ``config.mode``.

    Returns (trainer, tokenized train set, pairs per epoch). The model is loaded here, after
    ``args`` exist, so that under ZeRO-3 ``from_pretrained`` partitions it as it loads. ``head``: a
    fitted ``reward.probe.Probe`` written into the score head first (probe_then_finetune).
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
    if head is not None:
        from reward.probe import write_score_head
        from rlhf.modeling import use_mean_pooling, use_score_support

        if head.feature.startswith("mean@"):
            use_mean_pooling(model)  # fine-tuning then keeps the pooling the probe was fitted on
        write_score_head(model, head)
    # task SEQ_CLS keeps the newly initialised `score` head fully trainable beside the adapter.
    peft_config = lora_config(config.lora, "SEQ_CLS") if config.lora.enabled else None
    if config.mode == "kwise":
        trainer = _kwise_trainer_class()(model=model, args=args, train_dataset=train_set, processing_class=tokenizer,
                                         data_collator=KWiseCollator(tokenizer.pad_token_id), peft_config=peft_config,
                                         callbacks=callbacks)
    else:
        from trl import RewardTrainer

        trainer = RewardTrainer(model=model, args=args, train_dataset=train_set, processing_class=tokenizer,
                                peft_config=peft_config, callbacks=callbacks)
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
    if config.dp:
        from reward.dp import check_dp_config

        check_dp_config(config)
    if config.lora.enabled and stage == 3:
        raise UserError("lora.enabled with DeepSpeed ZeRO-3 is not supported (the score head kept beside the "
                        "adapter can come out empty, and merging needs gathered weights); use ZeRO-2 or DDP for "
                        "LoRA, or full fine-tuning under ZeRO-3")

    from reward.data import _kwise_to_pairwise, load_preference_data, split_half, split_validation, warn
    from rlhf.gate import check_usable_pairs
    from rlhf.modeling import check_same_vocabulary, load_score_model, load_tokenizer

    data = load_preference_data(config.data, config.test_fraction)
    if config.train_half != "all":
        data.kwise["train"] = split_half(data.kwise["train"], config.train_half)
    tokenizer = load_tokenizer(config.model, padding_side="right")
    if config.policy_model:
        check_same_vocabulary(load_tokenizer(config.policy_model, padding_side="right"), tokenizer)

    # Bad input, one line each, before any training.
    check_usable_pairs(data.kwise["train"].to_list(), f"{config.data} (training rankings)")
    test_rows = data.kwise["test"].to_list()
    held_out_problem = check_gate_size(test_rows, config)
    # DP-SGD fixes its schedule before training (the budget is spent per step), so it has no early
    # stopping to choose on a validation split: every training ranking is trained on.
    train_rows, val_rows = split_validation(data.kwise["train"], 0.0 if config.dp else config.validation_fraction)
    if len(train_rows) == 0:
        raise UserError(f"{config.data}: every training prompt fell in the validation split; lower validation_fraction")
    if len(val_rows) == 0 and config.method != "finetune":
        raise UserError(f"method {config.method} chooses its L2 on the validation split, but no training prompt fell "
                        f"in it ({len(train_rows)} rankings); raise validation_fraction (now {config.validation_fraction})")
    if config.method == "probe_then_finetune" and stage == 3:
        raise UserError("method probe_then_finetune under DeepSpeed ZeRO-3: the probe is written into a whole score "
                        "head before training; use ZeRO-2 or DDP, or method finetune")

    # The linear probe on frozen features: the method itself (probe), the starting head
    # (probe_then_finetune), and in every case the learning curve (cheap: a convex fit per size).
    probe, curve, chance, probe_model = None, None, None, None
    if len(val_rows):
        probe_model = load_score_model(config.model)  # before trainer_args: loads whole even under ZeRO-3
        if config.method == "probe":
            from reward.probe import cut_to_probe_depth

            total_layers = probe_model.config.num_hidden_layers
            cut_to_probe_depth(probe_model, config.probe_depth, config.pooling)
            print(f"reward model: the probe reads layer {probe_model.config.num_hidden_layers} of {total_layers} "
                  f"(probe_depth {config.probe_depth:g}); the saved model keeps those layers", file=sys.stderr)
        probe, curve, chance = fit_probe_and_curve(probe_model, tokenizer, train_rows.to_list(), val_rows.to_list(),
                                           test_rows, config)
    if config.method != "probe":
        del probe_model
        probe_model = None

    started = time.perf_counter()
    early, private = None, None
    if config.dp:
        from reward.dp import train_private

        probe_model, private = train_private(config, train_rows, tokenizer)
        trainer, result, train_pairs = None, None, sum(len(pair_indices(r)) for r in train_rows["ranks"])
    elif config.method == "probe":
        from reward.probe import write_score_head
        from rlhf.modeling import use_mean_pooling, use_score_support

        if config.pooling == "mean":
            use_mean_pooling(probe_model)  # records config.score_pooling: every loader re-attaches it
        write_score_head(probe_model, probe)
        use_score_support(probe_model, probe.support)  # recorded in config.json: every loader re-attaches it
        trainer, result, train_pairs = None, None, sum(len(pair_indices(r)) for r in train_rows["ranks"])
    else:
        args = trainer_args(config, out)  # before the model: under ZeRO-3 it makes from_pretrained partition
        callbacks = None
        if len(val_rows) and stage < 3:
            early = early_stopping(config, train_rows, val_rows, tokenizer)
            callbacks = [early]
        elif len(val_rows):
            warn("no early stopping under ZeRO-3 (the weights are partitioned): the whole schedule runs")
        trainer, train_set, train_pairs = build_trainer(
            config, args, train_rows, _kwise_to_pairwise(train_rows), tokenizer,
            head=probe if config.method == "probe_then_finetune" else None, callbacks=callbacks)
        result = trainer.train()
    seconds = time.perf_counter() - started

    # Scores of a few held-out replies from the in-memory model; the saved checkpoint must match them.
    probe_rows = (data.kwise["test"] if len(data.kwise["test"]) else train_rows).select(range(1)).to_list()
    from reward.data import reply_ids
    from reward.evaluate import score_ids

    probe_ids = [reply_ids(tokenizer, r["prompt"], c) for r in probe_rows for c in r["completions"]][:PROBE_REPLIES]
    model_now = probe_model if trainer is None else trainer.model
    probe_before = score_ids(model_now, probe_ids, tokenizer.pad_token_id)

    out.mkdir(parents=True, exist_ok=True)
    if trainer is None:
        if is_main_process():
            probe_model.save_pretrained(str(out), safe_serialization=True)
            tokenizer.save_pretrained(str(out))
    else:
        save_plain_checkpoint(trainer, tokenizer, out, lora=config.lora.enabled)
    if not is_main_process():
        return {}

    # From here the main process works on the saved directory alone, as PPO will. Under ZeRO-3 the
    # launch's DeepSpeed config would make from_pretrained partition (a collective the other ranks,
    # now finished, never join): load plain weights.
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from reward.evaluate import evaluate_checkpoint, score_rows

    unset_hf_deepspeed_config()

    saved = load_score_model(out)
    saved_tokenizer = load_tokenizer(out, padding_side="right")
    probe_after = score_ids(saved, probe_ids, saved_tokenizer.pad_token_id)
    # Under DP the centring stats come from the held-out replies: a mean and std of training replies'
    # scores would be a release of the training data outside the accounted budget.
    stats = reward_stats(saved, saved_tokenizer, (test_rows if config.dp and test_rows else train_rows.to_list()),
                         config.max_length, config.stats_max_replies, config.eval_batch_size)
    (out / "reward_stats.json").write_text(json.dumps(stats, indent=2))
    held_out, test_scores = None, None
    if test_rows:
        test_scores = score_rows(saved, saved_tokenizer, test_rows, config.max_length, config.eval_batch_size)
        try:
            held_out = evaluate_checkpoint(out, test_rows, out / "eval", config.max_length, config.eval_batch_size,
                                           model=saved, tokenizer=saved_tokenizer, scores=test_scores)
        except UserError as exc:  # the checkpoint is saved; say why there is no held-out figure
            warn(f"no held-out evaluation: {exc}")
    bias = bias_audit(saved, saved_tokenizer, test_rows, test_scores, config) if test_scores else None
    all_rows = data.kwise["train"].to_list() + test_rows
    gate = write_gate(out, test_rows, test_scores, all_rows, curve, config, held_out_problem, chance)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e] if trainer else []
    if private:
        from reward.dp import privacy_record

        losses = [x for x in private["loss_history"] if x is not None]
        private = privacy_record(config, private, held_out, train_rows, tokenizer, test_rows)
    selection = schedule_record(config, probe, curve, early, len(train_rows), len(val_rows))
    metrics = {
        "mode": config.mode,
        "method": config.method,
        "steps": trainer.state.global_step if trainer else (private["steps"] if private else 0),
        "train_seconds": seconds,
        "train_rows": len(train_set) if trainer else len(train_rows),  # after long replies are dropped
        "validation_rows": len(val_rows),
        "train_pairs_per_epoch": train_pairs,
        "train_loss": result.training_loss if result else None,
        "loss_history": losses,
        "log_history": trainer.state.log_history if trainer else [],
        "processes": trainer.accelerator.num_processes if trainer else 1,
        "zero_stage": stage,
        "lora": config.lora.enabled and trainer is not None,
        "probe": {"ids": probe_ids, "before_save": probe_before, "after_reload": probe_after,
                  "max_abs_diff": max(abs(a - b) for a, b in zip(probe_before, probe_after))},
        "reward_stats": stats,
        "held_out": {k: v for k, v in held_out.items() if k != "calibration"} if held_out else None,
        "schedule": selection,
        "gate": {k: v for k, v in gate.items() if k != "advice"},
        "bias": bias,
        "dp": private,
        "support": ({k: v for k, v in probe.support.items() if k in ("bound", "replies", "held_out_outside")}
                    if config.method == "probe" and probe and probe.support else None),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "manifest.json").write_text(json.dumps({"data": data.source, **data.manifest}, indent=2, default=str))
    save_resolved(config, out)
    (out / "README.md").write_text(model_card(config, metrics, gate))
    print(f"reward model saved to {out} ({config.method}, steps {metrics['steps']}"
          + (f", mean training loss {result.training_loss:.4f})" if result else ")"), file=sys.stderr)
    print(selection["why"], file=sys.stderr)
    if held_out:
        lo, hi = held_out["ci95_bootstrap_prompts"]
        print(f"held-out pairwise accuracy {held_out['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on "
              f"{held_out['pairs']} pairs", file=sys.stderr)
    print(f"gate: {gate['summary']}", file=sys.stderr)
    return metrics


# ---------------------------------------------------------------------------------------------------
# Schedule, learning curve, gate and model card


def check_gate_size(test_rows: list[dict], config: RewardTrainConfig) -> str | None:
    """A held-out split too small for the gate's interval is refused before training (one line), unless
    ``allow_weak_reward_model``: then a warning, and the returned reason goes into gate.json."""
    from rlhf.gate import check_held_out_size
    from rlhf.schema import prompt_key

    pairs = sum(len(pair_indices(list(r["ranks"]))) for r in test_rows)
    try:
        check_held_out_size(pairs, len({prompt_key(r["prompt"]) for r in test_rows}),
                            where=f"{config.data}: the held-out (test) split")
    except UserError as exc:
        if not config.allow_weak_reward_model:
            raise UserError(f"{exc}; or pass --allow-weak-reward-model to train without a gate") from None
        from reward.data import warn

        warn(f"{exc}; training anyway (--allow-weak-reward-model): the gate is not measured")
        return str(exc)
    return None


def fit_probe_and_curve(model, tokenizer, train_rows, val_rows, test_rows, config: RewardTrainConfig):
    """The probe on the model's last layer's features (after ``probe_depth`` cut it; ``config.pooling``: mean over tokens, or the last token),
    its L2 chosen on validation and refitted on train + validation; its learning curve on the test
    split (None without one): a quarter and half of the training rankings in random subsets seeded by
    ``seed``; and (None without a test split) a function giving the gate's permutation test: the same
    probe cross-fitted over every prompt (training, validation and test), on the real rankings and on
    them shuffled (``reward.schedule.probe_chance_null``). It is the probe's whatever the method: a
    fine-tuned model on shuffled rankings would cost a fine-tune per shuffle."""
    import torch

    from reward.probe import pad_k, probe_support, ranking_feature_sets, select_l2
    from reward.schedule import probe_learning_curve
    from rlhf.modeling import outside_support, reply_marker

    feature = f"{config.pooling}@{model.config.num_hidden_layers}"
    # The support is measured on the reply's own tokens where a chat template marks where replies begin
    # (rlhf.modeling.use_score_support), so the hook finds them in whatever prompt PPO samples under.
    marker = reply_marker(tokenizer)
    reply = f"rmean@{model.config.num_hidden_layers}" if marker else feature
    wanted = tuple(dict.fromkeys((feature, reply)))

    def features(rows):
        sets, ranks = ranking_feature_sets(model, tokenizer, rows, wanted, config.eval_batch_size, marker)
        return sets[feature], sets[reply], ranks

    tx, tq, tr = features(train_rows)
    vx, vq, vr = features(val_rows)
    probe = select_l2(feature, tx, tr, vx, vr)
    both = (lambda a, b: torch.cat([pad_k(a, b.shape[1]), pad_k(b, a.shape[1])]))
    probe.support = probe_support(probe, both(tx, vx), both(tr, vr), both(tq, vq) if marker else None, marker)
    curve, chance = None, None
    if test_rows:
        sx, sq, sr = features(test_rows)
        held = sq[sr > 0]
        probe.support["held_out_outside"] = [int(outside_support(probe.support, held).sum()), int(held.shape[0])]
        curve = probe_learning_curve(feature, tx, tr, vx, vr, sx, sr, seed=config.seed)
        # in the export's units: the export's training rankings include the validation split cut from them
        scale = (len(train_rows) + len(val_rows)) / len(train_rows)
        for point in curve:
            point["export_rankings"] = round(point["rankings"] * scale)

        def chance_null():  # called by write_gate only when the interval passes: a cross-fit costs ~a second
            from reward.schedule import probe_chance_null
            from rlhf.schema import prompt_key

            k = max(tx.shape[1], vx.shape[1], sx.shape[1])
            x = torch.cat([pad_k(tx, k), pad_k(vx, k), pad_k(sx, k)])
            ranks = torch.cat([pad_k(tr, k), pad_k(vr, k), pad_k(sr, k)])
            rows = [*train_rows, *val_rows, *test_rows]
            groups = [prompt_key(r["prompt"]) for r in rows]
            # In an order of their content, not of submission: the shuffles are drawn row by row, and
            # the same rankings exported in another order moved the bar (0.589 against 0.581).
            order = sorted(range(len(rows)), key=lambda i: (str(groups[i]), json.dumps(rows[i]["completions"], sort_keys=True),
                                                            list(rows[i]["ranks"])))
            return probe_chance_null(feature, x[order], ranks[order], [groups[i] for i in order],
                                     repeats=config.gate_shuffles, seed=config.seed)

        chance = chance_null
    return probe, curve, chance


def early_stopping(config: RewardTrainConfig, train_rows, val_rows, tokenizer):
    """The validation callback: checks about four times per epoch unless ``validation_every`` says."""
    from reward.data import tokenize_kwise
    from reward.schedule import validation_callback

    val = tokenize_kwise(val_rows, tokenizer, config.max_length, what="validation")
    world = world_size()
    steps_per_epoch = max(1, math.ceil(len(train_rows) / (config.batch_size * world))
                          // config.gradient_accumulation_steps)
    every = config.validation_every or max(1, steps_per_epoch // 4)
    ids = [x for row in val["completion_ids"] for x in row]
    return validation_callback(ids, list(val["ranks"]), tokenizer.pad_token_id, every,
                               config.early_stopping_patience, config.eval_batch_size,
                               say=lambda text: is_main_process() and print(text, file=sys.stderr, flush=True))


def schedule_record(config: RewardTrainConfig, probe, curve, early, n_train: int, n_val: int) -> dict[str, Any]:
    """What was chosen on the validation split, and why, for metrics.json and the model card."""
    from reward.schedule import checks_record

    record: dict[str, Any] = {"method": config.method, "pooling": config.pooling, "train_rankings": n_train, "validation_rankings": n_val,
                              "probe_feature": probe.feature if probe else None,
                              "probe_depth": config.probe_depth if config.method == "probe" else 1.0,
                              "probe_l2": probe.l2 if probe else None,
                              "probe_selection": probe.selection if probe else None,
                              "learning_curve": curve,
                              "learning_curve_source": "linear probe on frozen features (L2 chosen on validation "
                                                       "at each size), held-out test split" if curve else None}
    parts = [f"method {config.method}"]
    if probe:
        best = min(probe.selection, key=lambda s: s["val_loss"])
        parts.append(f"probe on {probe.feature} (pooling and layer), L2 {probe.l2:g} chosen on {n_val} validation rankings (validation loss "
                     f"{best['val_loss']:.4f}, accuracy {best['val_accuracy']:.3f}; lowest of {len(probe.selection)})")
    if early is not None and early.kept is not None:
        record["validation_checks"] = checks_record(early.checks)
        record["kept_step"] = early.kept.step
        parts.append(f"fine-tuning kept the weights after {early.kept.step} steps, of {early.checks[-1].step} run "
                     f"(lowest validation loss {early.kept.val_loss:.4f}, accuracy {early.kept.val_accuracy:.3f})")
    elif config.method != "probe":
        parts.append("no validation split: the whole schedule ran without early stopping")
    if curve:
        shown = ", ".join(f"{c['accuracy']:.3f} at {c['rankings']}" for c in curve)
        parts.append(f"learning curve (probe estimate{'' if config.method == 'probe' else ' for a fine-tuned model'}"
                     f"): held-out accuracy {shown} training rankings")
    record["why"] = "schedule: " + "; ".join(parts)
    return record


def write_gate(out: Path, test_rows, test_scores, all_rows, curve, config: RewardTrainConfig,
               problem: str | None, chance=None) -> dict[str, Any]:
    """``gate.json`` (the decision and, when it fails, the paragraph) and ``held_out_pairs.json`` (per-pair
    credits and prompt keys, so policy trainers and reports need not rescore). ``chance``: a function
    giving the permutation test (``fit_probe_and_curve``), called only when the interval passes; without it (no validation split) the gate is the interval alone."""
    from rlhf.gate import (failure_advice, gate_decision, gate_target, learning_curve_fit, pair_credits,
                           reviewer_agreement, tie_share)

    if problem is not None or not test_scores:
        gate = {"passed": False, "measured": False, "threshold": config.gate_threshold,
                "summary": f"not measured: {problem or 'no held-out split'}",
                "advice": f"The gate could not measure this reward model ({problem or 'no held-out split'}), so "
                          "nothing shows it ranks replies better than chance."}
        (out / "gate.json").write_text(json.dumps(gate, indent=2))
        return gate
    credits, prompts = pair_credits(test_rows, test_scores)
    (out / "held_out_pairs.json").write_text(json.dumps({"credits": credits, "prompts": prompts}))
    decision = gate_decision(credits, prompts, threshold=config.gate_threshold)
    if decision.interval_passed and chance is not None and config.gate_shuffles:
        decision = decision.with_chance(chance())
    # The number of rankings to ask for counts the export's training rankings (validation included).
    fit = learning_curve_fit([(c.get("export_rankings", c["rankings"]), c["accuracy"]) for c in curve],
                             gate_target(decision)) if curve and len({c["rankings"] for c in curve}) >= 2 else None
    agreement = reviewer_agreement(all_rows)
    ties = tie_share(all_rows)
    gate = {"passed": decision.passed, "measured": True, "accuracy": decision.accuracy,
            "interval": list(decision.interval), "n_pairs": decision.n_pairs, "n_prompts": decision.n_prompts,
            "threshold": decision.threshold, "summary": decision.summary(),
            "chance": decision.chance.record() if decision.chance else None,
            "learning_curve": {"rankings": list(fit.rankings), "accuracy": list(fit.accuracy),
                               "gain_per_doubling": fit.gain_per_doubling, "rankings_needed": fit.rankings_needed,
                               "reason": fit.reason} if fit else None,
            "reviewer_agreement": {"verdict": agreement.verdict, "pairwise_agreement": agreement.pairwise_agreement,
                                   "krippendorff_alpha": agreement.krippendorff_alpha, "reason": agreement.reason},
            "ties": {"rankings": ties.rankings, "all_tied_share": ties.all_tied_share,
                     "tied_pair_share": ties.tied_pair_share},
            "advice": None if decision.passed else failure_advice(decision, fit, agreement, ties)}
    (out / "gate.json").write_text(json.dumps(gate, indent=2))
    return gate


def bias_audit(model, tokenizer, test_rows, test_scores, config: RewardTrainConfig) -> dict[str, Any]:
    """What the reward model learned besides the preference, on the held-out (test) rankings:

    * length bias (``rlhf.bias.length_bias``): correlation of reward with reply length in characters,
      and accuracy on pairs of similar length and on pairs whose preferred reply is the shorter;
    * counterfactual probe (``rlhf.bias.score_shift``): the same replies scored under each held-out
      prompt with names, gendered words or dialect markers swapped: how far the scores move and how
      many preferred orders flip. A reward model that judges replies moves little.
    """
    from dataclasses import asdict

    from reward.evaluate import score_rows
    from rlhf.bias import counterfactual_probes, length_bias, score_shift

    rewards, lengths, pairs = [], [], []
    for row, scores in zip(test_rows, test_scores):
        index = {}
        for j, (reply, score) in enumerate(zip(row["completions"], scores)):
            if score is not None:
                index[j] = len(rewards)
                rewards.append(score)
                lengths.append(len(reply if isinstance(reply, str) else reply[-1]["content"]))
        pairs += [(index[b], index[w]) for b, w in pair_indices(list(row["ranks"])) if b in index and w in index]
    lb = length_bias(rewards, lengths, pairs)

    originals, variants, categories = [], [], []
    for row, scores in zip(test_rows, test_scores):
        for probe in counterfactual_probes([row["prompt"]]):
            kept = [j for j, s in enumerate(scores) if s is not None]
            variant = score_rows(model, tokenizer, [{"prompt": probe.variant, "completions": row["completions"]}],
                                 config.max_length, config.eval_batch_size, what="counterfactual")[0]
            kept = [j for j in kept if variant[j] is not None]
            originals.append([scores[j] for j in kept])
            variants.append([variant[j] for j in kept])
            categories.append(probe.category)
    shift = score_shift(originals, variants, categories)
    return {"length": asdict(lb),
            "counterfactual": {"probes": shift.probes, "replies": shift.replies,
                               "mean_abs_change": shift.mean_abs_change, "pairs": shift.pairs,
                               "flipped": shift.flipped, "flip_share": shift.flip_share,
                               "by_category": {c: {"probes": s.probes, "mean_abs_change": s.mean_abs_change,
                                                   "flip_share": s.flip_share} for c, s in shift.by_category.items()},
                               "reward_std": (sum((r - sum(rewards) / len(rewards)) ** 2 for r in rewards)
                                              / max(1, len(rewards) - 1)) ** 0.5 if rewards else None}}


def support_lines(support: dict | None) -> list[str]:
    """The model card's line on where the probe is trusted (``rlhf.modeling.use_score_support``)."""
    if not support:
        return []
    line = (f"- Support: a reply whose features lie further from those of the {support['replies']} replies it was "
            f"fitted on than any of them (root-mean-square standardised distance above {support['bound']:.3g}) "
            "scores as the lowest-scored of them (`score_support` in config.json): a policy gains nothing by "
            "writing what no reviewer saw")
    if support.get("held_out_outside"):
        outside, total = support["held_out_outside"]
        line += f"; {outside} of the {total} held-out replies lie outside"
    return [line]


def model_card(config: RewardTrainConfig, metrics: dict[str, Any], gate: dict[str, Any]) -> str:
    """The reward model's README.md: how it was chosen, its learning curve, and the gate's decision."""
    from rlhf.bias import audit_lines

    schedule = metrics["schedule"]
    lines = ["---", "tags: [rlhf, reward-model, trl]", "---", "", "# Reward model", "",
             f"- Base model: `{config.model}`; data `{config.data}`; mode {config.mode}; method {config.method}"
             + ("" if config.method == "finetune" else
                f" on {'the mean over prompt and reply (score_pooling: mean in config.json)' if config.pooling == 'mean' else 'the last token'}"
                f" of the last {'kept ' if schedule.get('probe_depth', 1.0) < 1 else ''}layer"
                + (f" ({schedule['probe_feature']}: the model keeps the base's bottom {schedule['probe_depth']:g} of its "
                   "layers)" if schedule.get("probe_depth", 1.0) < 1 else "")),
             f"- Training rankings {metrics['train_rows']}, validation rankings {metrics['validation_rows']} "
             f"(split by prompt, apart from the test split); optimizer steps {metrics['steps']}",
             f"- Why: {schedule['why']}", *support_lines(metrics.get("support")), ""]
    if schedule.get("learning_curve"):
        lines += ["## Learning curve (held-out accuracy)", "",
                  f"Source: {schedule['learning_curve_source']}"
                  + ("" if config.method == "probe" else "; used as the estimate for the fine-tuned model"), "",
                  "| training rankings | held-out accuracy |", "|---|---|",
                  *[f"| {c['rankings']} | {c['accuracy']:.3f} |" for c in schedule["learning_curve"]], ""]
    lines += ["## Gate", "", f"- {gate['summary']}"]
    if gate.get("advice"):
        lines += [f"- What to do: {gate['advice']}"]
    lines += ["", "## Bias audit (held-out rankings)", "", *audit_lines(metrics.get("bias"))]
    from reward.dp import card_lines

    lines += ["", *card_lines(metrics.get("dp"))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m reward.train --config FILE ...``: the entry ``accelerate launch`` runs."""
    apply_offline_env()
    apply_memory_setting()
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
    run_entry_point(main)  # a launched worker skips native teardown, which could abort a finished run
