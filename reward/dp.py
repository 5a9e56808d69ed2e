"""Differentially private reward-model training (``rlhf reward train --dp``): DP-SGD per privacy unit.

The privacy unit is one customer, conversation or prompt (the export's ``unit`` column), not one
dataset row: a customer's conversation yields several prompts, each ranked by several reviewers,
and the K-wise loss couples a ranking's K replies. DP-SGD's guarantee holds for whatever one
clipped gradient covers, so each step here

1. samples UNITS with Poisson sampling (Opacus's ``UniformWithReplacementSampler``, rate q);
2. computes each sampled unit's gradient as the gradient of the SUM of its rankings' K-wise losses,
   with plain autograd, one unit at a time (LoRA adapter and score head only);
3. hands the stacked per-unit gradients to Opacus's ``DPOptimizer`` as ``p.grad_sample``: it clips
   each unit to ``max_grad_norm`` C (one norm over all trainable parameters), sums, adds Gaussian
   noise of std sigma * C, divides by the expected units per step and steps AdamW;
4. records (sigma, q) in Opacus's RDP accountant, whose epsilon at ``delta`` is the reported budget.

Why not Opacus's ``GradSampleModule`` (its hooks compute per-ROW gradients): rows of one unit must be
summed before clipping, and its hooks on PEFT layers silently corrupted LoRA updates (Opacus issue
820). Plain autograd per unit is slower (one backward per sampled unit) but exact, and
``tests/reward/test_dp.py`` checks one step against the same update computed by hand.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from rlhf.errors import UserError

ACCOUNTANT = "rdp"  # Opacus's Renyi-DP accountant (Mironov 2017; Mironov, Talwar, Zhang 2019)


# ---------------------------------------------------------------------------------------------------
# Pure pieces


def group_by_unit(units: Sequence[str | None], where: str) -> list[list[int]]:
    """Row indices grouped by privacy unit, units in order of first appearance.

    ``units[i]``: the unit id of row i. A row without one (None or empty) is a user error: DP over
    rows would understate what one customer contributes.
    """
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, unit in enumerate(units):
        if unit is None or not str(unit).strip():
            raise UserError(f"{where} row {i}: no privacy unit ('unit' column) for --dp; re-export the rankings "
                            f"with 'rlhf app export' (it writes the customer, conversation or prompt as 'unit'), "
                            f"or add a 'unit' column naming each row's customer or conversation")
        groups.setdefault(str(unit), []).append(i)
    return list(groups.values())


def clip_factors(norms: Sequence[float], max_grad_norm: float) -> list[float]:
    """Per-unit scale ``min(1, C / (norm + 1e-6))``, exactly as Opacus's ``DPOptimizer`` clips."""
    return [min(1.0, max_grad_norm / (n + 1e-6)) for n in norms]


@dataclass(frozen=True)
class PrivacyPlan:
    """What the budget implies for this data, fixed before training (and printed)."""

    units: int  # privacy units in the training split
    rankings: int  # training rankings (after long replies are dropped)
    units_per_step: int  # expected units per step (the Poisson batch's mean; the divisor of the sum)
    sample_rate: float  # q = units_per_step / units
    steps: int
    target_epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float  # sigma: noise std is sigma * max_grad_norm on the summed clipped gradients
    accountant: str = ACCOUNTANT

    def summary(self) -> str:
        return (f"differential privacy: {self.units} units ({self.rankings} rankings), {self.units_per_step} units "
                f"per step expected (sampling rate {self.sample_rate:.4g}), {self.steps} steps; target epsilon "
                f"{self.target_epsilon:g} at delta {self.delta:.3g} per unit -> noise multiplier "
                f"{self.noise_multiplier:.3f} (noise std {self.noise_multiplier * self.max_grad_norm:.3g} on a sum of "
                f"~{self.units_per_step} gradients clipped to {self.max_grad_norm:g}; signal-to-noise at most "
                f"{self.units_per_step / max(self.noise_multiplier, 1e-12):.2f} per step)")


def plan_privacy(units: int, rankings: int, units_per_step: int, epochs: float, max_steps: int, epsilon: float,
                 delta: float | None, max_grad_norm: float) -> PrivacyPlan:
    """Sampling rate, steps and the noise multiplier Opacus's accountant needs for (epsilon, delta).

    ``delta`` None: 1 / (10 * units), below the 1/units at which a mechanism could publish one unit's
    data outright. A budget no noise level meets is a ``UserError`` naming what to change.
    """
    from opacus.accountants.utils import get_noise_multiplier

    if units < 2:
        raise UserError(f"--dp: the training split has {units} privacy unit; DP-SGD needs many (hundreds for "
                        f"useful accuracy)")
    delta = delta if delta is not None else 1.0 / (10 * units)
    if delta >= 1.0 / units:
        raise UserError(f"delta: {delta:g} is not below 1/units = {1 / units:.3g} ({units} units): such a delta "
                        f"allows publishing one unit's data outright; lower --delta")
    units_per_step = min(units_per_step, units)
    sample_rate = units_per_step / units
    steps = max_steps if max_steps > 0 else max(1, math.ceil(epochs / sample_rate))
    try:
        sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                     steps=steps, accountant=ACCOUNTANT)
    except ValueError:
        raise UserError(f"epsilon: the accountant cannot meet epsilon {epsilon:g} at delta {delta:.3g} with "
                        f"{steps} steps at sampling rate {sample_rate:.4g} (noise multiplier above 1e6); raise "
                        f"--epsilon, or lower --max-steps / --num-epochs") from None
    return PrivacyPlan(units=units, rankings=rankings, units_per_step=units_per_step, sample_rate=sample_rate,
                       steps=steps, target_epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm,
                       noise_multiplier=float(sigma))


# ---------------------------------------------------------------------------------------------------
# Per-unit gradients and the step


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
    import torch

    grads = [[] for _ in params]
    loss = 0.0
    for unit in units:
        for p in params:
            p.grad = None
        loss += unit_loss_backward(model, unit, pad_token_id, micro_batch, bf16)
        for store, p in zip(grads, params):
            store.append(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
    for p in params:
        p.grad = None
    stacked = [torch.stack(g) if g else torch.zeros((0, *p.shape), dtype=p.dtype) for g, p in zip(grads, params)]
    return stacked, loss


def dp_step(optimizer, params, grad_samples) -> None:
    """One DP-SGD step through Opacus: ``grad_samples[i]`` [B, *shape] becomes ``params[i].grad_sample``;
    ``DPOptimizer.step`` clips each unit, sums, adds noise, divides by the expected batch and steps."""
    for p, g in zip(params, grad_samples):
        p.grad_sample = g
    optimizer.step()
    optimizer.zero_grad()


def make_dp_optimizer(params, plan: PrivacyPlan, learning_rate: float, weight_decay: float, noise_seed: int):
    """AdamW wrapped in Opacus's ``DPOptimizer``; the noise comes from a generator seeded with ``noise_seed``."""
    import torch
    from opacus.optimizers import DPOptimizer

    adamw = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(noise_seed)
    return DPOptimizer(adamw, noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                       expected_batch_size=plan.units_per_step, loss_reduction="mean", generator=generator)


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
    import os

    from rlhf.runtime import zero_stage

    if config.epsilon is None:
        raise UserError("--dp needs --epsilon (the privacy budget per unit, e.g. 8)")
    if not config.lora.enabled:
        raise UserError("--dp trains the LoRA adapter and score head only; full fine-tuning under DP is not "
                        "supported: leave lora.enabled on (the default with --dp)")
    if config.mode != "kwise":
        raise UserError("--dp needs mode kwise (a unit's rankings are summed as whole rankings)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or zero_stage():
        raise UserError("--dp runs in one process (per-unit gradients are computed one unit at a time); launch "
                        "it without accelerate/torchrun")


def train_private(config, train_rows, tokenizer, private: bool = True, plan: PrivacyPlan | None = None):
    """DP-SGD (or, with ``private=False``, the same sampling and schedule without clipping or noise: the
    baseline DP is compared with). Returns (merged plain score model, record for metrics.json)."""
    import time

    import torch
    from opacus.accountants import RDPAccountant
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    from tqdm import tqdm

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
    if private:
        optimizer = make_dp_optimizer(params, plan, config.learning_rate, config.weight_decay, config.seed + 1)
        accountant = RDPAccountant()
    else:
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    sampler = UniformWithReplacementSampler(num_samples=len(units), sample_rate=plan.sample_rate,
                                            generator=torch.Generator().manual_seed(config.seed), steps=plan.steps)
    losses, sizes = [], []
    started = time.perf_counter()
    bar = tqdm(sampler, total=plan.steps, desc="DP-SGD" if private else "baseline (no DP)", file=sys.stderr)
    for picked in bar:
        batch = [units[i] for i in picked]
        if private:
            grads, loss = per_unit_gradients(model, params, batch, tokenizer.pad_token_id, config.batch_size,
                                             config.bf16)
            dp_step(optimizer, params, grads)
            accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
        else:
            loss = 0.0
            for unit in batch:  # the same sum of unit losses, over the same expected batch, unclipped
                loss += unit_loss_backward(model, unit, tokenizer.pad_token_id, config.batch_size, config.bf16)
            for p in params:
                if p.grad is not None:
                    p.grad /= plan.units_per_step
            optimizer.step()
            optimizer.zero_grad()
        rankings = sum(len(u) for u in batch)
        losses.append(loss / rankings if rankings else None)
        sizes.append(len(batch))
        bar.set_postfix(units=len(batch), loss=f"{losses[-1]:.4f}" if rankings else "-")
    seconds = time.perf_counter() - started
    record = {"private": private, **asdict(plan), "train_seconds": seconds, "units_per_step_seen": sizes,
              "loss_history": losses}
    if private:
        record["epsilon_spent"] = accountant.get_epsilon(delta=plan.delta)
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


def plan_from(record: dict[str, Any]) -> PrivacyPlan:
    return PrivacyPlan(**{k: record[k] for k in PrivacyPlan.__dataclass_fields__})


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
            f"- Privacy unit: one {dp.get('unit', 'unit')}; {dp['units']} units ({dp['rankings']} rankings), "
            f"{dp['units_per_step']} units per step expected (sampling rate {dp['sample_rate']:.4g}), "
            f"{dp['steps']} steps, per-unit gradients clipped to {dp['max_grad_norm']:g}, noise multiplier "
            f"{dp['noise_multiplier']:.3f}",
            f"- Held-out accuracy {'n/a' if acc is None else f'{acc:.3f}'}"
            + (f"; the same schedule without DP: {base:.3f}" if base is not None else ""),
            "- Not covered: the held-out (test) split, which is never trained on but is scored for the figures "
            "above, the gate and the reward stats", ""]
