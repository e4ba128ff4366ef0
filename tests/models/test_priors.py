"""Sampling-free dataset statistics: the formulas on known counts, and counting on hand-made boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hardmine.data.records import ImageRecord
from hardmine.models.priors import (
    AssignmentCounts,
    HeadProbe,
    class_adaptive_thresholds,
    count_assignments,
    resized_size,
    sigmoid_prior_bias,
    softmax_prior_bias,
)
from hardmine.models.transform import DetectionTransform
from hardmine.sampling import IoUThresholds

COUNTS = AssignmentCounts(num_fg=10, num_bg=990, gt_per_class=(30, 10))


def test_prior_and_sigmoid_bias_for_a_known_count():
    assert COUNTS.fg_ratio == 0.01
    assert COUNTS.prior(2) == 0.005
    bias = sigmoid_prior_bias(COUNTS.prior(2))
    assert bias == pytest.approx(-math.log(0.995 / 0.005))
    assert torch.sigmoid(torch.tensor(bias, dtype=torch.float64)).item() == pytest.approx(0.005)


def test_softmax_bias_gives_the_class_frequencies():
    bias = softmax_prior_bias(COUNTS, num_classes=2)
    torch.testing.assert_close(
        torch.softmax(bias.double(), 0), torch.tensor([0.99, 0.005, 0.005], dtype=torch.float64)
    )


def test_class_adaptive_thresholds():
    # theta_j = (N_f / N) * (N_j / sum N) = 0.01 * (30 / 40, 10 / 40)
    torch.testing.assert_close(class_adaptive_thresholds(COUNTS), torch.tensor([0.0075, 0.0025]))


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        (AssignmentCounts(0, 0, (1,)), "no candidate is foreground or background"),
        (AssignmentCounts(0, 50, (1,)), "no candidate reaches the foreground IoU"),
        (AssignmentCounts(5, 50, (0, 0)), "no ground-truth boxes"),
    ],
)
def test_unusable_counts_are_refused(counts, message):
    with pytest.raises(ValueError, match=message):
        counts.check("dense")


def test_counts_round_trip_through_a_dict():
    assert AssignmentCounts.from_dict(COUNTS.to_dict()) == COUNTS


@pytest.mark.parametrize("shape", [(480, 640), (333, 500), (1000, 200), (97, 101)])
@pytest.mark.parametrize(("min_size", "max_size"), [(320, 320), (800, 1333), (192, 192)])
def test_resized_size_is_the_transforms(shape, min_size, max_size):
    transform = DetectionTransform(min_size, max_size).eval()
    images, _ = transform([torch.zeros(3, *shape)])
    assert resized_size(*shape, min_size, max_size) == tuple(images.image_sizes[0])


def record(boxes, labels, ignore=None, size=(100, 100), image_id=1) -> ImageRecord:
    return ImageRecord(
        image_id=image_id,
        file_name=f"{image_id}.png",
        width=size[1],
        height=size[0],
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        labels=np.array(labels, np.int64),
        ignore_boxes=np.array(ignore if ignore is not None else [], np.float32).reshape(-1, 4),
    )


#: Five anchors against the box (0, 0, 50, 50): IoU 1, 0.5, 0, 0.8, 1/3.
ANCHORS = torch.tensor(
    [[0, 0, 50, 50], [0, 0, 50, 25], [50, 50, 100, 100], [0, 0, 50, 40], [25, 0, 75, 50]], dtype=torch.float32
)
RETINA = IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.4)


def fixed_anchors(h: int, w: int) -> torch.Tensor:
    assert (h, w) == (128, 128)  # 100 x 100 resized to 100, padded to 32
    return ANCHORS


def test_counting_labels_anchors_like_the_head():
    probe = HeadProbe(fixed_anchors, RETINA)
    counts = count_assignments([record([[0, 0, 50, 50]], [2])], probe, 2, [100], 100)
    assert counts == AssignmentCounts(num_fg=3, num_bg=2, gt_per_class=(0, 1))
    # Between thresholds (bg_hi 0.3): the IoU-1/3 anchor is neither.
    narrow = HeadProbe(fixed_anchors, IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.3))
    assert count_assignments([record([[0, 0, 50, 50]], [2])], narrow, 2, [100], 100).num_bg == 1


def test_ignore_regions_and_images_without_objects():
    probe = HeadProbe(fixed_anchors, RETINA)
    ignored = record([], [], ignore=[[50, 50, 100, 100]])
    counts = count_assignments([ignored], probe, 2, [100], 100)
    assert counts == AssignmentCounts(num_fg=0, num_bg=4, gt_per_class=(0, 0))


def test_low_quality_matches_make_the_best_anchor_foreground():
    # The box (40, 40, 60, 60) overlaps anchor 4 best, at IoU 200 / 2700 only.
    small = [record([[40, 40, 60, 60]], [1])]
    assert count_assignments(small, HeadProbe(fixed_anchors, RETINA), 2, [100], 100).num_fg == 0
    forced = count_assignments(small, HeadProbe(fixed_anchors, RETINA, low_quality=True), 2, [100], 100)
    assert forced.num_fg == 1


def test_training_scales_are_summed_and_boxes_scaled():
    def grid(h: int, w: int) -> torch.Tensor:
        return ANCHORS * (2 if h > 128 else 1)  # the same layout at both scales (padded 128 / 224)

    probe = HeadProbe(grid, RETINA)
    one = count_assignments([record([[0, 0, 50, 50]], [1])], probe, 1, [100], 200)
    two = count_assignments([record([[0, 0, 50, 50]], [1])], probe, 1, [100, 200], 200)
    assert (two.num_fg, two.num_bg, two.gt_per_class) == (2 * one.num_fg, 2 * one.num_bg, (1,))


def test_proposals_and_added_ground_truth_for_fast_rcnn():
    probe = HeadProbe(None, IoUThresholds(fg=0.5, bg_lo=0.1, bg_hi=0.5), add_gt=True)
    proposals = {1: ANCHORS * 2}  # original coordinates of a 200 x 200 image, resized to 100
    counts = count_assignments(
        [record([[0, 0, 100, 100]], [1], size=(200, 200))], probe, 1, [100], 100, proposals=proposals
    )
    # IoU 1, 0.5, 0 (below bg_lo: neither), 0.8, 1/3 (bg); plus the added ground truth (fg).
    assert counts == AssignmentCounts(num_fg=4, num_bg=1, gt_per_class=(1,))
    with pytest.raises(ValueError, match="no proposals for image id 7"):
        count_assignments([record([], [], image_id=7)], probe, 1, [100], 100, proposals=proposals)


def test_class_agnostic_counting_for_the_rpn():
    probe = HeadProbe(fixed_anchors, RETINA, class_agnostic=True)
    counts = count_assignments([record([[0, 0, 50, 50]], [2])], probe, 2, [100], 100)
    assert (counts.num_fg, counts.num_bg) == (3, 2)
