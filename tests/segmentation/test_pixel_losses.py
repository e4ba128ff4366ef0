"""Per-pixel cross-entropy, focal loss and class-balanced weights: exact values on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hardmine.segmentation.pixel_losses import (
    count_class_pixels,
    effective_number_weights,
    median_frequency_weights,
    pixel_cross_entropy,
    pixel_focal_loss,
)

#: True-class probabilities 0.8, 0.5, 0.2 (class 1) and 0.1 (class 0) on one 1x4 image, 2 classes.
PROBS = [0.8, 0.5, 0.2, 0.1]


def logits_and_target() -> tuple[torch.Tensor, torch.Tensor]:
    class1 = torch.tensor([math.log(4), 0.0, -math.log(4), math.log(9)], dtype=torch.float64)
    logits = torch.stack([torch.zeros(4, dtype=torch.float64), class1])[None, :, None, :]  # [1, 2, 1, 4]
    return logits, torch.tensor([[[1, 1, 1, 0]]])


def test_cross_entropy_per_pixel() -> None:
    logits, target = logits_and_target()
    loss = pixel_cross_entropy(logits, target)
    assert loss.shape == (1, 1, 4)
    torch.testing.assert_close(loss[0, 0], torch.tensor([-math.log(p) for p in PROBS], dtype=torch.float64))


def test_ignored_pixels_have_zero_loss() -> None:
    logits, target = logits_and_target()
    target[0, 0, 2] = 255
    loss = pixel_cross_entropy(logits, target)
    assert loss[0, 0, 2] == 0 and loss[0, 0, 3] == pytest.approx(math.log(10))


def test_class_weights_multiply_the_true_class_loss() -> None:
    logits, target = logits_and_target()
    loss = pixel_cross_entropy(logits, target, class_weight=torch.tensor([2.0, 0.5], dtype=torch.float64))
    expected = [0.5 * -math.log(p) for p in PROBS[:3]] + [2 * math.log(10)]
    torch.testing.assert_close(loss[0, 0], torch.tensor(expected, dtype=torch.float64))


def test_focal_loss_gamma_two_and_alpha() -> None:
    logits, target = logits_and_target()
    plain = [(1 - p) ** 2 * -math.log(p) for p in PROBS]
    torch.testing.assert_close(
        pixel_focal_loss(logits, target)[0, 0], torch.tensor(plain, dtype=torch.float64)
    )
    # a float alpha weighs foreground pixels (label >= 1) by alpha, background by 1 - alpha
    weighted = [0.25 * v for v in plain[:3]] + [0.75 * plain[3]]
    torch.testing.assert_close(
        pixel_focal_loss(logits, target, alpha=0.25)[0, 0], torch.tensor(weighted, dtype=torch.float64)
    )
    # gamma 0 without alpha is cross-entropy
    torch.testing.assert_close(
        pixel_focal_loss(logits, target, gamma=0.0), pixel_cross_entropy(logits, target)
    )
    target[0, 0, 1] = 255
    assert pixel_focal_loss(logits, target)[0, 0, 1] == 0


def test_inputs_are_checked() -> None:
    logits, target = logits_and_target()
    with pytest.raises(ValueError, match=r"need logits \[N, C\+1, H, W\] and a target \[N, H, W\]"):
        pixel_cross_entropy(logits, target[0])
    with pytest.raises(ValueError, match="int64 labels"):
        pixel_focal_loss(logits, target.to(torch.uint8))


def _masks() -> list[np.ndarray]:
    return [np.array([[0, 0, 0, 1]], np.uint8), np.array([[0, 2, 2, 255]], np.uint8)]


def test_class_pixel_counts() -> None:
    counts = count_class_pixels(_masks(), num_classes=3)
    np.testing.assert_array_equal(counts.pixels, [4, 1, 2, 0])
    # labelled pixels of the masks each class is in: class 0 in both (4 + 3), 1 in the first, 2 in the second
    np.testing.assert_array_equal(counts.image_pixels, [7, 4, 3, 0])
    with pytest.raises(ValueError, match="mask value 2 is neither a label 0..1 nor 255"):
        count_class_pixels(_masks(), num_classes=1)


def test_median_frequency_weights() -> None:
    # frequencies 4/7, 1/4, 2/3; median 4/7; class 3 never appears: weight 0
    weights = median_frequency_weights(count_class_pixels(_masks(), num_classes=3))
    torch.testing.assert_close(weights, torch.tensor([1.0, 16 / 7, 6 / 7, 0.0]))


def test_effective_number_weights() -> None:
    # beta 0.5, counts 4, 1, 2: 1 / (1 - beta ** n) = 16/15, 2, 4/3, scaled to sum to 3
    weights = effective_number_weights(count_class_pixels(_masks(), num_classes=3), beta=0.5)
    torch.testing.assert_close(weights, torch.tensor([8 / 11, 15 / 11, 10 / 11, 0.0]))
    # the paper's beta saturates on pixel counts: classes of 10^6 and 10^7 pixels weigh the same
    from hardmine.segmentation.pixel_losses import ClassPixelCounts

    big = ClassPixelCounts(np.array([10**7, 10**6]), np.array([10**7, 10**7]))
    torch.testing.assert_close(effective_number_weights(big), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="beta must be in"):
        effective_number_weights(big, beta=1.0)
