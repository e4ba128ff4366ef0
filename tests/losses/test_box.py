"""The box-regression losses of the table: one signature, values by hand, state and normalisers."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from hardmine.losses import GHMR, L1, REG_LOSSES, BalancedL1, GHMRLoss, GIoU, SmoothL1, balanced_l1_loss
from hardmine.options import OptionError

CODER = BoxCoder((1.0, 1.0, 1.0, 1.0))
#: One candidate box and its ground truth, shifted by 1 pixel: encoded target (0.1, 0.1, 0, 0).
BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
GT = torch.tensor([[1.0, 1.0, 11.0, 11.0]])
ZERO = torch.zeros(1, 4)


def test_the_table_names_every_loss_once():
    assert list(REG_LOSSES) == ["smooth_l1", "l1", "balanced_l1", "giou", "ghm"]
    assert all(loss.name == name for name, loss in REG_LOSSES.items())


def test_losses_encode_the_target_themselves():
    torch.testing.assert_close(L1()(ZERO, GT, BOXES, CODER), torch.tensor([0.2]))
    # smooth L1 with beta 1/9: 0.5 x 0.1^2 / (1/9) for each of the two shifted coordinates
    torch.testing.assert_close(SmoothL1()(ZERO, GT, BOXES, CODER), torch.tensor([2 * 0.5 * 0.01 * 9]))
    target = torch.tensor([[0.1, 0.1, 0.0, 0.0]])
    expected = balanced_l1_loss(ZERO, target, 0.4, 1.2, 0.5).sum(dim=1)
    torch.testing.assert_close(BalancedL1(alpha=0.4, gamma=1.2, beta=0.5)(ZERO, GT, BOXES, CODER), expected)


def test_giou_decodes_the_prediction():
    # zero deltas decode to the candidate itself: IoU 81 / 119, enclosing box 11 x 11
    expected = 1 - (81 / 119 - (121 - 119) / 121)
    assert GIoU()(ZERO, GT, BOXES, CODER).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", ["smooth_l1", "l1", "balanced_l1", "giou"])
def test_perfect_deltas_give_zero(name):
    loss = REG_LOSSES[name]()
    perfect = CODER.encode_single(GT, BOXES)
    assert loss(perfect, GT, BOXES, CODER).item() == pytest.approx(0.0, abs=1e-6)


def test_ghm_r_keeps_its_moving_average_and_weights_its_own_normaliser():
    loss = GHMRLoss(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
    deltas, gt, boxes = torch.randn(3, 4) * 0.1, GT.repeat(3, 1), BOXES.repeat(3, 1)
    with pytest.raises(ValueError, match="state"):
        loss(deltas, gt, boxes, CODER)
    state = loss.state()
    reference = GHMR(mu=0.02, bins=10, momentum=0.7, reduction="none")
    per_sample = loss(deltas, gt, boxes, CODER, state)
    torch.testing.assert_close(per_sample, reference(deltas, CODER.encode_single(gt, boxes)).sum(dim=1))
    torch.testing.assert_close(state.acc_sum, reference.acc_sum)
    assert loss.reduce(torch.tensor([1.0, 2.0]), 99.0, 12).item() == pytest.approx(3 * 10 / 12)
    assert loss.reduce(torch.zeros(0), 99.0, 0).item() == 0.0
    assert L1().reduce(torch.tensor([1.0, 2.0]), 4.0, 12).item() == pytest.approx(0.75)
    assert GHMRLoss(momentum=0.0).state().acc_sum is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SmoothL1(beta=-1.0), "beta must be >= 0"),
        (lambda: BalancedL1(alpha=0.0), "alpha must be > 0"),
        (lambda: GHMRLoss(mu=0.0), "mu must be > 0"),
        (lambda: GHMRLoss(loss_weight=-1.0), "loss_weight must be >= 0"),
    ],
)
def test_options_are_checked_by_the_loss_itself(make, message):
    with pytest.raises(OptionError) as info:
        make()
    assert str(info.value) == message


def test_the_giou_value_is_finite_for_degenerate_predictions():
    huge = torch.tensor([[0.0, 0.0, math.log(1e6), math.log(1e6)]])
    assert torch.isfinite(GIoU()(huge, GT, BOXES, CODER)).all()
