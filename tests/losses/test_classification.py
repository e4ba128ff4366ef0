"""The classification losses of the table: one signature, values by hand, options checked in one place."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from hardmine.losses import (
    BCE,
    CLS_LOSSES,
    GHMC,
    SIGMOID,
    SOFTMAX,
    CrossEntropy,
    GHMCLoss,
    SigmoidFocal,
    SoftmaxFocal,
)
from hardmine.options import OptionError


def test_the_table_names_every_loss_once_with_its_kind():
    assert list(CLS_LOSSES) == ["ce", "softmax_focal", "focal", "bce", "ghm"]
    assert {name: loss.activation for name, loss in CLS_LOSSES.items()} == {
        "ce": SOFTMAX,
        "softmax_focal": SOFTMAX,
        "focal": SIGMOID,
        "bce": SIGMOID,
        "ghm": SIGMOID,
    }
    assert all(loss.name == name for name, loss in CLS_LOSSES.items())
    assert [name for name, loss in CLS_LOSSES.items() if loss().state() is not None] == ["ghm"]


def test_sigmoid_losses_take_labels_and_build_one_hot_targets():
    # Two samples, C = 2: background (all targets 0) and class 2 (targets 0, 1).
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    labels = torch.tensor([0, 2])
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731  BCE with target 0; target 1: softplus(-x)
    expected = torch.tensor([softplus(0.0) + softplus(2.0), softplus(1.0) + softplus(1.0)])
    torch.testing.assert_close(BCE(alpha=-1.0)(logits, labels), expected)
    # alpha-balancing: background terms times 1 - alpha, foreground ones times alpha
    balanced = torch.tensor(
        [0.75 * (softplus(0.0) + softplus(2.0)), 0.75 * softplus(1.0) + 0.25 * softplus(1.0)]
    )
    torch.testing.assert_close(BCE(alpha=0.25)(logits, labels), balanced)
    one_hot = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    focal = SigmoidFocal(alpha=0.25, gamma=2.0)(logits, labels)
    torch.testing.assert_close(focal, sigmoid_focal_loss(logits, one_hot, 0.25, 2.0).sum(dim=1))


def test_sigmoid_label_smoothing_moves_the_targets():
    logits, labels = torch.tensor([[0.5, -0.5]]), torch.tensor([1])
    smoothed = torch.tensor([[0.9, 0.1]])  # eps 0.2: 1 -> 0.9, 0 -> 0.1
    expected = F.binary_cross_entropy_with_logits(logits, smoothed, reduction="none").sum(dim=1)
    torch.testing.assert_close(BCE(alpha=-1.0, label_smoothing=0.2)(logits, labels), expected)


def test_softmax_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    log_p0 = 2.0 - math.log(math.e**2 + 2)
    expected_ce = torch.tensor([-log_p0, math.log(3.0)])
    torch.testing.assert_close(CrossEntropy()(logits, labels), expected_ce)
    p = torch.tensor([math.exp(log_p0), 1 / 3])
    torch.testing.assert_close(SoftmaxFocal(gamma=2.0)(logits, labels), (1 - p) ** 2 * expected_ce)


def test_ghm_c_keeps_its_moving_average_in_its_state_and_normalises_itself():
    loss = GHMCLoss(bins=30, momentum=0.75)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 3, 0, 2])
    with pytest.raises(ValueError, match="state"):
        loss(logits, labels)
    state = loss.state()
    assert isinstance(state, GHMC) and "acc_sum" in state.state_dict()
    reference = GHMC(bins=30, momentum=0.75, reduction="none")
    one_hot = F.one_hot(labels, 4)[:, 1:].float()
    torch.testing.assert_close(loss(logits, labels, state), reference(logits, one_hot).sum(dim=1))
    torch.testing.assert_close(state.acc_sum, reference.acc_sum)
    weighted = torch.tensor([1.0, 2.0])
    # its own normaliser: the element count (samples x classes), not the head's
    assert loss.reduce(weighted, torch.tensor(7.0), 15).item() == pytest.approx(3 / 15)
    assert BCE().reduce(weighted, torch.tensor(7.0), 15).item() == pytest.approx(3 / 7)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: BCE(alpha=1.5), "alpha must be in [0, 1], or negative (off)"),
        (lambda: SigmoidFocal(gamma=-1.0), "gamma must be >= 0"),
        (lambda: SoftmaxFocal(gamma=-0.5), "gamma must be >= 0"),
        (lambda: GHMCLoss(bins=0), "bins must be >= 1"),
        (lambda: GHMCLoss(momentum=1.0), "momentum must be in [0, 1)"),
        (lambda: CrossEntropy(label_smoothing=1.0), "label_smoothing must be in [0, 1) (0 = off)"),
    ],
)
def test_options_are_checked_by_the_loss_itself(make, message):
    with pytest.raises(OptionError) as info:
        make()
    assert str(info.value) == message
