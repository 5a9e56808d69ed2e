"""Guard against the policy exploiting its reward model: a pure detector over per-update metrics.

The training reward model is what PPO climbs; a second reward model trained on another split of the
rankings (or an ensemble's pessimistic reward, mean minus k standard deviations, Coste et al. 2023,
"Reward Model Ensembles Help Mitigate Overoptimization") is a held-out judge the policy never saw.
When the training reward keeps rising and the held-out one does not, the policy is learning what the
training reward model gets wrong, not what reviewers want (Gao et al. 2022, "Scaling Laws for Reward
Model Overoptimization": the gold reward peaks and falls while the proxy keeps rising).

Rule, checked after every update t (``check_exploitation``):
  * KL to the reference above ``kl_bound``: stop at once.
  * diverging: over the last ``window`` updates the training reward's least-squares slope is positive
    and significant (one-sided t test, level ``alpha``) while the held-out reward's slope is not
    positive;
  * dropped: the held-out reward is more than ``margin`` below its best so far while the training
    reward is above its value at that best update (checked from the ``window``-th update on).
  Either of the last two is a warning; ``patience`` warnings in a row stop the run. A warning on the
  run's last update (``final``) stops it too: no later update can confirm or clear it, and exporting an
  update the guard has just flagged over the best one it has not is the wrong way round. The update to
  keep is the one with the best held-out reward so far (within the KL bound).

The guard's settings (``GuardFields``, one set of fields and flags for ``rlhf ppo``, ``rlhf grpo`` and
``rlhf rloo``) and the one function that loads the second reward model (``build_guard``) live here too.

Standard library and pydantic at import; scipy inside ``_slope_test``, torch and the models inside
``build_guard``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Sequence

from pydantic import Field

from rlhf.config import Config
from rlhf.errors import UserError


@dataclass(frozen=True)
class UpdateMetrics:
    """What one PPO update reports to the guard (means over that update's rollouts)."""

    step: int  # the update's number
    reward: float  # mean reward from the training reward model
    held_out_reward: float  # mean reward from the second reward model (or the ensemble's pessimistic one)
    kl: float  # mean KL of the policy to the reference
    length: float  # mean reply length in tokens
    eos_share: float  # share of replies that ended with EOS rather than at the token limit


@dataclass(frozen=True)
class GuardSettings:
    """Defaults chosen on simulated runs of 30 updates, per-update noise 0.1 on both rewards, the
    training reward rising 0.1 per update: an honest run (held-out +0.05 per update) was stopped in 3%
    of 300 runs (21% with window 5), a flat held-out reward in 100%, and one peaking at update 12 then
    falling 0.05 per update in 100%, at a median update 17, keeping update 12."""

    window: int = 8  # updates in each slope test (at least 3)
    alpha: float = 0.05  # one-sided level of the training reward's slope test
    patience: int = 2  # warnings in a row before stopping
    kl_bound: float | None = None  # stop when KL to the reference exceeds this
    margin: float | None = None  # held-out drop below its best that counts; None: 3 x its noise (see ``noise``)


@dataclass(frozen=True)
class GuardDecision:
    action: str  # "continue", "warn" or "stop"
    step: int  # the update just checked
    keep_step: int  # the update to keep (best held-out reward so far, within the KL bound)
    reasons: tuple[str, ...]
    message: str  # one human sentence: what was seen, what is kept and why


def _slope_test(ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of ``ys`` against 0..n-1 and its one-sided p-value for slope > 0.

    t = b / sqrt(s^2 / Sxx) with s^2 the residual variance on n - 2 degrees of freedom. A series on an
    exact line has s = 0: p is 0 for a rising line and 1 otherwise.
    """
    from scipy.stats import t as student_t

    n = len(ys)
    x_bar, y_bar = (n - 1) / 2, sum(ys) / n
    sxx = sum((x - x_bar) ** 2 for x in range(n))
    slope = sum((x - x_bar) * (y - y_bar) for x, y in zip(range(n), ys)) / sxx
    residual = sum((y - y_bar - slope * (x - x_bar)) ** 2 for x, y in zip(range(n), ys))
    if residual <= 1e-24 * max(1.0, sum(y * y for y in ys)):
        return slope, 0.0 if slope > 0 else 1.0
    se = math.sqrt(residual / (n - 2) / sxx)
    return slope, float(student_t.sf(slope / se, n - 2))


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def noise(values: Sequence[float]) -> float:
    """Robust per-update noise of a series: 1.4826 MAD of its first differences / sqrt(2).

    Differencing removes a trend, the median absolute deviation ignores the few large steps where the
    trend turns, 1.4826 makes MAD a standard deviation for normal noise, and the difference of two
    independent noisy values has sqrt(2) times their standard deviation.
    """
    diffs = [b - a for a, b in zip(values, values[1:])]
    if len(diffs) < 2:
        return math.inf
    centre = median(diffs)
    return 1.4826 * median(abs(d - centre) for d in diffs) / math.sqrt(2)


def _warnings(history: Sequence[UpdateMetrics], settings: GuardSettings) -> list[str]:
    """Why the last update of ``history`` looks like exploitation (empty: it does not)."""
    reasons = []
    t, w = len(history) - 1, settings.window
    if len(history) >= w:
        recent = history[-w:]
        slope, p = _slope_test([m.reward for m in recent])
        held_slope, _ = _slope_test([m.held_out_reward for m in recent])
        if slope > 0 and p < settings.alpha and held_slope <= 0:
            reasons.append(f"over updates {recent[0].step}-{recent[-1].step} the training reward rose "
                           f"{recent[0].reward:.3g} -> {recent[-1].reward:.3g} ({slope:+.3g} per update, {_p_text(p)}) "
                           f"while the second reward model's did not ({held_slope:+.3g} per update)")
    held = [m.held_out_reward for m in history]
    best = max(range(len(history)), key=lambda i: (held[i], -i))
    # The noise needs a window's differences: with two or three, their MAD is often 0.
    margin = settings.margin if settings.margin is not None else 3 * noise(held) if len(history) >= w else math.inf
    if held[t] < held[best] - margin and history[t].reward > history[best].reward:
        reasons.append(f"the second reward model's reward {held[t]:.3g} is {held[best] - held[t]:.3g} below its best "
                       f"({held[best]:.3g} at update {history[best].step}; margin {margin:.3g}) while the training "
                       f"reward rose {history[best].reward:.3g} -> {history[t].reward:.3g}")
    return reasons


def check_exploitation(history: Sequence[UpdateMetrics], settings: GuardSettings = GuardSettings(),
                       final: bool = False) -> GuardDecision:
    """The guard's decision after the last update of ``history`` (updates in order, oldest first);
    ``final``: that update is the run's last, so a warning on it stops the run (keeping the best update)."""
    if settings.window < 3:
        raise ValueError("window must be at least 3 updates (a slope test needs a residual)")
    if not history:
        raise ValueError("no update to check")
    last = history[-1]
    within = [i for i, m in enumerate(history) if settings.kl_bound is None or m.kl <= settings.kl_bound] or [0]
    keep = history[max(within, key=lambda i: (history[i].held_out_reward, -i))]
    kept = (f"keeping update {keep.step}, where the second reward model's reward was best "
            f"({keep.held_out_reward:.3g}; training reward {keep.reward:.3g}, KL {keep.kl:.3g})")
    drift = (f"; reply length {keep.length:.0f} -> {last.length:.0f} tokens, EOS share {keep.eos_share:.0%} -> "
             f"{last.eos_share:.0%}") if keep is not last else ""

    if settings.kl_bound is not None and last.kl > settings.kl_bound:
        reason = f"KL to the reference {last.kl:.3g} crossed the bound {settings.kl_bound:.3g}"
        return GuardDecision("stop", last.step, keep.step, (reason,),
                             f"Stopping at update {last.step}: {reason}; {kept}{drift}.")
    reasons = _warnings(history, settings)
    if not reasons:
        return GuardDecision("continue", last.step, keep.step, (), f"Update {last.step}: no sign of reward hacking.")
    in_a_row = 1
    while in_a_row < len(history) and _warnings(history[:len(history) - in_a_row], settings):
        in_a_row += 1
    seen = "; ".join(reasons)
    if in_a_row >= settings.patience:
        return GuardDecision("stop", last.step, keep.step, tuple(reasons),
                             f"Stopping at update {last.step} ({in_a_row} warnings in a row): {seen}: the policy is "
                             f"exploiting the training reward model; {kept}{drift}.")
    if final and keep is not last:
        return GuardDecision("stop", last.step, keep.step, tuple(reasons),
                             f"Stopping at update {last.step}, the run's last, on a warning no later update can "
                             f"confirm or clear: {seen}; {kept}{drift}.")
    return GuardDecision("warn", last.step, keep.step, tuple(reasons),
                         f"Warning at update {last.step} ({in_a_row} of {settings.patience} before stopping): {seen}.")


def first_stop(history: Sequence[UpdateMetrics], settings: GuardSettings = GuardSettings(),
               final: bool = False) -> GuardDecision:
    """Replay ``history`` update by update: the first ``stop`` decision, else the last decision
    (``final``: ``history`` is a whole run, its last update the run's last)."""
    decision = check_exploitation(history[:1], settings, final=final and len(history) == 1)
    for t in range(2, len(history) + 1):
        decision = check_exploitation(history[:t], settings, final=final and t == len(history))
        if decision.action == "stop":
            break
    return decision


# ---------------------------------------------------------------------------------------------------
# Settings and the second reward model, shared by every policy trainer


class GuardFields(Config):
    """The guard's config fields (mixed into ``PPORunConfig`` and ``OnlineRunConfig``: same YAML keys and
    flags for every policy trainer)."""

    guard_reward_model: str | None = Field(None, description="a second reward model, trained on another split of "
                                           "the rankings: it scores the same replies as the training reward model "
                                           "(PPO: every update's rollouts; GRPO/RLOO: every group, weight 0 in the "
                                           "loss), and the guard (rlhf.guards) stops the run when the training "
                                           "reward rises while this one's does not, keeping the update where this "
                                           "one's was best")
    guard_window: int = Field(8, ge=3, description="guard: updates in each slope test")
    guard_patience: int = Field(2, ge=1, description="guard: warnings in a row before stopping")
    guard_kl_bound: float | None = Field(None, gt=0.0, description="guard: stop when KL to the reference exceeds this")
    guard_margin: float | None = Field(None, ge=0.0, description="guard: a drop of the second model's reward below "
                                       "its best that counts (default: 3 x its per-update noise)")

    def guard_settings(self) -> GuardSettings:
        return GuardSettings(window=self.guard_window, patience=self.guard_patience, kl_bound=self.guard_kl_bound,
                             margin=self.guard_margin)


# The guard's fields steer only when to stop, not what one update computes: a run may be resumed with
# other ones (every trainer's RESUMABLE_FIELDS takes them).
GUARD_FIELDS = frozenset(GuardFields.model_fields)


def build_guard(run, tokenizer, stage: int):
    """The second reward model and the guard (``rlhf.ppo.guard.GuardWatch``), or None without
    ``guard_reward_model``. ``run``: a config with ``GuardFields``, ``dtype``, ``center_rewards`` and
    ``output_dir``; ``tokenizer``: the policy's (the second model must share its vocabulary);
    ``stage``: the DeepSpeed ZeRO stage of this launch (0 without DeepSpeed)."""
    if run.guard_reward_model is None:
        return None
    if stage == 3:
        raise UserError("guard_reward_model under DeepSpeed ZeRO-3: the guard keeps the best update's policy weights, "
                        "which ZeRO-3 partitions; use ZeRO-2 or DDP, or leave guard_reward_model unset")
    from rlhf.modeling import load_tokenizer
    from rlhf.ppo.guard import GuardWatch
    from rlhf.rewards import check_reward_model, load_reward_model

    stats = check_reward_model(run.guard_reward_model, tokenizer)
    model = load_reward_model(run.guard_reward_model, run.dtype, stats, run.center_rewards)
    model.config._name_or_path = "guard_reward_model"  # GRPO/RLOO: TRL names each reward's logged mean after it
    reward_tokenizer = load_tokenizer(run.guard_reward_model, padding_side="right")  # GRPO/RLOO hand it to TRL
    return GuardWatch(model, tokenizer.pad_token_id, run.guard_settings(), Path(run.output_dir) / "guard.json",
                      reward_tokenizer)
