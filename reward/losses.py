"""Reward-model losses: pure tensor functions (tensor in, tensor out), no trainer state.

Bradley-Terry (pairwise): P(a beats b) = sigmoid(r_a - r_b); the loss is -log of that.
K-wise (InstructGPT, Ouyang et al. 2022, section 3.5, eq. 1): each of a prompt's K replies is scored
once, and every pair with distinct ranks contributes -log sigmoid(r_better - r_worse), averaged over
the prompt's pairs (their 1/C(K,2)), then over the prompts of the batch. With ties the divisor is the
number of pairs that remain, not C(K,2): a tie carries no preference, so it should not dilute the
others. With K = 2 this is exactly the pairwise loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry loss of TRL's ``RewardTrainer``: mean of ``-log sigmoid(chosen - rejected)``.

    chosen, rejected: [P] scores of the preferred and the other reply of P pairs.
    weights: optional [P] non-negative pair weights (a weighted mean).
    Returns a scalar.
    """
    losses = -F.logsigmoid(chosen - rejected)
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum().clamp_min(1e-12)


def pair_mask(ranks: torch.Tensor) -> torch.Tensor:
    """[B, K, K] bool: ``mask[b, i, j]`` is True when reply i is strictly better than reply j.

    ranks: [B, K] integer ranks, 1 best, equal ranks tied, 0 marks a padding slot (no reply).
    """
    present = ranks > 0
    better = ranks.unsqueeze(2) < ranks.unsqueeze(1)  # rank i < rank j: i preferred
    return better & present.unsqueeze(2) & present.unsqueeze(1)


def kwise_loss(scores: torch.Tensor, ranks: torch.Tensor, pair_weights: torch.Tensor | None = None) -> torch.Tensor:
    """InstructGPT's K-wise loss over all pairs of each ranking, scored once per reply.

    scores: [B, K] reward of each reply (any value in padding slots; they are masked out).
    ranks:  [B, K] integer ranks, 1 best, ties equal, 0 = padding slot.
    pair_weights: optional [B, K, K] non-negative weight of pair (i better than j), e.g. the share of
        reviewers who agree on it; only entries where i is better than j are read.
    Returns a scalar: mean over rankings that have at least one pair of the (weighted) mean pair loss.
    Raises ValueError when no ranking of the batch has a pair (nothing to learn from).
    """
    mask = pair_mask(ranks)
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # [B, K, K]: r_i - r_j
    losses = -F.logsigmoid(diff)
    weights = mask.to(scores.dtype)
    if pair_weights is not None:
        weights = weights * pair_weights.to(scores.dtype)
    per_row_weight = weights.sum(dim=(1, 2))  # [B]
    has_pairs = per_row_weight > 0
    if not bool(has_pairs.any()):
        raise ValueError("no ranking in the batch has two replies with distinct ranks")
    # where() rather than multiplication: losses at masked slots may be inf for padded scores.
    per_row = torch.where(weights > 0, losses * weights, torch.zeros_like(losses)).sum(dim=(1, 2))
    per_row = per_row[has_pairs] / per_row_weight[has_pairs]
    return per_row.mean()


def kwise_accuracy(scores: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """Share of a batch's ranked pairs whose better reply scores higher; scalar in [0, 1].

    scores, ranks: [B, K] as in ``kwise_loss``.
    """
    mask = pair_mask(ranks)
    correct = (scores.unsqueeze(2) > scores.unsqueeze(1)) & mask
    return correct.sum() / mask.sum().clamp_min(1)
