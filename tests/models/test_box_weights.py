"""Per-box loss weights (mixup's "weights") in the three heads' training losses: a box of weight 0
takes exactly its foreground candidates' contribution out of the losses and changes nothing else.

Each test trains on all candidates (`NoSampler`, so the selection cannot change) and compares the
gradients of the summed losses with respect to every candidate's outputs for weights [1, 0]
against [1, 1]: zero on the candidates matched to the weight-0 box (and non-zero there with weight 1),
identical on all others (matching, labels and normalisers are the same).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign, box_iou

from hardmine.losses import CLS_LOSSES, SmoothL1
from hardmine.models.dense_head import DenseHead
from hardmine.models.roi_head import RoIHead
from hardmine.models.rpn import RPN
from hardmine.sampling import IoUThresholds, NoSampler

#: Two objects far apart, both exact 16 px anchors of the grids below (box 1 gets the weight under test).
BOXES = torch.tensor([[0.0, 0.0, 16.0, 16.0], [48.0, 0.0, 64.0, 16.0]])


def targets(weights: list[float]) -> list[dict[str, Tensor]]:
    return [{"boxes": BOXES.clone(), "labels": torch.tensor([1, 2]), "weights": torch.tensor(weights)}]


def compare(grads: Callable[[list[float]], tuple[Tensor, Tensor]], of_box1: Tensor, of_box0: Tensor) -> None:
    """grads(weights) -> per-candidate gradient rows [K, *] of the cls and box outputs."""
    zero_cls, zero_box = grads([1.0, 0.0])
    one_cls, one_box = grads([1.0, 1.0])
    assert of_box1.any() and of_box0.any()
    assert torch.count_nonzero(zero_cls[of_box1]) == 0 and torch.count_nonzero(zero_box[of_box1]) == 0
    assert bool((one_cls[of_box1] != 0).any(dim=-1).all()) and bool((one_box[of_box1] != 0).any(dim=-1).all())
    assert bool((zero_box[of_box0] != 0).any(dim=-1).all())  # the other box still trains its regression
    torch.testing.assert_close(zero_cls[~of_box1], one_cls[~of_box1], rtol=0, atol=0)
    torch.testing.assert_close(zero_box[~of_box1], one_box[~of_box1], rtol=0, atol=0)


def test_rpn():
    torch.manual_seed(0)
    rpn = RPN(
        AnchorGenerator(((16,),), ((1.0,),)),
        RPNHead(4, 1),
        sampler=NoSampler(IoUThresholds(0.7, 0.0, 0.3)),
        pre_nms_top_n={"training": 50, "testing": 20},
        post_nms_top_n={"training": 30, "testing": 10},
    )
    rpn.train()
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    features = {"0": torch.zeros(1, 4, 8, 8)}  # stride 8: 64 anchors of 16 px
    g = torch.Generator().manual_seed(1)
    objectness = torch.randn(1, 1, 8, 8, generator=g)
    deltas = 0.1 * torch.randn(1, 4, 8, 8, generator=g)

    def grads(weights: list[float]) -> tuple[Tensor, Tensor]:
        obj, dts = objectness.clone().requires_grad_(), deltas.clone().requires_grad_()
        rpn.head.forward = lambda feats: ([obj], [dts])  # the head's outputs as leaves
        losses = rpn(images, features, targets(weights))[2]
        sum(losses.values()).backward()
        # per anchor (row-major over the 8 x 8 grid, as the anchors)
        return obj.grad.flatten()[:, None], dts.grad.view(4, 64).t()

    anchors = rpn.anchor_generator(images, [features["0"]])[0]
    iou = box_iou(anchors, BOXES)
    of_box1 = iou[:, 1] == 1.0  # the one exact anchor: fg at IoU >= 0.7
    of_box0 = iou[:, 0] == 1.0
    assert (iou >= 0.7).sum() == 2
    compare(grads, of_box1, of_box0)


def test_roi_head():
    torch.manual_seed(0)
    head = RoIHead(
        MultiScaleRoIAlign(["0"], 7, 2),
        TwoMLPHead(4 * 49, 16),
        FastRCNNPredictor(16, 3),
        sampler=NoSampler(IoUThresholds(0.5, 0.0, 0.5)),
    )
    head.train()
    features = {"0": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))}
    proposals = [
        torch.tensor(
            [
                [0, 0, 15, 16],
                [1, 1, 17, 17],
                [48, 1, 64, 16],
                [47, 0, 63, 15],
                [20, 20, 40, 40],
                [30, 40, 60, 64],
            ],
            dtype=torch.float32,
        )
    ]
    seen: dict[str, Tensor] = {}
    predict = head.predict

    def spy(feats, boxes, shapes):
        logits, deltas = predict(feats, boxes, shapes)
        logits.retain_grad()
        deltas.retain_grad()
        seen.update(logits=logits, deltas=deltas, boxes=torch.cat(boxes))
        return logits, deltas

    head.predict = spy

    def grads(weights: list[float]) -> tuple[Tensor, Tensor]:
        losses = head(features, proposals, [(64, 64)], targets(weights))[1]
        sum(losses.values()).backward()
        return seen["logits"].grad, seen["deltas"].grad

    grads([1.0, 1.0])  # to learn the candidates: the proposals plus the two ground-truth boxes
    iou = box_iou(seen["boxes"], BOXES)
    of_box1 = iou[:, 1] >= 0.5
    of_box0 = iou[:, 0] >= 0.5
    assert seen["boxes"].shape[0] == 8 and of_box1.sum() == 3 and of_box0.sum() == 3
    compare(grads, of_box1, of_box0)


@pytest.mark.parametrize("cls_loss", ["focal", "bce"])
def test_dense_head(cls_loss):
    # the per-batch count as normaliser: an EMA would move between the two calls compared
    dense = DenseHead(8, 1, 3, cls_loss=CLS_LOSSES[cls_loss](), reg_loss=SmoothL1(), normalizer_momentum=0.0)
    ys, xs = torch.meshgrid(torch.arange(0, 64, 16.0), torch.arange(0, 64, 16.0), indexing="ij")
    corners = torch.stack([xs.flatten(), ys.flatten()], dim=1)
    anchors = torch.cat([corners, corners + 16], dim=1)  # 16 tiles of 16 px
    g = torch.Generator().manual_seed(0)
    logits, deltas = torch.randn(1, 16, 3, generator=g), 0.1 * torch.randn(1, 16, 4, generator=g)

    def grads(weights: list[float]) -> tuple[Tensor, Tensor]:
        lg, dt = logits.clone().requires_grad_(), deltas.clone().requires_grad_()
        losses = dense.loss(lg, dt, [anchors], targets(weights))
        sum(losses.values()).backward()
        return lg.grad[0], dt.grad[0]

    iou = box_iou(anchors, BOXES)
    compare(grads, iou[:, 1] == 1.0, iou[:, 0] == 1.0)
