"""RPN: anchors matched with low-quality matches and chosen by the configured sampler."""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead, concat_box_prediction_layers
from torchvision.ops import box_iou

from hardmine.models.rpn import RPN
from hardmine.sampling import IoUThresholds, NoSampler, OHEMSampler, RandomSampler


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


def test_ohem_trains_on_the_anchors_with_the_highest_objectness_plus_box_loss():
    @dataclass
    class Spy(OHEMSampler):
        def select(self, labels, candidates, score_fn):
            self.labels = labels
            self.results = super().select(labels, candidates, score_fn)
            return self.results

    sampler = Spy(IoUThresholds(0.7, 0.0, 0.3), batch_size_per_image=5, per_image=True, nms_thresh=None)
    rpn = _rpn(sampler)
    rpn.train()
    outputs = []
    rpn.head.register_forward_hook(lambda module, args, out: outputs.append(out))
    images, features, targets = _inputs()
    losses = rpn(images, features, targets)[2]

    objectness, deltas = concat_box_prediction_layers(*outputs[0])
    objectness, deltas = objectness.detach().view(2, -1), deltas.detach().view(2, -1, 4)
    anchors = rpn.anchor_generator(images, list(features.values()))
    expected_cls = 0.0
    for i, (labels, result) in enumerate(zip(sampler.labels, sampler.results)):
        cls = F.binary_cross_entropy_with_logits(objectness[i], (labels > 0).float(), reduction="none")
        box = torch.zeros_like(cls)
        fg = torch.nonzero(labels > 0).flatten()
        if fg.numel():
            matched = box_iou(anchors[i][fg], targets[i]["boxes"]).argmax(dim=1)
            reg_targets = rpn.box_coder.encode_single(targets[i]["boxes"][matched], anchors[i][fg])
            box[fg] = F.smooth_l1_loss(deltas[i, fg], reg_targets, beta=1 / 9, reduction="none").sum(1)
        total = (cls + box).masked_fill(labels < 0, -math.inf)
        assert result.indices.tolist() == sorted(total.topk(5).indices.tolist())
        expected_cls += cls[result.indices].sum()
    assert (sampler.labels[1] == 0).all()  # the image without objects: every anchor is background
    torch.testing.assert_close(losses["loss_rpn_cls"], expected_cls / 10)
    assert sampler.last_stats["num_selected"] == 10
    assert sampler.last_stats["mean_loss_selected"] >= sampler.last_stats["mean_loss_all"]


def test_loss_ranking_scores_carry_the_box_weights():
    @dataclass
    class Recorder(NoSampler):
        needs_scores = True

        def select(self, labels, candidates, score_fn):
            self.labels, self.losses = labels, score_fn(labels)
            return super().select(labels, candidates, None)

    sampler = Recorder(IoUThresholds(0.7, 0.0, 0.3))
    rpn = _rpn(sampler)
    rpn.train()
    images, features, targets = _inputs()
    rpn(images, features, targets)
    unweighted = sampler.losses[0]
    targets[0]["weights"] = torch.tensor([0.0, 1.0])
    rpn(images, features, targets)
    weighted = sampler.losses[0]
    anchors = rpn.anchor_generator(images, list(features.values()))[0]
    fg = sampler.labels[0] > 0
    of_box0 = fg & (box_iou(anchors, targets[0]["boxes"]).argmax(dim=1) == 0)
    assert of_box0.sum() == 1  # the exact anchor of the 16 px box
    assert weighted.cls[of_box0].item() == 0.0 and weighted.box[of_box0].item() == 0.0
    assert unweighted.cls[of_box0].item() > 0
    torch.testing.assert_close(weighted.total[~of_box0], unweighted.total[~of_box0])
