"""Pixel OHEM: threshold with min_kept (mmsegmentation's rule), top-k fraction (DeepLab's), ties,
ignored pixels, batches, all-ignored images; the sampled loss, its gradient and its diagnostics."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from hardmine.segmentation.pixel_losses import pixel_cross_entropy
from hardmine.segmentation.pixel_sampling import (
    PIXEL_SAMPLERS,
    AllPixels,
    OhemThreshold,
    OhemTopK,
    SampledPixelLoss,
    lowest,
    ohem_threshold,
    ohem_topk,
    true_class_probability,
)


def image(*probs: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [1, 2, 1, W] and target [1, 1, W] (class 1) whose true-class probabilities are `probs`."""
    class1 = torch.tensor([math.log(p / (1 - p)) for p in probs], dtype=torch.float64)
    logits = torch.stack([torch.zeros_like(class1), class1])[None, :, None, :]
    return logits, torch.ones(1, 1, len(probs), dtype=torch.long)


def example() -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities 0.8, 0.5, 0.2 of class 1 and 0.1 of class 0 (the last pixel is background)."""
    logits, target = image(0.8, 0.5, 0.2, 0.9)
    target[0, 0, 3] = 0
    return logits, target


def kept(mask: torch.Tensor) -> list[bool]:
    return mask.reshape(-1).tolist()


def test_true_class_probability() -> None:
    logits, target = example()
    target[0, 0, 1] = 255
    torch.testing.assert_close(
        true_class_probability(logits, target)[0, 0], torch.tensor([0.8, 1.0, 0.2, 0.1], dtype=torch.float64)
    )


def test_threshold_keeps_the_pixels_below_it() -> None:
    logits, target = example()
    assert kept(ohem_threshold(logits, target, thresh=0.7, min_kept=1)) == [False, True, True, True]
    assert kept(ohem_threshold(logits, target, thresh=0.3, min_kept=1)) == [False, False, True, True]
    assert kept(ohem_threshold(logits, target, thresh=0.2, min_kept=0)) == [False, False, False, True]


def test_min_kept_raises_the_threshold_to_the_min_kept_th_smallest_probability() -> None:
    logits, target = example()
    # two pixels below 0.3; min_kept 3 keeps the 3 least confident: 0.1, 0.2, 0.5
    assert kept(ohem_threshold(logits, target, thresh=0.3, min_kept=3)) == [False, True, True, True]
    # more than there are: every pixel
    assert kept(ohem_threshold(logits, target, thresh=0.3, min_kept=100)) == [True] * 4


def test_threshold_skips_ignored_pixels() -> None:
    logits, target = example()
    target[0, 0, 2] = 255  # the 0.2 pixel
    assert kept(ohem_threshold(logits, target, thresh=0.3, min_kept=2)) == [False, True, False, True]
    assert kept(ohem_threshold(logits, target, thresh=0.9, min_kept=100)) == [True, True, False, True]


def test_threshold_ties_go_to_the_first_pixels() -> None:
    logits, target = image(0.5, 0.5, 0.5, 0.9)
    assert kept(ohem_threshold(logits, target, thresh=0.3, min_kept=2)) == [True, True, False, False]


def test_min_kept_counts_per_image_and_ranks_over_the_batch() -> None:
    a_logits, a_target = example()
    b_logits, b_target = image(0.9, 0.9, 0.9, 0.9)
    logits, target = torch.cat([a_logits, b_logits]), torch.cat([a_target, b_target])
    # 2 x 3 = 6 pixels: all 4 of the first image, then the first two (tied) of the second
    keep = ohem_threshold(logits, target, thresh=0.3, min_kept=3)
    assert kept(keep[0]) == [True] * 4 and kept(keep[1]) == [True, True, False, False]


def test_topk_keeps_the_highest_losses() -> None:
    logits, target = example()
    loss = pixel_cross_entropy(logits, target)  # -log of 0.8, 0.5, 0.2, 0.1
    assert kept(ohem_topk(loss, target, fraction=0.5)) == [False, False, True, True]
    assert kept(ohem_topk(loss, target, fraction=0.2)) == [False, False, False, True]  # floor 0.8, at least 1
    assert kept(ohem_topk(loss, target, fraction=1.0)) == [True] * 4
    target[0, 0, 3] = 255
    # 3 valid pixels, floor(1.5) = 1: the highest valid one
    assert kept(ohem_topk(loss, target, fraction=0.5)) == [False, False, True, False]
    ties = torch.ones(1, 1, 4)
    assert kept(ohem_topk(ties, torch.ones(1, 1, 4, dtype=torch.long), 0.5)) == [True, True, False, False]
    # floor(0.29 x 100) is 29 despite 0.29 x 100 = 28.999999999999996 in floating point
    assert int(ohem_topk(torch.rand(1, 10, 10), torch.ones(1, 10, 10, dtype=torch.long), 0.29).sum()) == 29


def test_all_ignored_images_keep_nothing_and_give_a_zero_loss() -> None:
    logits, target = example()
    target.fill_(255)
    logits.requires_grad_(True)
    for sampler in (AllPixels(), OhemThreshold(min_kept=5), OhemTopK()):
        criterion = SampledPixelLoss(pixel_cross_entropy, sampler)
        loss = criterion(logits, target)
        assert loss.item() == 0 and criterion.last_stats["num_kept"] == 0
        (grad,) = torch.autograd.grad(loss, logits)
        assert not grad.any() and not grad.isnan().any()


def test_sampled_loss_value_gradient_and_diagnostics() -> None:
    logits, target = example()
    logits.requires_grad_(True)
    criterion = SampledPixelLoss(pixel_cross_entropy, OhemThreshold(thresh=0.7, min_kept=1))
    loss = criterion(logits, target)
    # kept: probabilities 0.5, 0.2, 0.1
    assert loss.item() == pytest.approx((math.log(2) + math.log(5) + math.log(10)) / 3)
    (grad,) = torch.autograd.grad(loss, logits)
    assert not grad[..., 0].any() and grad[..., 1:].abs().sum(dim=1).gt(0).all()
    stats = criterion.last_stats
    assert stats["num_valid"] == 4 and stats["num_kept"] == 3 and stats["kept_fraction"] == 0.75
    assert stats["fg_loss_share"] == pytest.approx(0.5)  # log 2 + log 5 (class 1) vs log 10 (background)
    assert stats["mean_loss_kept"] == pytest.approx(loss.item())
    assert stats["mean_loss_valid"] == pytest.approx((math.log(1.25) + math.log(100)) / 4)
    assert stats["sampler/num_below_thresh"] == 3 and stats["sampler/max_kept_prob"] == pytest.approx(0.5)


def test_topk_loss_and_reductions() -> None:
    logits, target = example()
    topk = SampledPixelLoss(pixel_cross_entropy, OhemTopK(fraction=0.5))
    assert topk(logits, target).item() == pytest.approx((math.log(5) + math.log(10)) / 2)
    assert topk.last_stats["sampler/min_kept_loss"] == pytest.approx(math.log(5))
    # mmsegmentation's normaliser: all pixels
    assert topk(logits, target, avg_factor=4).item() == pytest.approx(math.log(50) / 4)
    summed = SampledPixelLoss(pixel_cross_entropy, OhemTopK(fraction=0.5), reduction="sum")
    assert summed(logits, target).item() == pytest.approx(math.log(50))
    per_pixel = SampledPixelLoss(pixel_cross_entropy, OhemTopK(fraction=0.5), reduction="none")(
        logits, target
    )
    torch.testing.assert_close(
        per_pixel[0, 0], torch.tensor([0, 0, math.log(5), math.log(10)], dtype=torch.float64)
    )


def test_class_balanced_mean_divides_by_the_kept_pixel_count() -> None:
    logits, target = example()
    weighted = partial(pixel_cross_entropy, class_weight=torch.tensor([2.0, 0.5], dtype=torch.float64))
    loss = SampledPixelLoss(weighted)(logits, target)
    expected = (0.5 * (math.log(1.25) + math.log(2) + math.log(5)) + 2 * math.log(10)) / 4
    assert loss.item() == pytest.approx(expected)


def test_lowest_is_exact_on_ties() -> None:
    values = torch.tensor([3.0, 1.0, 2.0, 1.0, 1.0])
    assert lowest(values, 2).tolist() == [False, True, False, True, False]
    assert lowest(values, 4).tolist() == [False, True, True, True, True]
    assert lowest(values, 0).tolist() == [False] * 5 and lowest(values, 9).tolist() == [True] * 5


def test_options_are_checked_and_named() -> None:
    assert OhemThreshold() == OhemThreshold(thresh=0.7, min_kept=100_000)  # mmsegmentation's values
    assert OhemTopK().fraction == 0.2  # detectron2's DeepLab configs
    assert set(PIXEL_SAMPLERS) == {"none", "ohem", "topk"}
    with pytest.raises(ValueError, match="thresh must be in"):
        OhemThreshold(thresh=0.0)
    with pytest.raises(ValueError, match="min_kept must be"):
        OhemThreshold(min_kept=-1)
    with pytest.raises(ValueError, match="fraction must be in"):
        OhemTopK(fraction=1.5)
