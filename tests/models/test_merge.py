"""Merging detections: per-class NMS and box voting on hand-made boxes with exact expectations."""

import torch
from torch.testing import assert_close

from hardmine.models.merge import box_voting, concat_detections, merge_detections


def det(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


#: Two scales of one image. The second scale finds the first object again, shifted by 2 px (IoU
#: 1520 / 1680 = 0.905 with the first), a class-1 box where the first found a class-2 one, and a
#: small extra box.
SCALE_A = det([[10, 10, 50, 50], [100, 100, 140, 140]], [0.9, 0.6], [1, 2])
SCALE_B = det([[12, 10, 52, 50], [102, 100, 142, 140], [0, 0, 8, 8]], [0.8, 0.7, 0.3], [1, 1, 1])


def test_nms_merge_keeps_the_best_box_of_each_object_per_class():
    merged = merge_detections(*concat_detections([SCALE_A, SCALE_B]), nms_thresh=0.5, max_detections=100)
    assert_close(
        merged["boxes"],
        torch.tensor([[10.0, 10, 50, 50], [102, 100, 142, 140], [100, 100, 140, 140], [0, 0, 8, 8]]),
    )
    assert_close(merged["scores"], torch.tensor([0.9, 0.7, 0.6, 0.3]))
    assert merged["labels"].tolist() == [1, 1, 2, 1]


def test_merge_keeps_at_most_max_detections_best_first():
    merged = merge_detections(*concat_detections([SCALE_A, SCALE_B]), nms_thresh=0.5, max_detections=2)
    assert_close(merged["boxes"], torch.tensor([[10.0, 10, 50, 50], [102, 100, 142, 140]]))
    assert_close(merged["scores"], torch.tensor([0.9, 0.7]))


def test_vote_merge_averages_the_overlapping_boxes_of_the_same_class_by_score():
    merged = merge_detections(
        *concat_detections([SCALE_A, SCALE_B]), nms_thresh=0.5, max_detections=100, vote_iou=0.5
    )
    # (0.9 * [10, 10, 50, 50] + 0.8 * [12, 10, 52, 50]) / 1.7; the other boxes have no same-class
    # neighbour at IoU >= 0.5 and stay; scores are the kept boxes' own.
    x1, x2 = (0.9 * 10 + 0.8 * 12) / 1.7, (0.9 * 50 + 0.8 * 52) / 1.7
    assert_close(
        merged["boxes"],
        torch.tensor([[x1, 10, x2, 50], [102, 100, 142, 140], [100, 100, 140, 140], [0, 0, 8, 8]]),
    )
    assert_close(merged["scores"], torch.tensor([0.9, 0.7, 0.6, 0.3]))


def test_box_voting_ignores_boxes_below_the_voting_iou_and_zero_weights():
    kept = torch.tensor([[0.0, 0, 10, 10]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [2, 0, 12, 10]])  # IoU 0.5 and 8/12
    scores = torch.tensor([1.0, 1.0, 2.0])
    labels = torch.tensor([1, 1, 1])
    voted = box_voting(kept, torch.tensor([1]), boxes, scores, labels, vote_iou=0.6)
    assert_close(voted, torch.tensor([[4.0 / 3, 0, 10 + 4.0 / 3, 10]]))  # (1 * box0 + 2 * box2) / 3
    zero = box_voting(kept, torch.tensor([1]), boxes, torch.zeros(3), labels, vote_iou=0.5)
    assert_close(zero, kept)
