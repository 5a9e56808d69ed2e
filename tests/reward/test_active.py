"""Rankings where they teach most (reward/active.py): BALD against hand-computed values, and the measurement
on a constructed case: handing out the items the ensemble disagrees on reaches the same held-out accuracy
with fewer rankings than the plain order."""

from __future__ import annotations

import math

import pytest
import torch

from reward.active import (binary_entropy, item_information, pair_information, probe_ensemble, rankings_to_reach,
                           simulate_curves)


def test_pair_information_by_hand():
    # Two members: one says reply 0 is better by 1, the other reply 1 by 1. p = sigmoid(1) and sigmoid(-1).
    p = 1 / (1 + math.exp(-1))
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))  # 0.58220
    info = pair_information(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert info[0, 1].item() == pytest.approx(math.log(2) - h, abs=1e-12)  # 0.693147 - 0.582203
    assert info[0, 1].item() == pytest.approx(0.110944, abs=1e-6) and info[1, 0].item() == info[0, 1].item()
    # Members agreeing, whether sure (3 vs 0) or not (equal scores): nothing to learn.
    assert pair_information(torch.tensor([[3.0, 0.0], [3.0, 0.0]]))[0, 1].item() == pytest.approx(0, abs=1e-12)
    assert pair_information(torch.tensor([[0.5, 0.5], [2.0, 2.0]]))[0, 1].item() == pytest.approx(0, abs=1e-12)
    assert binary_entropy(torch.tensor([0.0, 0.5, 1.0])).tolist() == pytest.approx([0, math.log(2), 0])


def test_item_information_averages_the_pairs_of_present_replies():
    scores = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])  # [E=2, N=1, K=3]
    one = 0.110944  # the pair above; the pairs with reply 2: sigmoid(1) vs sigmoid(0), and sigmoid(0) vs sigmoid(1)
    p = 1 / (1 + math.exp(-1))
    q = (p + 0.5) / 2
    h = lambda x: -(x * math.log(x) + (1 - x) * math.log(1 - x))  # noqa: E731
    with_two = h(q) - (h(p) + math.log(2)) / 2  # 0.02730 each
    got = item_information(scores, torch.tensor([[True, True, True]]))
    assert got.item() == pytest.approx((one + 2 * with_two) / 3, abs=1e-6)
    got = item_information(scores, torch.tensor([[True, True, False]]))  # reply 2 absent (K = 2 item)
    assert got.item() == pytest.approx(one, abs=1e-6)
    assert item_information(scores, torch.tensor([[True, False, False]])).item() == 0


def _constructed(seed: int, n: int = 96, k: int = 4, h: int = 24, alike_share: float = 0.5, noise: float = 1.0):
    """A planted linear preference on random features; half the items' replies are near-duplicates (their
    rankings are mostly the reviewers' noise), as when the K samples of a prompt agree on what is ranked."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(h, generator=g)
    spread = torch.where(torch.rand(n, 1, 1, generator=g) < alike_share, 0.05, 1.0)
    x = torch.randn(n, 1, h, generator=g) + spread * torch.randn(n, k, h, generator=g)
    true = x @ w * (2 / h ** 0.5)

    def label(i, rng):
        noisy = [float(true[i, j]) + rng.gauss(0, noise) for j in range(k)]
        order = sorted(range(k), key=lambda j: -noisy[j])
        return [order.index(j) + 1 for j in range(k)]

    test_x = torch.randn(60, 1, h, generator=g) + torch.randn(60, k, h, generator=g)
    test_ranks = torch.argsort(torch.argsort(-(test_x @ w), 1), 1) + 1  # the noiseless rule
    return x, label, [f"prompt {i}" for i in range(n)], test_x, test_ranks


def test_handing_out_by_information_reaches_the_same_accuracy_with_fewer_rankings():
    needed = {"order": [], "information": []}
    for seed in range(4):  # rankings needed, order against information: 96/40, 56/48, 40/48, 64/48
        x, label, groups, test_x, test_ranks = _constructed(seed)
        curves = simulate_curves(x, label, groups, test_x, test_ranks, start=8, step=8, seed=seed)
        assert curves["budgets"][-1] == 96 and curves["order"][-1] == curves["information"][-1]  # same rankings
        target = curves["order"][-1] - 0.02  # what the plain order reaches with every ranking, less 2 points
        for strategy in needed:
            needed[strategy].append(rankings_to_reach(curves["budgets"], curves[strategy], target))
    assert sum(needed["information"]) <= 0.8 * sum(needed["order"]), needed  # 184 against 256 here


def test_the_ensemble_refuses_too_little_data():
    x = torch.randn(6, 2, 4)
    ranks = torch.tensor([[1, 2]] * 6)
    with pytest.raises(ValueError, match="6 rankings with a usable pair over 6 prompts"):
        probe_ensemble(x, ranks, [f"p{i}" for i in range(6)])
    tied = torch.tensor([[1, 1]] * 10)
    with pytest.raises(ValueError, match="0 rankings"):
        probe_ensemble(torch.randn(10, 2, 4), tied, [f"p{i}" for i in range(10)])


def test_the_prioritise_command_names_the_file_and_line_at_fault(tmp_path):
    from tests.conftest import run_cli

    rankings, items, out = tmp_path / "r.jsonl", tmp_path / "i.jsonl", tmp_path / "p.json"
    items.write_text('{"item_id": 1, "prompt": "q", "completions": ["a", "b"]}\n')
    flags = ["--rankings", str(rankings), "--items", str(items), "--output", str(out)]
    cases = [("", "r.jsonl: rankings file not found"),
             ('{"prompt": "q", "completions": ["a", "b"], "ranks": [1, 2]}\n{"prompt": "q", "completions": ["a"]}\n',
              "r.jsonl:2: no 'ranks' field"),
             ('{"prompt": "q", "completions": ["a", "b"], "ranks": [1, 0]}\n', "r.jsonl:1: 'ranks' must be"),
             ("".join(f'{{"prompt": "q{i}", "completions": ["a", "b"], "ranks": [1, {1 + i % 2}]}}\n' for i in range(9)),
              "4 rankings with two distinct ranks over 4 prompts; at least 8")]
    for text, message in cases:
        if text:
            rankings.write_text(text)
        result = run_cli("reward", "prioritise", *flags)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()
