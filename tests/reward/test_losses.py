"""The reward losses against values worked out by hand (softplus(-d) = log(1 + e^-d))."""

import math

import pytest
import torch

from reward.losses import kwise_accuracy, kwise_loss, pair_mask, pairwise_loss

SP1 = 0.31326168751822286  # log(1 + e^-1)
SP2 = 0.1269280110429725  # log(1 + e^-2)


def test_pairwise_loss_hand_computed():
    loss = pairwise_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((SP1 + SP2) / 2, abs=1e-7)


def test_kwise_three_replies_hand_computed():
    # scores 2 > 1 > 0 ranked 1, 2, 3: pairs (0,1) d=1, (0,2) d=2, (1,2) d=1.
    loss = kwise_loss(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1, 2, 3]]))
    assert loss.item() == pytest.approx((SP1 + SP2 + SP1) / 3, abs=1e-7)
    assert loss.item() == pytest.approx(0.2511504620264728, abs=1e-7)


def test_kwise_order_of_replies_does_not_matter():
    a = kwise_loss(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1, 2, 3]]))
    b = kwise_loss(torch.tensor([[0.0, 2.0, 1.0]]), torch.tensor([[3, 1, 2]]))
    assert a.item() == pytest.approx(b.item(), abs=1e-7)


def test_kwise_ties_give_no_pair():
    # ranks 1, 1, 2 with scores 0, 1, 3: only (0,2) d=-3 and (1,2) d=-2; the tie (0,1) is ignored.
    loss = kwise_loss(torch.tensor([[0.0, 1.0, 3.0]]), torch.tensor([[1, 1, 2]]))
    expected = (math.log1p(math.exp(3)) + math.log1p(math.exp(2))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(2.587757681308357, abs=1e-6)


def test_kwise_padding_slots_and_all_tied_rows_are_ignored():
    scores = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, float("inf")], [5.0, -5.0, 0.0]])
    ranks = torch.tensor([[1, 2, 3], [1, 2, 0], [1, 1, 0]])  # row 2: K=2 padded; row 3: all tied
    loss = kwise_loss(scores, ranks)
    expected = ((SP1 + SP2 + SP1) / 3 + SP1) / 2  # mean over the two rows that have pairs
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_kwise_with_two_replies_equals_pairwise():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(7), torch.randn(7)
    scores = torch.stack([rejected, chosen], dim=1)  # reply order inside a row is arbitrary
    ranks = torch.tensor([[2, 1]] * 7)
    assert kwise_loss(scores, ranks).item() == pytest.approx(pairwise_loss(chosen, rejected).item(), abs=1e-6)


def test_kwise_pair_weights_hand_computed():
    weights = torch.zeros(1, 3, 3)
    weights[0, 0, 1], weights[0, 0, 2], weights[0, 1, 2] = 1.0, 1.0, 0.25
    loss = kwise_loss(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1, 2, 3]]), weights)
    assert loss.item() == pytest.approx((SP1 + SP2 + 0.25 * SP1) / 2.25, abs=1e-7)


def test_kwise_gradient_flows_to_every_reply_once_scored():
    scores = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    kwise_loss(scores, torch.tensor([[1, 2, 3]])).backward()
    # d/dr of mean softplus(-(r_i - r_j)): best reply pushed up, worst down, middle in between.
    g = scores.grad[0]
    assert g[0] < 0 < g[2] and g.sum().item() == pytest.approx(0.0, abs=1e-7)


def test_kwise_no_pair_is_an_error():
    with pytest.raises(ValueError, match="distinct ranks"):
        kwise_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 1]]))


def test_pair_mask_and_accuracy():
    ranks = torch.tensor([[2, 1, 2, 0]])
    mask = pair_mask(ranks)
    assert mask[0].nonzero().tolist() == [[1, 0], [1, 2]]
    acc = kwise_accuracy(torch.tensor([[0.0, 1.0, 2.0, 9.0]]), ranks)
    assert acc.item() == pytest.approx(0.5)
