"""Differentially private reward-model training (``rlhf reward train --dp``): DP-SGD per privacy unit.

The privacy unit is one customer, conversation or prompt (the export's ``unit`` column): a unit's
gradient is the gradient of the SUM of its rankings' K-wise losses (the K-wise loss couples a ranking's
K replies, and one conversation yields several prompts), clipped, noised and accounted by the shared
DP-SGD core, ``rlhf.dp`` (the method, and why not Opacus's ``GradSampleModule``, are described there).
Trained: the LoRA adapter and the score head. ``tests/reward/test_dp.py`` checks one step against the
same update computed by hand.
"""

from __future__ import annotations

import sys
from typing import Any

from rlhf.dp import (ACCOUNTANT, PrivacyPlan, check_single_process, clip_factors, dp_step, group_by_unit,  # noqa: F401
                     make_dp_optimizer, plan_from, train_units)
from rlhf.dp import per_unit_gradients as _per_unit_gradients
from rlhf.dp import plan_privacy as _plan_privacy
from rlhf.errors import UserError


def plan_privacy(units: int, rankings: int, units_per_step: int, epochs: float, max_steps: int, epsilon: float,
                 delta: float | None, max_grad_norm: float) -> PrivacyPlan:
    """``rlhf.dp.plan_privacy`` with the reward model's rows, rankings."""
    return _plan_privacy(units, rankings, units_per_step, epochs, max_steps, epsilon, delta, max_grad_norm,
                         row_kind="rankings")


# ---------------------------------------------------------------------------------------------------
# Per-unit gradients


def unit_loss_backward(model, rankings: list[dict[str, Any]], pad_token_id: int, micro_batch: int,
                       bf16: bool = False) -> float:
    """Backward of the SUM of the unit's K-wise ranking losses (gradients accumulate in ``p.grad``).

    ``rankings``: tokenized rows (``completion_ids`` [K][L], ``ranks`` [K]); at most ``micro_batch``
    rankings per forward. Returns the summed loss.
    """
    import torch

    from reward.losses import kwise_loss
    from reward.train import KWiseCollator

    collate = KWiseCollator(pad_token_id)
    total = 0.0
    for start in range(0, len(rankings), micro_batch):
        chunk = rankings[start:start + micro_batch]
        batch = collate(chunk)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            flat = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         use_cache=False).logits.squeeze(-1).float()
        ranks = batch["ranks"]
        scores = flat.new_zeros(ranks.shape).masked_scatter(ranks > 0, flat)
        loss = kwise_loss(scores, ranks) * len(chunk)  # kwise_loss is the mean over the chunk's rankings
        loss.backward()
        total += loss.item()
    return total


def per_unit_gradients(model, params, units: list[list[dict[str, Any]]], pad_token_id: int, micro_batch: int,
                       bf16: bool = False) -> tuple[list[Any], float]:
    """([P] tensors of shape [B, *p.shape]: each sampled unit's gradient), summed loss of the B units."""
    return _per_unit_gradients(params, units,
                               lambda unit: unit_loss_backward(model, unit, pad_token_id, micro_batch, bf16))


def lora_score_model(config):
    """The base score model with the config's LoRA adapter; trainable: the adapter and the score head."""
    from peft import get_peft_model

    from rlhf.lora import lora_config
    from rlhf.modeling import load_score_model

    model = get_peft_model(load_score_model(config.model), lora_config(config.lora, "SEQ_CLS"))
    model.eval()  # no dropout: the per-unit gradient must not depend on which dropout mask came up
    return model, [p for p in model.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------------
# The run


def check_dp_config(config) -> None:
    """Settings DP-SGD here does not support: one line each, before any data is read."""
    if config.epsilon is None:
        raise UserError("--dp needs --epsilon (the privacy budget per unit, e.g. 8)")
    if not config.lora.enabled:
        raise UserError("--dp trains the LoRA adapter and score head only; full fine-tuning under DP is not "
                        "supported: leave lora.enabled on (the default with --dp)")
    if config.mode != "kwise":
        raise UserError("--dp needs mode kwise (a unit's rankings are summed as whole rankings)")
    check_single_process()


def train_private(config, train_rows, tokenizer, private: bool = True, plan: PrivacyPlan | None = None):
    """DP-SGD (or, with ``private=False``, the same sampling and schedule without clipping or noise: the
    baseline DP is compared with). Returns (merged plain score model, record for metrics.json)."""
    import torch

    from reward.data import tokenize_kwise

    tokenized = tokenize_kwise(train_rows, tokenizer, config.max_length).to_list()
    groups = group_by_unit([r.get("unit") for r in tokenized], f"{config.data} (training rankings)")
    units = [[tokenized[i] for i in g] for g in groups]
    if plan is None:
        plan = plan_privacy(len(units), len(tokenized), config.batch_size * config.gradient_accumulation_steps,
                            config.num_epochs, config.max_steps, config.epsilon, config.delta, config.max_grad_norm)

    if private:
        print(plan.summary(), file=sys.stderr, flush=True)
    torch.manual_seed(config.seed)  # score head and LoRA initialisation
    model, params = lora_score_model(config)
    record = train_units(params, units, plan, lambda unit: unit_loss_backward(
        model, unit, tokenizer.pad_token_id, config.batch_size, config.bf16), config.learning_rate,
        config.weight_decay, config.seed, private=private)
    record["rankings"] = plan.rows  # the name this record's readers (bench/dp_bench.py) know
    if private:
        record["unit"] = "customer, else conversation, else prompt (the export's 'unit' column)"
    merged = model.merge_and_unload()
    merged.eval()
    return merged, record


def held_out_accuracy(model, tokenizer, test_rows: list[dict[str, Any]], config) -> float | None:
    """Share of held-out pairs ranked like the reviewers (score ties count 1/2), as the gate credits them."""
    from reward.evaluate import score_rows
    from rlhf.gate import pair_credits

    if not test_rows:
        return None
    credits, _ = pair_credits(test_rows, score_rows(model, tokenizer, test_rows, config.max_length,
                                                    config.eval_batch_size, what="test"))
    return sum(credits) / len(credits) if credits else None


def privacy_record(config, record: dict[str, Any], held_out: dict | None, train_rows, tokenizer,
                   test_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``metrics.json``'s ``dp``: the plan, the spent epsilon, and held-out accuracy beside the baseline
    (the same sampling and steps without clipping or noise) when ``dp_baseline`` asked for it."""
    record = {k: v for k, v in record.items() if k != "loss_history"}
    record["held_out_accuracy"] = held_out["accuracy"] if held_out else None
    record["baseline_held_out_accuracy"] = None
    if config.dp_baseline:
        baseline, base = train_private(config, train_rows, tokenizer, private=False, plan=plan_from(record))
        record["baseline_held_out_accuracy"] = held_out_accuracy(baseline, tokenizer, test_rows, config)
        record["baseline_train_seconds"] = base["train_seconds"]
    acc, base_acc = record["held_out_accuracy"], record["baseline_held_out_accuracy"]
    print(f"differential privacy: spent epsilon {record['epsilon_spent']:.3f} at delta {record['delta']:.3g} per "
          f"unit (target {record['target_epsilon']:g}, noise multiplier {record['noise_multiplier']:.3f}); held-out "
          f"accuracy {'n/a' if acc is None else f'{acc:.3f}'}"
          + (f" against {base_acc:.3f} for the same schedule without DP" if base_acc is not None else
             " (pass --dp-baseline for the same run without DP beside it, or see bench/dp_bench.py)"),
          file=sys.stderr, flush=True)
    return record


def card_lines(dp: dict[str, Any] | None) -> list[str]:
    """The model card's privacy section (also read by the loop report and the policy's export)."""
    if not dp:
        return ["## Differential privacy", "", "- None: this reward model was trained without differential "
                "privacy; it may reveal details of the rankings it was trained on.", ""]
    acc, base = dp.get("held_out_accuracy"), dp.get("baseline_held_out_accuracy")
    return ["## Differential privacy", "",
            f"- DP-SGD (Opacus, {dp['accountant'].upper()} accountant) on the LoRA adapter and score head: "
            f"**epsilon {dp['epsilon_spent']:.3f}** spent at delta {dp['delta']:.3g} (target epsilon "
            f"{dp['target_epsilon']:g})",
            f"- Privacy unit: one {dp.get('unit', 'unit')}; {dp['units']} units "
            f"({dp.get('rows', dp.get('rankings'))} rankings), {dp['units_per_step']} units per step expected "
            f"(sampling rate {dp['sample_rate']:.4g}), "
            f"{dp['steps']} steps, per-unit gradients clipped to {dp['max_grad_norm']:g}, noise multiplier "
            f"{dp['noise_multiplier']:.3f}",
            f"- Held-out accuracy {'n/a' if acc is None else f'{acc:.3f}'}"
            + (f"; the same schedule without DP: {base:.3f}" if base is not None else ""),
            "- Not covered: the held-out (test) split, which is never trained on but is scored for the figures "
            "above, the gate and the reward stats", ""]
