"""Iterative box regression: a no-op without regression, hand-computed boxes with it, config wiring."""

import math

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from hardmine.config import load_config
from hardmine.errors import ConfigError
from hardmine.models.build import build_model
from hardmine.models.iterative import IterativeRegression
from hardmine.models.roi_head import RoIHead
from hardmine.sampling import NoSampler

SHAPES = [(64, 64), (64, 64)]
PROPOSALS = [
    torch.tensor([[8.0, 8.0, 24.0, 26.0], [30.0, 30.0, 60.0, 60.0], [0.0, 0.0, 20.0, 20.0], [4, 6, 30, 40]]),
    torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 30.0, 50.0, 60.0]]),
]


def _head() -> RoIHead:
    torch.manual_seed(0)
    head = RoIHead(
        MultiScaleRoIAlign(["0"], 7, 2), TwoMLPHead(4 * 49, 16), FastRCNNPredictor(16, 3), NoSampler()
    )
    return head.eval()


def _features() -> dict[str, Tensor]:
    torch.manual_seed(1)
    return {"0": torch.randn(2, 4, 16, 16)}


@torch.no_grad()
def _detect(head: RoIHead, iterative: IterativeRegression | None) -> list[dict[str, Tensor]]:
    head.iterative = iterative
    return head(_features(), PROPOSALS, SHAPES)[0]


def test_zero_regression_makes_the_rounds_a_no_op():
    head = _head()
    torch.nn.init.zeros_(head.box_predictor.bbox_pred.weight)
    torch.nn.init.zeros_(head.box_predictor.bbox_pred.bias)
    plain = _detect(head, None)
    assert sum(len(d["boxes"]) for d in plain) > 0
    # Without box voting and with the head's own NMS threshold, re-scoring the same boxes only adds
    # duplicates of the first round's detections, which NMS removes again.
    again = _detect(head, IterativeRegression(rounds=2, nms_thresh=head.nms_thresh, box_voting=False))
    for a, b in zip(plain, again):
        assert_close(b["boxes"], a["boxes"])
        assert_close(b["scores"], a["scores"])
        assert b["labels"].tolist() == a["labels"].tolist()


def _constant_head() -> tuple[RoIHead, float]:
    """Every RoI: class 1 with probability p (class 2 below the score threshold), and class 1's
    deltas shift a box right by a tenth of its width (dx = 1 / weight 10), its size unchanged."""
    head = _head()
    predictor = head.box_predictor
    torch.nn.init.zeros_(predictor.cls_score.weight)
    torch.nn.init.zeros_(predictor.bbox_pred.weight)
    with torch.no_grad():
        predictor.cls_score.bias.copy_(torch.tensor([0.0, 2.0, -10.0]))
        predictor.bbox_pred.bias.zero_()
        predictor.bbox_pred.bias[4] = 1.0  # class 1's dx
    p = math.exp(2) / (1 + math.exp(2) + math.exp(-10))
    return head, p


def _one_box(head: RoIHead, iterative: IterativeRegression) -> dict[str, Tensor]:
    head.iterative = iterative
    with torch.no_grad():
        return head(_features(), [torch.tensor([[8.0, 8.0, 24.0, 24.0]])] * 2, SHAPES)[0][0]


def test_refined_boxes_move_by_the_regression_each_round():
    head, p = _constant_head()
    # Round 0: [8, 8, 24, 24] -> [9.6, 8, 25.6, 24]; round 1 re-regresses that to [11.2, 8, 27.2, 24].
    # Their IoU is 14.4 / 17.6 = 0.82, so both survive NMS only at a threshold above that.
    both = _one_box(head, IterativeRegression(rounds=1, nms_thresh=0.9, box_voting=False))
    order = both["boxes"][:, 0].argsort()
    assert_close(both["boxes"][order], torch.tensor([[9.6, 8.0, 25.6, 24.0], [11.2, 8.0, 27.2, 24.0]]))
    assert_close(both["scores"], torch.tensor([p, p]))
    assert both["labels"].tolist() == [1, 1]


def test_box_voting_averages_the_rounds():
    head, p = _constant_head()
    # Equal scores: the vote is the plain mean of the rounds' boxes, whichever NMS keeps.
    one = _one_box(head, IterativeRegression(rounds=1, nms_thresh=0.3, box_voting=True, voting_iou=0.5))
    assert_close(one["boxes"], torch.tensor([[10.4, 8.0, 26.4, 24.0]]))
    assert_close(one["scores"], torch.tensor([p]))
    # Two rounds: shifts 1.6, 3.2, 4.8 px; the farthest pair still overlaps at 12.8 / 19.2 >= 0.5.
    two = _one_box(head, IterativeRegression(rounds=2, nms_thresh=0.3, box_voting=True, voting_iou=0.5))
    assert_close(two["boxes"], torch.tensor([[11.2, 8.0, 27.2, 24.0]]))


def test_rounds_below_the_score_threshold_stop():
    head, _ = _constant_head()
    head.score_thresh = 0.95  # p = 0.88: nothing survives the first round, so no refinement runs
    out = _one_box(head, IterativeRegression(rounds=2))
    assert out["boxes"].shape == (0, 4)


def test_config_builds_the_iterative_head_and_rejects_bad_values():
    plain = build_model(load_config(None, []), num_classes=2)
    assert plain.roi_head.iterative is None  # the default path is the head's own post-processing
    cfg = load_config(None, ["roi_head.iterative.rounds=1", "roi_head.iterative.box_voting=false"])
    model = build_model(cfg, num_classes=2)
    assert model.roi_head.iterative == IterativeRegression(
        rounds=1, nms_thresh=0.3, box_voting=False, voting_iou=0.5
    )
    with pytest.raises(ConfigError, match="roi_head.iterative.rounds"):
        load_config(None, ["roi_head.iterative.rounds=-1"])
    with pytest.raises(ConfigError, match="roi_head.iterative.voting_iou"):
        load_config(None, ["roi_head.iterative.voting_iou=0"])
