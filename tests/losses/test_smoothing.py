"""Label smoothing: softmax (through the `ce` loss) and the sigmoid form, on hand-computed cases."""

import math

import pytest
import torch

from hardmine.losses import CrossEntropy, SigmoidFocal
from hardmine.losses.smoothing import smooth_binary_targets


def test_sigmoid_targets_move_eps_over_two_towards_one_half():
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    smoothed = smooth_binary_targets(targets, 0.1)
    torch.testing.assert_close(smoothed, torch.tensor([[0.95, 0.05], [0.05, 0.05]]))
    assert smooth_binary_targets(targets, 0.0) is targets


def test_softmax_cross_entropy_against_smoothed_targets_on_a_known_case():
    # logits (2, 0, 0), label 0, eps 0.1, K = 3: q' = (0.9 + 0.1/3, 0.1/3, 0.1/3) and
    # -sum q' log p = log(e^2 + 2) - 2 q'_0.
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    loss = CrossEntropy(label_smoothing=0.1)(logits, torch.tensor([0]))
    expected = math.log(math.e**2 + 2) - 2 * (0.9 + 0.1 / 3)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    plain = CrossEntropy()(logits, torch.tensor([0]))
    assert plain.item() == pytest.approx(math.log(math.e**2 + 2) - 2, rel=1e-6)


@pytest.mark.parametrize("eps", [-0.1, 1.0, 1.5])
def test_invalid_strengths_are_refused(eps):
    for loss in (CrossEntropy, SigmoidFocal):
        with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
            loss(label_smoothing=eps)
    with pytest.raises(ValueError, match="label smoothing must be in"):
        smooth_binary_targets(torch.zeros(2), eps)
