"""Rankings where they teach most: which open items a reward model is least sure about (issue 14).

A reviewer's ranking of an item teaches the reward model most where the model cannot yet tell its
replies apart for want of data, and least where it already knows, or where no one could tell (replies
alike on what reviewers rank by). An ensemble of linear probes, each fitted to a bootstrap resample
of the rankings by prompt (``probe_ensemble``), separates the two: where the members disagree on
which reply of a pair is better, more rankings would settle it; where they all say "a coin flip",
a ranking would be one. That is BALD (Houlsby et al. 2011, "Bayesian Active Learning for
Classification and Preference Learning"): the mutual information between a pair's label and the
model, ``H(mean_e p_e) - mean_e H(p_e)`` with ``p_e = sigmoid(r_e(a) - r_e(b))``
(``pair_information``), averaged over an item's pairs (``item_information``). Plain uncertainty
(``p`` near 1/2 under one model) would hand out first exactly the items whose replies are alike.

``rlhf reward prioritise`` (reward/prioritise.py) computes these figures from files, and
``rlhf app prioritise`` (feedback_app/prioritise.py) stores them as the items' hand-out priority;
``simulate_curves`` replays the choice on labelled data against the plain order, the measurement
behind it (tests/reward/test_active.py on a constructed case, bench/active_bench.py on the bundled
model's replies and the efficacy suite's rules).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from reward.losses import pair_mask
from reward.probe import PairProblem, feature_stats, pair_accuracy, select_l2, standardise
from rlhf.schema import PRIORITY_MEMBERS as MEMBERS
from rlhf.schema import PRIORITY_MIN_PROMPTS as MIN_PROMPTS  # the resamples and the validation split are by prompt
from rlhf.schema import PRIORITY_MIN_RANKINGS as MIN_RANKINGS


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) in nats, 0 at p = 0 and 1."""
    p = p.double()
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def pair_information(scores: torch.Tensor) -> torch.Tensor:
    """scores [E, ..., K] (E ensemble members' rewards of K replies) -> [..., K, K]: for each ordered pair
    (a, b) the mutual information between "a beats b" and the member, ``H(mean_e p) - mean_e H(p)`` with
    ``p = sigmoid(r_e(a) - r_e(b))``. 0 when the members agree (whatever they agree on); at most log 2."""
    p = torch.sigmoid(scores.double().unsqueeze(-1) - scores.double().unsqueeze(-2))
    return (binary_entropy(p.mean(0)) - binary_entropy(p).mean(0)).clamp_min(0)


def item_information(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """scores [E, N, K], present [N, K] (bool: the item has that reply) -> [N]: the mean of
    ``pair_information`` over each item's pairs of present replies (0 for an item with fewer than two)."""
    info = pair_information(scores)  # [N, K, K]
    k = scores.shape[-1]
    upper = torch.ones(k, k, dtype=torch.bool).triu(1)
    mask = present.unsqueeze(-1) & present.unsqueeze(-2) & upper
    return (info * mask).sum((-1, -2)) / mask.sum((-1, -2)).clamp_min(1)


@dataclass
class Ensemble:
    """Probes fitted to bootstrap resamples: ``scores(x)`` -> [E, ...] rewards of raw features x [..., H]."""

    weights: torch.Tensor  # [E, H] on standardised features
    mean: torch.Tensor  # [H]
    std: torch.Tensor  # [H]
    l2: float  # the strength every member was fitted with (chosen on a validation split by prompt)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...h,eh->e...", standardise(x, self.mean, self.std), self.weights)


def usable(ranks: torch.Tensor) -> torch.Tensor:
    """[B] bool: rankings with two present replies of distinct ranks (a pair to learn from)."""
    return pair_mask(ranks).flatten(1).any(1)


def validation_prompts(names: Sequence[str], rng: random.Random) -> set[str]:
    """A quarter of the prompts (at least one), drawn with ``rng``: the split the L2 strength is chosen on."""
    return set(rng.sample(list(names), max(1, len(names) // 4)))


def probe_ensemble(x: torch.Tensor, ranks: torch.Tensor, groups: Sequence[str], members: int = MEMBERS,
                   seed: int = 0) -> Ensemble:
    """``members`` probes on rankings x [B, K, H] / ranks [B, K], each fitted to a bootstrap resample of
    the prompts (``groups[b]``: ranking b's prompt; a prompt's rankings stay together), all with the L2
    strength ``select_l2`` picks on a quarter of the prompts held out. Raises ValueError with fewer than
    ``MIN_RANKINGS`` usable rankings or ``MIN_PROMPTS`` prompts."""
    keep = usable(ranks)
    x, ranks = x[keep], ranks[keep]
    groups = [g for g, k in zip(groups, keep.tolist()) if k]
    names = sorted(set(groups))
    if len(groups) < MIN_RANKINGS or len(names) < MIN_PROMPTS:
        raise ValueError(f"{len(groups)} rankings with a usable pair over {len(names)} prompts: the ensemble needs "
                         f"at least {MIN_RANKINGS} over {MIN_PROMPTS} prompts")
    rng = random.Random(seed)
    val_names = validation_prompts(names, rng)
    val = torch.tensor([g in val_names for g in groups])
    l2 = select_l2("ensemble", x[~val], ranks[~val], x[val], ranks[val], refit=False).l2
    mean, std = feature_stats(x, ranks)
    z = standardise(x, mean, std)
    by_name: dict[str, list[int]] = {}
    for b, g in enumerate(groups):
        by_name.setdefault(g, []).append(b)
    weights = []
    while len(weights) < members:
        rows = [b for name in rng.choices(names, k=len(names)) for b in by_name[name]]
        weights.append(PairProblem(z[rows], ranks[rows]).fit(l2))
    return Ensemble(torch.stack(weights), mean, std, l2)


# ---------------------------------------------------------------------------------------------------
# The measurement: rankings handed out by information against the plain order, on labelled data


def simulate_curves(x: torch.Tensor, label: Callable[[int, random.Random], list[int]], groups: Sequence[str],
                    test_x: torch.Tensor, test_ranks: torch.Tensor, start: int = 8, step: int = 8,
                    budgets: Sequence[int] | None = None, members: int = MEMBERS, seed: int = 0) -> dict:
    """Held-out accuracy of the default probe (``select_l2`` on a quarter of the ranked prompts, refit on
    all) after each budget of rankings, when items are ranked in a random order ("order", the store's
    hand-out before ``rlhf app prioritise``) and when, after the first ``start`` in that order, each next
    ``step`` are the open items of highest ``item_information`` under an ensemble of what was ranked so
    far ("information").

    x: [N, K, H] features of the pool's replies; ``label(i, rng)``: a reviewer's ranks of item i (noise
    drawn from rng); test_x / test_ranks: the held-out rankings accuracy is measured on (e.g. by the
    noiseless rule). Returns ``{"budgets": [...], "order": [acc...], "information": [acc...]}``.
    """
    n = x.shape[0]
    budgets = list(budgets or range(start, n + 1, step))
    if budgets[-1] < n:
        budgets.append(n)  # the last budget ranks the whole pool: both orders end on the same rankings
    present = torch.ones(x.shape[:2], dtype=torch.bool)
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    labels = {i: label(i, random.Random(f"{seed}:{i}")) for i in range(n)}  # one reviewer's ranks per item
    out = {"budgets": budgets, "order": [], "information": []}
    for strategy in ("order", "information"):
        chosen = order[:start]
        for budget in budgets:
            while len(chosen) < budget:
                rest = [i for i in order if i not in set(chosen)]
                take = min(step, budget - len(chosen))
                if strategy == "order":
                    chosen += rest[:take]
                    continue
                try:
                    ensemble = probe_ensemble(x[chosen], _ranks(labels, chosen), [groups[i] for i in chosen],
                                              members, seed)
                except ValueError:  # too few usable rankings yet: keep the plain order
                    chosen += rest[:take]
                    continue
                info = item_information(ensemble.scores(x[rest]), present[rest])
                top = torch.argsort(info, descending=True, stable=True)[:take].tolist()
                chosen += [rest[t] for t in top]
            out[strategy].append(_accuracy(x[chosen], _ranks(labels, chosen), [groups[i] for i in chosen],
                                           test_x, test_ranks, seed))
    return out


def _ranks(labels: dict[int, list[int]], chosen: list[int]) -> torch.Tensor:
    return torch.tensor([labels[i] for i in chosen], dtype=torch.long)


def _accuracy(x, ranks, groups, test_x, test_ranks, seed: int) -> float:
    """The default probe's held-out accuracy (validation: a quarter of the prompts); chance where the
    rankings give no usable split."""
    keep = usable(ranks)
    names = sorted({g for g, k in zip(groups, keep.tolist()) if k})
    if len(names) < 2:
        return 0.5
    val_names = validation_prompts(names, random.Random(seed))
    val = torch.tensor([g in val_names for g in groups]) & keep
    train = keep & ~val
    if not bool(train.any()):
        return 0.5
    probe = select_l2("curve", x[train], ranks[train], x[val], ranks[val])
    accuracy = pair_accuracy(probe.scores(test_x), test_ranks)
    return 0.5 if math.isnan(accuracy) else accuracy


def rankings_to_reach(budgets: Sequence[int], accuracies: Sequence[float], target: float) -> int | None:
    """The first budget whose accuracy reaches ``target`` (None: none does)."""
    return next((b for b, a in zip(budgets, accuracies) if a >= target), None)
