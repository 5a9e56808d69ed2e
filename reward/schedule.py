"""Choosing the reward model's schedule on the validation split, and its learning curve.

* ``best_check`` / ``should_stop``: early stopping over validation checks (pure).
* ``validation_callback``: a ``TrainerCallback`` that scores the validation rankings every N steps,
  keeps a copy of the trainable weights at the best check, stops after ``patience`` checks without
  improvement, and puts the best weights back at the end.
* ``probe_learning_curve``: held-out accuracy of the linear probe fitted on a quarter, half and all
  of the training rankings (the L2 chosen on validation each time): cheap, and the estimate
  ``rlhf.gate.learning_curve_fit`` extrapolates from.

Why validation loss and not accuracy decides: with a few dozen validation rankings accuracy moves
in steps of one pair and ties often; the K-wise loss is smooth and also punishes over-confidence
(the memorising that issue 14 measured: 0.94 training, 0.55 held-out accuracy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Check:
    """One validation check: after ``step`` optimizer steps (0: before training)."""

    step: int
    val_loss: float  # K-wise Bradley-Terry loss on the validation rankings (log 2 per pair is chance)
    val_accuracy: float  # share of validation pairs ranked like the reviewers (exact tie 1/2)


def best_check(checks: Sequence[Check]) -> Check:
    """The check with the lowest validation loss; ties go to the higher accuracy, then the earlier step."""
    if not checks:
        raise ValueError("no validation check")
    return min(checks, key=lambda c: (c.val_loss, -c.val_accuracy, c.step))


def should_stop(checks: Sequence[Check], patience: int) -> bool:
    """True when the last ``patience`` checks all came after the best one (no improvement since)."""
    if len(checks) <= patience:
        return False
    best = best_check(checks)
    return checks.index(best) < len(checks) - patience


def validation_scores(model, val_ids: list[list[int]], val_ranks: list[list[int]], pad_token_id: int,
                      batch_size: int) -> tuple[float, float]:
    """(K-wise loss, pair accuracy) of ``model`` on the validation rankings.

    ``val_ids``: token ids of every reply, rankings in order; ``val_ranks[b]``: ranks of ranking b.
    """
    import torch

    from reward.evaluate import score_ids
    from reward.losses import kwise_loss
    from reward.probe import pair_accuracy

    flat = score_ids(model, val_ids, pad_token_id, batch_size)
    k_max = max(len(r) for r in val_ranks)
    scores = torch.zeros(len(val_ranks), k_max, dtype=torch.float64)
    ranks = torch.zeros(len(val_ranks), k_max, dtype=torch.long)
    start = 0
    for b, r in enumerate(val_ranks):
        scores[b, :len(r)] = torch.tensor(flat[start:start + len(r)], dtype=torch.float64)
        ranks[b, :len(r)] = torch.tensor(r)
        start += len(r)
    return float(kwise_loss(scores, ranks)), pair_accuracy(scores, ranks)


def validation_callback(val_ids: list[list[int]], val_ranks: list[list[int]], pad_token_id: int, every: int,
                        patience: int, batch_size: int, say=print):
    """Early stopping on the validation split as a ``transformers.TrainerCallback`` (made on demand so
    importing this module stays light). ``.checks`` holds every check, ``.kept`` the restored one."""
    from transformers import TrainerCallback

    class ValidationEarlyStopping(TrainerCallback):
        def __init__(self):
            self.checks: list[Check] = []
            self.best_weights: dict[str, Any] | None = None
            self.kept: Check | None = None

        def _check(self, model, step: int) -> None:
            loss, acc = validation_scores(model, val_ids, val_ranks, pad_token_id, batch_size)
            check = Check(step, loss, acc)
            self.checks.append(check)
            if best_check(self.checks) is check:
                # Trainable weights only (LoRA adapter and score head, or all under full fine-tuning).
                self.best_weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            say(f"validation after {step} steps: loss {loss:.4f}, pair accuracy {acc:.3f}"
                + (" (best so far)" if best_check(self.checks) is check else ""))

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._check(model, 0)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                self._check(model, state.global_step)
                if should_stop(self.checks, patience):
                    say(f"early stopping after {state.global_step} steps: no lower validation loss in "
                        f"{patience} checks")
                    control.should_training_stop = True

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if not self.checks or self.checks[-1].step != state.global_step:
                self._check(model, state.global_step)
            self.kept = best_check(self.checks)
            if self.kept is not self.checks[-1] and self.best_weights is not None:
                params = dict(model.named_parameters())
                import torch

                with torch.no_grad():
                    for name, value in self.best_weights.items():
                        params[name].copy_(value)
            say(f"kept the weights after {self.kept.step} steps (lowest validation loss {self.kept.val_loss:.4f}, "
                f"pair accuracy {self.kept.val_accuracy:.3f})")

    return ValidationEarlyStopping()


def checks_record(checks: Sequence[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


def probe_learning_curve(feature: str, train_x, train_ranks, val_x, val_ranks, test_x, test_ranks,
                         fractions: Sequence[float] = (0.25, 0.5, 1.0), repeats: int = 8,
                         seed: int = 0) -> list[dict]:
    """Held-out (test) pair accuracy of the probe fitted on a ``fraction`` of the training rankings, L2
    chosen on validation each time, averaged over ``repeats`` random subsets of each size below all of
    them (seeded). Why average: on a few dozen rankings one subset's accuracy swings by several points,
    enough to turn the fitted slope, and so the number of rankings the gate asks for, into noise (one
    subset per size once asked for 14 more rankings where about 50 were needed).
    Returns ``[{"rankings": m, "accuracy": mean, "spread": std over subsets, "repeats": r, "l2": median}]``."""
    import statistics

    import torch

    from reward.probe import pair_accuracy, select_l2

    out = []
    n = train_x.shape[0]
    generator = torch.Generator().manual_seed(seed)
    for fraction in fractions:
        m = min(n, max(2, math.ceil(n * fraction))) if fraction < 1 else n
        accuracies, l2s = [], []
        for _ in range(repeats if m < n else 1):
            idx = torch.randperm(n, generator=generator)[:m] if m < n else torch.arange(n)
            probe = select_l2(feature, train_x[idx], train_ranks[idx], val_x, val_ranks, refit=False)
            accuracies.append(pair_accuracy(probe.scores(test_x), test_ranks))
            l2s.append(probe.l2)
        out.append({"rankings": m, "accuracy": statistics.fmean(accuracies),
                    "spread": statistics.pstdev(accuracies), "repeats": len(accuracies),
                    "l2": statistics.median(l2s)})
    return out


def shuffle_ranks(ranks, generator):
    """``ranks`` [B, K] with each row's ranks permuted among its present replies (rank > 0): the same
    rankings, ties and reply counts, no longer tied to the replies. The null of ``probe_chance_null``."""
    import torch

    out = ranks.clone()
    for i in range(ranks.shape[0]):
        present = torch.nonzero(ranks[i] > 0).flatten()
        out[i, present] = ranks[i, present[torch.randperm(len(present), generator=generator)]]
    return out


def cross_fold_groups(groups: Sequence[Any], folds: int, seed: int) -> list[list[int]]:
    """Row indices in ``folds`` folds by group (a prompt's rankings, every reviewer's, stay in one fold):
    the distinct groups shuffled (seeded) and dealt round-robin, so folds differ by at most one prompt."""
    import random

    distinct = sorted(set(groups), key=str)
    random.Random(seed).shuffle(distinct)
    fold_of = {g: i % folds for i, g in enumerate(distinct)}
    out: list[list[int]] = [[] for _ in range(folds)]
    for row, g in enumerate(groups):
        out[fold_of[g]].append(row)
    return out


def probe_cross_fit(feature: str, x, ranks, fold_rows: Sequence[Sequence[int]]) -> float:
    """Out-of-fold pair accuracy of the probe over every ranking: for each fold, the probe is fitted as
    the real one is (L2 chosen on a validation fold, the next one round the ring, then refitted on
    training + validation) on the other folds and scores the rankings of this one; the accuracy pools
    every fold's pairs. x: [B, K, H] features; ranks: [B, K]."""
    import torch

    from reward.probe import pair_accuracy, select_l2

    k = len(fold_rows)
    scores = torch.zeros(ranks.shape, dtype=torch.float64)
    for f in range(k):
        v = (f + 1) % k
        train = torch.tensor([i for j in range(k) if j not in (f, v) for i in fold_rows[j]], dtype=torch.long)
        val, held = torch.tensor(fold_rows[v], dtype=torch.long), torch.tensor(fold_rows[f], dtype=torch.long)
        probe = select_l2(feature, x[train], ranks[train], x[val], ranks[val])
        scores[held] = probe.scores(x[held])
    return pair_accuracy(scores, ranks)


CROSS_FOLDS = 5  # each fit sees 3/5 of the prompts for training and 1/5 for its L2: about the loop's 51 + 13 of 84


def probe_chance_null(feature: str, x, ranks, groups: Sequence[Any], repeats: int = 99, folds: int = CROSS_FOLDS,
                      seed: int = 0, progress: bool = True):
    """The gate's permutation test (``rlhf.gate.ChanceNull``), cross-fitted over every ranking of the export
    (training, validation and held-out together; ``groups``: each row's prompt key, so a prompt's rankings
    stay in one fold): the probe's out-of-fold accuracy (``probe_cross_fit``) on the real rankings, and on
    the same rankings shuffled (``shuffle_ranks``) ``repeats`` times. About a second per cross-fit.

    Why over every prompt and not the 20 held-out ones: a probe fitted to shuffled rankings is still a
    direction, and on 20 prompts of a lexical rule the direction's luck spread the null's accuracies with
    sd 0.10 (up to 0.74), above what the reviewers' labels allow a learned model (their ceiling, 0.68):
    a rule learned to its ceiling was refused. Pooled over the export's 84 prompts and 5 different fits
    the same null had sd 0.036 (best of 39: 0.565) and the real probe 0.692; a rule that cannot be
    learned (a hash of the reply) 0.536, reached by 8 of 39 shuffles. Exact under the null all the same:
    the real rankings and each shuffle go through the identical procedure (Ojala & Garriga 2010, test 1)."""
    import torch
    from tqdm.auto import tqdm

    from rlhf.gate import ChanceNull

    folds = min(folds, len(set(groups)))
    if folds < 3:
        raise ValueError(f"a cross-fitted null needs 3 or more prompts (one to train, validate and hold out each); "
                         f"got {folds}")
    fold_rows = cross_fold_groups(groups, folds, seed)
    real = probe_cross_fit(feature, x, ranks, fold_rows)
    generator = torch.Generator().manual_seed(10_007 + seed)  # apart from the learning curve's subsets
    null = [probe_cross_fit(feature, x, shuffle_ranks(ranks, generator), fold_rows)
            for _ in tqdm(range(repeats), desc="gate: cross-fitted probes on shuffled rankings",
                          disable=not progress, leave=False)]
    return ChanceNull(tuple(null), real, prompts=len(set(groups)), folds=folds)
