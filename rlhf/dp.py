"""Differential privacy per unit (DP-SGD through Opacus), shared by ``rlhf reward train --dp`` and ``rlhf sft --dp``.

The privacy unit is one customer, conversation or prompt (the export's ``unit`` column), not one
dataset row: a customer's conversation yields several prompts, each ranked by several reviewers or
answered by a demonstration, and a K-wise ranking loss couples its K replies. DP-SGD's guarantee holds
for whatever one clipped gradient covers, so each step here

1. samples UNITS with Poisson sampling (Opacus's ``UniformWithReplacementSampler``, rate q);
2. computes each sampled unit's gradient as the gradient of the SUM of its rows' losses, with plain
   autograd, one unit at a time (the caller's ``unit_backward``; trainable adapter parameters only);
3. hands the stacked per-unit gradients to Opacus's ``DPOptimizer`` as ``p.grad_sample``: it clips
   each unit to ``max_grad_norm`` C (one norm over all trainable parameters), sums, adds Gaussian
   noise of std sigma * C, divides by the expected units per step and steps AdamW;
4. records (sigma, q) in Opacus's RDP accountant, whose epsilon at ``delta`` is the reported budget.

Why not Opacus's ``GradSampleModule`` (its hooks compute per-ROW gradients): rows of one unit must be
summed before clipping, and its hooks on PEFT layers silently corrupted LoRA updates (Opacus issue
820). Plain autograd per unit is slower (one backward per sampled unit) but exact; the reward and SFT
tests check one step against the same update computed by hand.

This module imports neither torch nor Opacus at import time (the CLI reads it while registering).
"""

from __future__ import annotations

import math
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

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
            raise UserError(f"{where} row {i}: no privacy unit ('unit' column) for --dp; re-export the data with "
                            f"'rlhf app export' (it writes the customer, conversation or prompt as 'unit'), or add "
                            f"a 'unit' column naming each row's customer or conversation")
        groups.setdefault(str(unit), []).append(i)
    return list(groups.values())


def clip_factors(norms: Sequence[float], max_grad_norm: float) -> list[float]:
    """Per-unit scale ``min(1, C / (norm + 1e-6))``, exactly as Opacus's ``DPOptimizer`` clips."""
    return [min(1.0, max_grad_norm / (n + 1e-6)) for n in norms]


@dataclass(frozen=True)
class PrivacyPlan:
    """What the budget implies for this data, fixed before training (and printed)."""

    units: int  # privacy units in the training split
    rows: int  # training rows (rankings, demonstrations) the units hold
    units_per_step: int  # expected units per step (the Poisson batch's mean; the divisor of the sum)
    sample_rate: float  # q = units_per_step / units
    steps: int
    target_epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float  # sigma: noise std is sigma * max_grad_norm on the summed clipped gradients
    row_kind: str = "rows"  # what a row is, for messages and cards: "rankings", "demonstrations"
    accountant: str = ACCOUNTANT

    def summary(self) -> str:
        return (f"differential privacy: {self.units} units ({self.rows} {self.row_kind}), {self.units_per_step} "
                f"units per step expected (sampling rate {self.sample_rate:.4g}), {self.steps} steps; target epsilon "
                f"{self.target_epsilon:g} at delta {self.delta:.3g} per unit -> noise multiplier "
                f"{self.noise_multiplier:.3f} (noise std {self.noise_multiplier * self.max_grad_norm:.3g} on a sum of "
                f"~{self.units_per_step} gradients clipped to {self.max_grad_norm:g}; signal-to-noise at most "
                f"{self.units_per_step / max(self.noise_multiplier, 1e-12):.2f} per step)")


def plan_privacy(units: int, rows: int, units_per_step: int, epochs: float, max_steps: int, epsilon: float,
                 delta: float | None, max_grad_norm: float, row_kind: str = "rows") -> PrivacyPlan:
    """Sampling rate, steps and the noise multiplier Opacus's accountant needs for (epsilon, delta).

    ``max_steps`` > 0 fixes the steps; otherwise ``epochs`` / q. ``delta`` None: 1 / (10 * units), below
    the 1/units at which a mechanism could publish one unit's data outright. A budget no noise level
    meets is a ``UserError`` naming what to change.
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
                        f"--epsilon, or lower the number of steps") from None
    return PrivacyPlan(units=units, rows=rows, units_per_step=units_per_step, sample_rate=sample_rate,
                       steps=steps, target_epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm,
                       noise_multiplier=float(sigma), row_kind=row_kind)


def plan_from(record: dict[str, Any]) -> PrivacyPlan:
    """The plan back from a ``metrics.json`` ``dp`` record (``asdict`` of the plan plus the run's figures)."""
    return PrivacyPlan(**{k: record[k] for k in PrivacyPlan.__dataclass_fields__ if k in record})


def check_single_process() -> None:
    """DP-SGD here computes per-unit gradients one unit at a time in one process: refused under a launcher."""
    from rlhf.runtime import world_size, zero_stage

    if world_size() > 1 or zero_stage():
        raise UserError("--dp runs in one process (per-unit gradients are computed one unit at a time); launch "
                        "it without accelerate/torchrun")


# ---------------------------------------------------------------------------------------------------
# Per-unit gradients and the step


def per_unit_gradients(params, units: Sequence[Any], unit_backward: Callable[[Any], float]) -> tuple[list[Any], float]:
    """([P] tensors of shape [B, *p.shape]: each sampled unit's gradient), summed loss of the B units.

    ``unit_backward(unit)`` runs the backward of the SUM of the unit's row losses (gradients accumulate
    in ``p.grad``) and returns that sum.
    """
    import torch

    grads = [[] for _ in params]
    loss = 0.0
    for unit in units:
        for p in params:
            p.grad = None
        loss += unit_backward(unit)
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


# ---------------------------------------------------------------------------------------------------
# The schedule


def train_units(params, units: Sequence[Sequence[Any]], plan: PrivacyPlan, unit_backward: Callable[[Any], float],
                learning_rate: float, weight_decay: float, seed: int, private: bool = True,
                linear_decay: bool = False, on_step: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """DP-SGD over ``units`` (each a list of rows) for ``plan.steps`` Poisson-sampled steps; with
    ``private=False`` the same sampling and schedule without clipping or noise (the baseline DP is
    compared with: the sum of unit gradients over the same expected batch).

    Units are sampled from a generator seeded with ``seed``, the noise from ``seed + 1``. ``linear_decay``:
    the learning rate falls linearly to 0 over the steps (the SFT schedule). ``on_step(step, figures)``
    after each step. Returns the record for ``metrics.json``: the plan, losses, time, and with
    ``private`` the spent epsilon.
    """
    import torch
    from opacus.accountants import RDPAccountant
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    from tqdm import tqdm

    if private:
        optimizer = make_dp_optimizer(params, plan, learning_rate, weight_decay, seed + 1)
        accountant = RDPAccountant()
    else:
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    sampler = UniformWithReplacementSampler(num_samples=len(units), sample_rate=plan.sample_rate,
                                            generator=torch.Generator().manual_seed(seed), steps=plan.steps)
    losses, sizes = [], []
    started = time.perf_counter()
    bar = tqdm(sampler, total=plan.steps, desc="DP-SGD" if private else "baseline (no DP)", file=sys.stderr)
    for step, picked in enumerate(bar, start=1):
        if linear_decay:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * (1.0 - (step - 1) / plan.steps)
        batch = [units[i] for i in picked]
        if private:
            grads, loss = per_unit_gradients(params, batch, unit_backward)
            dp_step(optimizer, params, grads)
            accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
        else:
            loss = 0.0
            for unit in batch:  # the same sum of unit losses, over the same expected batch, unclipped
                loss += unit_backward(unit)
            for p in params:
                if p.grad is not None:
                    p.grad /= plan.units_per_step
            optimizer.step()
            optimizer.zero_grad()
        rows = sum(len(u) for u in batch)
        losses.append(loss / rows if rows else None)
        sizes.append(len(batch))
        bar.set_postfix(units=len(batch), loss=f"{losses[-1]:.4f}" if rows else "-")
        if on_step is not None:
            on_step(step, {"loss": losses[-1], "units": len(batch), "rows": rows,
                           "learning_rate": optimizer.param_groups[0]["lr"]})
    record = {"private": private, **asdict(plan), "train_seconds": time.perf_counter() - started,
              "units_per_step_seen": sizes, "loss_history": losses}
    if private:
        record["epsilon_spent"] = accountant.get_epsilon(delta=plan.delta)
    return record


def privacy_text(dp: dict[str, Any], strong: bool = False) -> str:
    """One sentence on a ``dp`` record, for cards and logs: the spent budget, what it is per, the plan.
    ``strong``: the spent epsilon in Markdown bold."""
    spent = f"epsilon {dp['epsilon_spent']:.3f} spent"
    return (f"DP-SGD (Opacus, {dp.get('accountant', ACCOUNTANT).upper()} accountant), "
            f"{f'**{spent}**' if strong else spent} at delta {dp['delta']:.3g} per unit (one "
            f"{dp.get('unit', 'unit')}; target epsilon {dp['target_epsilon']:g}); {dp['units']} units "
            f"({dp.get('rows', dp.get('rankings'))} {dp.get('row_kind', 'rows')}), {dp['units_per_step']} units per "
            f"step expected, {dp['steps']} steps, per-unit gradients clipped to {dp['max_grad_norm']:g}, noise "
            f"multiplier {dp['noise_multiplier']:.3f}")
