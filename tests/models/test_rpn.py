"""RPN: anchors matched with low-quality matches and chosen by the configured sampler."""

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead

from hardmine.models.rpn import RPN
from hardmine.sampling import IoUThresholds, NoSampler, RandomSampler


def _rpn(sampler) -> RPN:
    torch.manual_seed(0)
    anchors = AnchorGenerator(((16,),), ((1.0,),))
    return RPN(
        anchors,
        RPNHead(4, 1),
        sampler=sampler,
        pre_nms_top_n={"training": 50, "testing": 20},
        post_nms_top_n={"training": 30, "testing": 10},
    )


def _inputs():
    torch.manual_seed(1)
    images = ImageList(torch.zeros(2, 3, 64, 64), [(64, 64), (64, 64)])
    features = {"0": torch.randn(2, 4, 8, 8)}  # stride 8: 64 anchors of 16 px per image
    targets = [
        {
            "boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0], [30.0, 30.0, 37.0, 37.0]]),
            "labels": torch.tensor([1, 2]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return images, features, targets


def test_random_sampler_counts_and_low_quality_match():
    rpn = _rpn(
        RandomSampler(batch_size_per_image=16, fg_fraction=0.5, thresholds=IoUThresholds(0.7, 0.0, 0.3))
    )
    rpn.train()
    boxes, scores, losses = rpn(*_inputs())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"} and all(torch.isfinite(v) for v in losses.values())
    stats = rpn.last_stats
    # Image 0: the 16 px box is an exact anchor (IoU 1); the 7 px box only reaches IoU < 0.7 but is the
    # best match of its anchors -> forced foreground. Image 1 has no objects: 16 background anchors.
    assert stats["num_fg"].item() >= 2
    assert stats["num_fg"].item() + stats["num_bg"].item() == 32
    assert stats["num_candidates"].item() == 128
    assert [b.shape[0] <= 30 for b in boxes] == [True, True] and len(scores) == 2


def test_all_anchors_without_sampling():
    rpn = _rpn(NoSampler(thresholds=IoUThresholds(0.7, 0.0, 0.3)))
    rpn.train()
    rpn(*_inputs())
    stats = rpn.last_stats
    assert stats["num_fg"].item() + stats["num_bg"].item() <= 128
    assert stats["num_bg"].item() >= 64  # every anchor of the empty image is background


def test_eval_returns_proposals_and_no_losses():
    rpn = _rpn(RandomSampler())
    rpn.eval()
    images, features, _ = _inputs()
    boxes, scores, losses = rpn(images, features)
    assert losses == {} and all(b.shape[0] <= 10 for b in boxes)
    assert all(b.shape[0] == s.shape[0] for b, s in zip(boxes, scores))
