"""Mined hard negatives in training: RoI-head candidates (two-stage), up-weighted anchors (one-stage)."""

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, sigmoid_focal_loss

from hardmine.models.dense_head import DenseHead
from hardmine.models.hard_negatives import HardNegativeUpweight, append_hard_negatives
from hardmine.models.roi_head import RoIHead
from hardmine.models.transform import DetectionTransform
from hardmine.sampling import Candidates, IoUThresholds, NoSampler, SampleResult

MINED = torch.tensor([[40.0, 40.0, 60.0, 60.0], [0.0, 40.0, 20.0, 64.0]])


def test_mined_regions_join_the_roi_candidates_after_the_ground_truth():
    seen = {}

    @dataclass
    class Spy(NoSampler):
        def select(self, labels, candidates: Candidates, score_fn):
            seen["boxes"], seen["labels"] = [b.clone() for b in candidates.boxes], labels
            return super().select(labels, candidates, score_fn)

    torch.manual_seed(0)
    head = RoIHead(
        MultiScaleRoIAlign(["0"], 7, 2),
        TwoMLPHead(4 * 49, 16),
        FastRCNNPredictor(16, 3),
        sampler=Spy(thresholds=IoUThresholds(0.5, 0.0, 0.5)),
    ).train()
    gt = torch.tensor([[8.0, 8.0, 24.0, 24.0]])
    targets = [
        {"boxes": gt, "labels": torch.tensor([2]), "hard_negatives": MINED},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},  # none mined here
    ]
    proposals = [torch.tensor([[30.0, 30.0, 60.0, 60.0]]), torch.tensor([[4.0, 4.0, 40.0, 40.0]])]
    head({"0": torch.randn(2, 4, 16, 16)}, proposals, [(64, 64)] * 2, targets)
    # image 0: proposal, ground truth, then the two mined regions; image 1 unchanged
    assert torch.equal(seen["boxes"][0], torch.cat([proposals[0], gt, MINED]))
    assert torch.equal(seen["boxes"][1], proposals[1])
    assert seen["labels"][0][-2:].tolist() == [0, 0]  # background by IoU, so the sampler may take them


def test_append_leaves_images_without_mined_regions_alone():
    p = [torch.ones(3, 4), torch.ones(2, 4)]
    out = append_hard_negatives(p, [{"hard_negatives": torch.zeros(0, 4)}, {}])
    assert out[0] is p[0] and out[1] is p[1]


def test_the_transform_rescales_mined_regions_with_the_image():
    transform = DetectionTransform((64,), 64).eval()
    _, targets = transform(
        [torch.rand(3, 32, 32)],
        [
            {
                "boxes": torch.zeros(0, 4),
                "labels": torch.zeros(0, dtype=torch.long),
                "hard_negatives": MINED / 2,
            }
        ],
    )
    torch.testing.assert_close(targets[0]["hard_negatives"], MINED)


def tiles() -> Tensor:
    """16 non-overlapping 16x16 anchors tiling a 64x64 image, row by row."""
    ys, xs = torch.meshgrid(torch.arange(0, 64, 16.0), torch.arange(0, 64, 16.0), indexing="ij")
    corners = torch.stack([xs.flatten(), ys.flatten()], dim=1)
    return torch.cat([corners, corners + 16], dim=1)


def test_background_anchors_on_mined_regions_are_up_weighted():
    # Anchor 0 is the object; anchor 10 ([32, 32, 48, 48]) is exactly a mined region, and anchor 0 is
    # also inside a mined region, but it is foreground and keeps its weight.
    mined = torch.tensor([[32.0, 32.0, 48.0, 48.0], [0.0, 0.0, 16.0, 16.0]])
    target = {"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]]), "labels": torch.tensor([1])}
    g = torch.Generator().manual_seed(0)
    logits, deltas = torch.randn(1, 16, 3, generator=g), 0.1 * torch.randn(1, 16, 4, generator=g)
    plain = DenseHead(8, 1, 3, normalizer_momentum=0.0).loss(logits, deltas, [tiles()], [target])
    upweight = HardNegativeUpweight(iou=0.5, weight=3.0)
    mined_head = DenseHead(8, 1, 3, hard_negatives=upweight, normalizer_momentum=0.0)
    with_mined = mined_head.loss(logits, deltas, [tiles()], [{**target, "hard_negatives": mined}])
    anchor10 = sigmoid_focal_loss(logits[0, 10], torch.zeros(3), alpha=0.25, gamma=2.0, reduction="sum")
    # one foreground anchor: the normaliser is 1; anchor 10's loss counts 3 times instead of once
    expected = plain["loss_dense_cls"] + 2.0 * anchor10
    torch.testing.assert_close(with_mined["loss_dense_cls"], expected)
    torch.testing.assert_close(with_mined["loss_dense_box"], plain["loss_dense_box"])


def test_factors_follow_labels_and_overlap():
    anchors = [tiles()]
    result = SampleResult(indices=torch.tensor([0, 10, 11]), labels=torch.tensor([1, 0, 0]))
    mined = torch.tensor([[0.0, 0.0, 16.0, 16.0], [34.0, 32.0, 50.0, 48.0]])  # IoU 224 / 288 with anchor 10
    factors = HardNegativeUpweight(iou=0.7, weight=4.0).factors(
        [result], anchors, [{"hard_negatives": mined}]
    )
    assert factors.tolist() == [1.0, 4.0, 1.0]
    factors = HardNegativeUpweight(iou=0.8, weight=4.0).factors(
        [result], anchors, [{"hard_negatives": mined}]
    )
    assert factors.tolist() == [1.0, 1.0, 1.0]
    assert HardNegativeUpweight().factors([result], anchors, [{}]).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="weight"):
        HardNegativeUpweight(weight=0.0)
