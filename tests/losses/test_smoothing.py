"""Label smoothing: softmax (through cross-entropy) and the sigmoid form, on hand-computed cases."""

import math

import pytest
import torch

from hardmine.losses.per_sample import softmax_cross_entropy
from hardmine.losses.smoothing import check_label_smoothing, smooth_binary_targets


def test_sigmoid_targets_move_eps_over_two_towards_one_half():
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    smoothed = smooth_binary_targets(targets, 0.1)
    torch.testing.assert_close(smoothed, torch.tensor([[0.95, 0.05], [0.05, 0.05]]))
    assert smooth_binary_targets(targets, 0.0) is targets


def test_softmax_cross_entropy_against_smoothed_targets_on_a_known_case():
    # logits (2, 0, 0), label 0, eps 0.1, K = 3: q' = (0.9 + 0.1/3, 0.1/3, 0.1/3) and
    # -sum q' log p = log(e^2 + 2) - 2 q'_0.
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    loss = softmax_cross_entropy(logits, torch.tensor([0]), label_smoothing=0.1)
    expected = math.log(math.e**2 + 2) - 2 * (0.9 + 0.1 / 3)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    plain = softmax_cross_entropy(logits, torch.tensor([0]))
    assert plain.item() == pytest.approx(math.log(math.e**2 + 2) - 2, rel=1e-6)


@pytest.mark.parametrize("eps", [-0.1, 1.0, 1.5])
def test_invalid_strengths_are_refused(eps):
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        check_label_smoothing(eps)
