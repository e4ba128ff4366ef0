"""RoI head: sampled candidates, exact loss values, the scoring callable and per-box weights."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from hardmine.losses import BalancedL1, CrossEntropy, SigmoidFocal, SmoothL1, SoftmaxFocal, balanced_l1_loss
from hardmine.models.roi_head import RoIHead
from hardmine.sampling import Candidates, IoUThresholds, NoSampler, RandomSampler, Sampler, SampleResult

SHAPES = [(64, 64), (64, 64)]


def _head(sampler: Sampler, **kwargs) -> RoIHead:
    torch.manual_seed(0)
    return RoIHead(
        MultiScaleRoIAlign(["0"], 7, 2),
        TwoMLPHead(4 * 49, 16),
        FastRCNNPredictor(16, 3),
        sampler=sampler,
        **kwargs,
    )


def _features() -> dict[str, Tensor]:
    torch.manual_seed(1)
    return {"0": torch.randn(2, 4, 16, 16)}


TARGETS = [
    {"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]), "labels": torch.tensor([2])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
]
PROPOSALS = [
    torch.tensor([[8.0, 8.0, 24.0, 26.0], [30.0, 30.0, 60.0, 60.0], [0.0, 0.0, 20.0, 20.0]]),
    torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 30.0, 50.0, 60.0]]),
]


def test_loss_equals_hand_computed_cross_entropy_and_box_loss():
    head = _head(NoSampler(thresholds=IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5)), add_gt_as_proposals=False)
    head.train()
    features = _features()
    losses = head(features, PROPOSALS, SHAPES, TARGETS)[1]
    logits, deltas = head.predict(features, PROPOSALS, SHAPES)
    labels = torch.tensor([2, 0, 0, 0, 0])  # IoU of box 0 with the GT = 256/288 >= 0.5; box 2 IoU 0.39 -> bg
    assert losses["loss_roi_cls"].item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    target = head.box_coder.encode_single(TARGETS[0]["boxes"], PROPOSALS[0][:1])
    pred = deltas.view(5, 3, 4)[0, 2]
    expected_box = F.smooth_l1_loss(pred, target[0], beta=1 / 9, reduction="sum") / 5
    assert losses["loss_roi_box"].item() == pytest.approx(expected_box.item(), rel=1e-5)
    stats = head.last_stats
    assert (stats["num_fg"].item(), stats["num_bg"].item(), stats["num_candidates"].item()) == (1, 4, 5)


def test_sampling_free_box_loss_is_the_mean_over_foreground_coordinates_as_the_authors():
    """guided_loss > 0: Fast R-CNN's smooth L1 (beta 1) averaged over the 4 coordinates of each
    foreground RoI, and the cross-entropy rescaled to guided_loss times that value (their RoI head: 2)."""
    head = _head(
        NoSampler(thresholds=IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5)),
        add_gt_as_proposals=False,
        guided_loss=2.0,
        reg_loss=SmoothL1(beta=1.0),
    )
    head.train()
    features = _features()
    losses = head(features, PROPOSALS, SHAPES, TARGETS)[1]
    _, deltas = head.predict(features, PROPOSALS, SHAPES)
    target = head.box_coder.encode_single(TARGETS[0]["boxes"], PROPOSALS[0][:1])
    pred = deltas.view(5, 3, 4)[0, 2]  # one foreground RoI (box 0, class 2): 4 coordinates
    expected_box = F.smooth_l1_loss(pred, target[0], beta=1.0, reduction="sum") / 4
    assert losses["loss_roi_box"].item() == pytest.approx(expected_box.item(), rel=1e-5)
    assert losses["loss_roi_cls"].item() == pytest.approx(2 * expected_box.item(), rel=1e-5)


def test_ground_truth_is_added_to_the_candidates():
    seen = {}

    @dataclass
    class Spy(NoSampler):
        def select(self, labels, candidates: Candidates, score_fn):
            seen["boxes"] = [b.clone() for b in candidates.boxes]
            return super().select(labels, candidates, score_fn)

    head = _head(Spy(thresholds=IoUThresholds(0.5, 0.0, 0.5)))
    head.train()
    head(_features(), PROPOSALS, SHAPES, TARGETS)
    assert seen["boxes"][0].shape == (4, 4) and torch.equal(seen["boxes"][0][-1], TARGETS[0]["boxes"][0])
    assert seen["boxes"][1].shape == (2, 4)


def test_only_sampled_rois_are_pooled_with_autograd():
    head = _head(
        RandomSampler(batch_size_per_image=2, fg_fraction=0.5, thresholds=IoUThresholds(0.5, 0.0, 0.5))
    )
    head.train()
    calls = []
    head.box_head.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    head(_features(), PROPOSALS, SHAPES, TARGETS)
    assert calls == [4]  # 2 RoIs per image; no read-only pass for a sampler that does not rank by loss


def test_score_fn_gives_per_candidate_loss_without_grad():
    captured = {}

    @dataclass
    class TopLoss(Sampler):
        needs_scores = True

        def select(self, labels, candidates, score_fn):
            losses = score_fn(labels)
            scores = [loss.total for loss in losses]
            captured["scores"], captured["losses"] = scores, losses
            return [
                SampleResult(s.argmax().view(1), lab[s.argmax()].view(1).clamp(min=0))
                for s, lab in zip(scores, labels)
            ]

    head = _head(TopLoss(thresholds=IoUThresholds(0.5, 0.0, 0.5)), add_gt_as_proposals=False)
    head.train()
    features = _features()
    losses = head(features, PROPOSALS, SHAPES, TARGETS)[1]
    scores = captured["scores"]
    assert [s.shape[0] for s in scores] == [3, 2] and not any(s.requires_grad for s in scores)
    logits, deltas = head.predict(features, PROPOSALS, SHAPES)
    ce = F.cross_entropy(logits, torch.tensor([2, 0, 0, 0, 0]), reduction="none")
    assert torch.allclose(scores[1], ce[3:], atol=1e-6)
    assert torch.allclose(captured["losses"][0].cls, ce[:3], atol=1e-6)
    assert captured["losses"][0].box[0] > 0 and captured["losses"][0].box[1:].tolist() == [0.0, 0.0]
    assert scores[0][0] > ce[0]  # the foreground candidate's score adds its box loss
    assert losses["loss_roi_cls"].requires_grad


def test_zero_box_weight_removes_its_contribution():
    head = _head(NoSampler(thresholds=IoUThresholds(0.5, 0.0, 0.5)), add_gt_as_proposals=False)
    head.train()
    targets = [dict(TARGETS[0], weights=torch.tensor([0.0])), TARGETS[1]]
    losses = head(_features(), PROPOSALS, SHAPES, targets)[1]
    logits, _ = head.predict(_features(), PROPOSALS, SHAPES)
    ce = F.cross_entropy(logits, torch.tensor([2, 0, 0, 0, 0]), reduction="none")
    assert losses["loss_roi_box"].item() == 0.0
    assert losses["loss_roi_cls"].item() == pytest.approx((ce[1:].sum() / 5).item(), rel=1e-6)


def test_inference_output():
    head = _head(RandomSampler(), score_thresh=0.0, detections_per_img=4)
    head.eval()
    with torch.no_grad():
        detections, losses = head(_features(), PROPOSALS, SHAPES)
    assert losses == {} and len(detections) == 2
    for det in detections:
        assert det["boxes"].shape[0] <= 4 and set(det["labels"].tolist()) <= {1, 2}
        assert (det["boxes"] >= 0).all() and (det["boxes"] <= 64).all()


def test_ohem_two_pass_and_loss_mask_select_the_same_and_give_the_same_gradients():
    from hardmine.sampling.ohem import OHEMSampler

    @dataclass
    class Spy(OHEMSampler):
        def select(self, labels, candidates, score_fn):
            self.results = super().select(labels, candidates, score_fn)
            return self.results

    runs = {}
    for mode in ("two_pass", "loss_mask"):
        head = _head(Spy(batch_size_per_image=2, mode=mode))
        head.train()
        losses = head(_features(), PROPOSALS, SHAPES, TARGETS)[1]
        sum(losses.values()).backward()
        runs[mode] = (
            head.sampler.results,
            losses,
            {n: p.grad.clone() for n, p in head.named_parameters() if p.grad is not None},
        )
    (sel_a, loss_a, grad_a), (sel_b, loss_b, grad_b) = runs["two_pass"], runs["loss_mask"]
    assert [r.indices.tolist() for r in sel_a] == [r.indices.tolist() for r in sel_b]
    assert sum(r.indices.numel() for r in sel_a) == 4  # B = 2 per image x 2 images, per batch
    for key in loss_a:
        torch.testing.assert_close(loss_a[key], loss_b[key])
    assert grad_a.keys() == grad_b.keys() and grad_a
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], rtol=1e-5, atol=1e-7)


def test_read_only_pass_in_chunks_scores_like_one_pass():
    @dataclass
    class Recorder(Sampler):
        needs_scores = True

        def select(self, labels, candidates, score_fn):
            self.losses = score_fn(labels)
            return [SampleResult(torch.nonzero(lab >= 0).flatten(), lab[lab >= 0]) for lab in labels]

    scored = []
    for chunk in (1, 2, 1000):
        head = _head(Recorder(), score_chunk_size=chunk)
        head.train()
        head(_features(), PROPOSALS, SHAPES, TARGETS)
        scored.append(head.sampler.losses)
    assert [loss.cls.shape[0] for loss in scored[0]] == [4, 2]  # 3 + 1 GT, 2 + 0 GT
    for other in scored[1:]:
        for a, b in zip(scored[0], other):
            torch.testing.assert_close(a.cls, b.cls)
            torch.testing.assert_close(a.box, b.box)
    with pytest.raises(ValueError, match="score_chunk_size"):
        _head(Recorder(), score_chunk_size=0)


def test_cheaper_scoring_passes_approximate_the_exact_one():
    head = _head(RandomSampler())
    features, boxes = _features(), PROPOSALS
    exact = head.predict(features, boxes, SHAPES)
    for a, b in zip(head.predict_in_chunks(features, boxes, SHAPES), exact):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # coarse: the same head over RoIAlign with one sampling point per bin
    coarse = head.predict_in_chunks(features, boxes, SHAPES, "coarse")
    one_point = _head(RandomSampler())
    one_point.box_roi_pool = MultiScaleRoIAlign(["0"], 7, 1)
    for a, b in zip(coarse, one_point.predict(features, boxes, SHAPES)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(coarse[0], exact[0], rtol=0, atol=1e-6)
    # bf16: float32 outputs within bfloat16 rounding of the exact ones (8 bits of mantissa)
    for scoring in ("bf16", "bf16_coarse"):
        logits, deltas = head.predict_in_chunks(features, boxes, SHAPES, scoring)
        assert logits.dtype == deltas.dtype == torch.float32
        reference = exact if scoring == "bf16" else coarse
        torch.testing.assert_close(logits, reference[0], rtol=0.05, atol=0.02)
        assert not torch.equal(logits, reference[0])


def test_ohem_asks_its_head_for_the_configured_scoring_pass():
    from hardmine.sampling.ohem import OHEMSampler

    assert RandomSampler().scoring == "exact"
    assert OHEMSampler().scoring == "exact"
    head = _head(OHEMSampler(batch_size_per_image=2, score_pass="bf16_coarse"))
    asked = []
    original = head.predict_in_chunks
    head.predict_in_chunks = lambda *args: asked.append(args[-1]) or original(*args)
    head.train()
    losses = head(_features(), PROPOSALS, SHAPES, TARGETS)[1]
    assert asked == ["bf16_coarse"] and all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="score_pass"):
        OHEMSampler(score_pass="fp8")


# --- softmax focal and balanced L1 ------------------------------------------------------------------


def test_softmax_focal_per_sample_values_by_hand():
    import math

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-3.0, 4.0, 1.0]])
    labels = torch.tensor([0, 2, 1])
    expected = []
    for row, y in zip(logits.tolist(), labels.tolist()):
        p = math.exp(row[y]) / sum(math.exp(v) for v in row)
        expected.append(-((1 - p) ** 1.5) * math.log(p))
    torch.testing.assert_close(SoftmaxFocal(gamma=1.5)(logits, labels), torch.tensor(expected))
    # gamma 0 is cross-entropy; the default gamma is 2
    torch.testing.assert_close(
        SoftmaxFocal(gamma=0.0)(logits, labels), F.cross_entropy(logits, labels, reduction="none")
    )
    p = F.softmax(logits, 1)[torch.arange(3), labels]
    torch.testing.assert_close(SoftmaxFocal()(logits, labels), -((1 - p) ** 2) * p.log())


def test_balanced_l1_per_sample_values_by_hand():
    import math

    from torchvision.models.detection._utils import BoxCoder

    pred = torch.tensor([[0.5, -2.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.1]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 9.0, 12.0]])  # gt = boxes: target deltas 0
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    b = math.e**3 - 1  # exp(gamma / alpha) - 1 with alpha 0.5, gamma 1.5

    def by_hand(x: float, beta: float = 1.0) -> float:
        if x < beta:
            return 0.5 / b * (b * x + 1) * math.log(b * x / beta + 1) - 0.5 * x
        return 1.5 * x + 1.5 / b - 0.5 * beta

    expected = torch.tensor([sum(by_hand(abs(v)) for v in row) for row in pred.tolist()])
    torch.testing.assert_close(BalancedL1()(pred, boxes, boxes, coder), expected)
    half = torch.tensor([sum(by_hand(abs(v), 0.5) for v in row) for row in pred.tolist()])
    torch.testing.assert_close(BalancedL1(beta=0.5)(pred, boxes, boxes, coder), half)


def test_head_with_softmax_focal_and_balanced_l1_equals_hand_computed_losses():
    head = _head(
        NoSampler(thresholds=IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.5)),
        add_gt_as_proposals=False,
        cls_loss=SoftmaxFocal(gamma=1.0),
        reg_loss=BalancedL1(alpha=0.4, gamma=1.2, beta=0.5),
    )
    head.train()
    features = _features()
    losses = head(features, PROPOSALS, SHAPES, TARGETS)[1]
    logits, deltas = head.predict(features, PROPOSALS, SHAPES)
    labels = torch.tensor([2, 0, 0, 0, 0])
    p = F.softmax(logits, 1)[torch.arange(5), labels]
    torch.testing.assert_close(losses["loss_roi_cls"], (-(1 - p) * p.log()).sum() / 5)
    target = head.box_coder.encode_single(TARGETS[0]["boxes"], PROPOSALS[0][:1])
    pred = deltas.view(5, 3, 4)[0, 2]
    expected_box = balanced_l1_loss(pred, target[0], alpha=0.4, gamma=1.2, beta=0.5).sum() / 5
    torch.testing.assert_close(losses["loss_roi_box"], expected_box)
    assert all(torch.isfinite(v) for v in losses.values())


def test_config_builds_the_roi_losses_with_their_options():
    from hardmine.config import load_config
    from hardmine.models.build import build_model

    cfg = load_config(
        None,
        ["roi_head.cls_loss=softmax_focal", "roi_head.cls_loss.gamma=0.5", "roi_head.reg_loss=balanced_l1"],
    )
    assert cfg.roi_head.reg_loss == BalancedL1(alpha=0.5, gamma=1.5, beta=1.0)
    criterion = build_model(cfg, num_classes=2).heads["roi"].criterion
    assert criterion.cls_loss == SoftmaxFocal(gamma=0.5)
    assert criterion.reg_loss == BalancedL1(alpha=0.5, gamma=1.5, beta=1.0)


def test_label_smoothing_trains_against_smoothed_targets():
    head = _head(
        NoSampler(thresholds=IoUThresholds(0.5, 0.0, 0.5)),
        add_gt_as_proposals=False,
        cls_loss=CrossEntropy(label_smoothing=0.1),
    )
    head.train()
    losses = head(_features(), PROPOSALS, SHAPES, TARGETS)[1]
    logits, _ = head.predict(_features(), PROPOSALS, SHAPES)
    labels = torch.tensor([2, 0, 0, 0, 0])
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert losses["loss_roi_cls"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-3)


def test_the_head_takes_softmax_losses_only():
    with pytest.raises(ValueError, match="cls_loss must be a softmax loss, not 'focal'"):
        _head(RandomSampler(), cls_loss=SigmoidFocal())


def test_loss_ranking_scores_carry_the_box_weights():
    captured = {}

    @dataclass
    class Recorder(Sampler):
        needs_scores = True

        def select(self, labels, candidates, score_fn):
            captured["losses"] = score_fn(labels)
            return [SampleResult(torch.arange(lab.numel()), lab.clamp(min=0)) for lab in labels]

    head = _head(Recorder(thresholds=IoUThresholds(0.5, 0.0, 0.5)), add_gt_as_proposals=False)
    head.train()
    plain = [TARGETS[0], TARGETS[1]]
    head(_features(), PROPOSALS, SHAPES, plain)
    unweighted = captured["losses"]
    for weight in (0.0, 0.25):
        weighted_targets = [dict(TARGETS[0], weights=torch.tensor([weight])), TARGETS[1]]
        head(_features(), PROPOSALS, SHAPES, weighted_targets)
        weighted = captured["losses"]
        # candidate 0 of image 0 is the foreground one: its cls and box scores scale with the weight
        torch.testing.assert_close(weighted[0].cls[0], weight * unweighted[0].cls[0])
        torch.testing.assert_close(weighted[0].box[0], weight * unweighted[0].box[0])
        torch.testing.assert_close(weighted[0].cls[1:], unweighted[0].cls[1:])  # background: unchanged
        torch.testing.assert_close(weighted[1].cls, unweighted[1].cls)


def test_a_batch_without_objects_gives_the_box_regressor_no_gradient():
    """The RoI head sums its box loss over every sample (0 for background): without foreground the
    box regressor is not in the graph (the RPN's and the dense head's get a gradient of zeros)."""
    head = _head(RandomSampler(thresholds=IoUThresholds(0.5, 0.0, 0.5)))
    head.train()
    empty = [TARGETS[1], TARGETS[1]]
    losses = head(_features(), PROPOSALS, SHAPES, empty)[1]
    assert losses["loss_roi_box"].item() == 0.0 and losses["loss_roi_box"].grad_fn is None
    sum(losses.values()).backward()
    assert head.box_predictor.bbox_pred.weight.grad is None
    assert head.box_predictor.cls_score.weight.grad is not None
