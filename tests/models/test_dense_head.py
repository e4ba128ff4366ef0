"""DenseHead losses on hand-made anchors, and the RetinaNet built around it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import box_iou, sigmoid_focal_loss

from hardmine.config import load_config
from hardmine.losses import (
    BCE,
    GHMC,
    GHMR,
    REG_LOSSES,
    BalancedL1,
    CrossEntropy,
    GHMCLoss,
    GHMRLoss,
    SigmoidFocal,
    SmoothL1,
    balanced_l1_loss,
)
from hardmine.models.build import build_model
from hardmine.models.dense_head import DenseHead
from hardmine.models.retinanet import RetinaNet
from hardmine.models.transform import DetectionTransform
from hardmine.sampling import IoUThresholds, OHEMSampler, RandomSampler, Sampler, SampleResult, ScoreFn
from hardmine.sampling.base import Candidates, take

NUM_CLASSES = 3
STAT_KEYS = {"num_candidates", "num_fg", "num_bg", "cls_loss_fg", "cls_loss_bg"}


def tiles() -> Tensor:
    """16 non-overlapping 16x16 anchors tiling a 64x64 image, row by row."""
    ys, xs = torch.meshgrid(torch.arange(0, 64, 16.0), torch.arange(0, 64, 16.0), indexing="ij")
    corners = torch.stack([xs.flatten(), ys.flatten()], dim=1)
    return torch.cat([corners, corners + 16], dim=1)


#: Exactly anchor 0 (IoU 1); the rest overlap it not at all.
GT_EXACT = [0.0, 0.0, 16.0, 16.0]
#: Best IoU 0.29, tied between anchors 5 and 6: foreground only as a low-quality match.
GT_LOW = [20.0, 20.0, 44.0, 36.0]
#: Exactly anchor 3, far from the others.
GT_FAR = [48.0, 0.0, 64.0, 16.0]


def target(boxes: list[list[float]], labels: list[int], **extra: Tensor) -> dict[str, Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        **extra,
    }


def hand_made_batch() -> list[dict[str, Tensor]]:
    """Image 0: GT_EXACT (class 1) + GT_LOW (class 3); image 1: no objects, anchor 15 ignored."""
    return [
        target([GT_EXACT, GT_LOW], [1, 3]),
        target([], [], ignore_boxes=torch.tensor([[46.0, 46.0, 64.0, 64.0]])),
    ]


def outputs(seed: int = 0, num_images: int = 2) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_images, 16, NUM_CLASSES, generator=g).requires_grad_()
    deltas = (0.1 * torch.randn(num_images, 16, 4, generator=g)).requires_grad_()
    return logits, deltas


def head(**options) -> DenseHead:
    """A small dense head; unless a test says otherwise its losses divide by each batch's own
    foreground count (normalizer_momentum=0), so that expected values can be computed by hand."""
    options.setdefault("normalizer_momentum", 0.0)
    return DenseHead(in_channels=8, num_anchors=1, num_classes=NUM_CLASSES, **options)


def ema(dense: DenseHead) -> Tensor:
    """The dense head's moving average of the foreground count (its loss normaliser)."""
    return dense.criterion.normaliser.ema


def run(dense: DenseHead, targets: list[dict[str, Tensor]], seed: int = 0) -> dict[str, Tensor]:
    logits, deltas = outputs(seed, len(targets))
    return dense.loss(logits, deltas, [tiles()] * len(targets), targets)


def test_foreground_and_background_counts_follow_the_matching():
    dense = head()
    run(dense, hand_made_batch())
    stats = dense.last_stats
    assert set(stats) == STAT_KEYS
    # fg: anchor 0 (IoU 1) + anchors 5, 6 (best for GT_LOW); bg: the rest but ignored anchor 15.
    assert (stats["num_candidates"], stats["num_fg"], stats["num_bg"]) == (32, 3, 28)


def test_without_low_quality_matches_the_poorly_covered_box_has_no_anchor():
    dense = head(low_quality_matches=False)
    run(dense, hand_made_batch())
    assert (dense.last_stats["num_fg"], dense.last_stats["num_bg"]) == (1, 30)


def test_losses_are_normalised_by_foreground_count_and_stats_add_up():
    dense = head()
    losses = run(dense, hand_made_batch())
    assert set(losses) == {"loss_dense_cls", "loss_dense_box"}
    stats = dense.last_stats
    assert all(v.ndim == 0 and not v.requires_grad for v in stats.values())
    torch.testing.assert_close(
        stats["cls_loss_fg"] + stats["cls_loss_bg"], losses["loss_dense_cls"].detach() * 3
    )


def test_bce_matches_a_hand_computed_loss_and_differs_from_focal():
    targets = hand_made_batch()
    logits, deltas = outputs()
    anchors = [tiles(), tiles()]
    one_hot = torch.zeros(2, 16, NUM_CLASSES)
    one_hot[0, 0, 0] = one_hot[0, 5, 2] = one_hot[0, 6, 2] = 1.0
    keep = torch.ones(2, 16, dtype=torch.bool)
    keep[1, 15] = False  # ignored
    expected = F.binary_cross_entropy_with_logits(logits[keep], one_hot[keep], reduction="sum") / 3
    bce = head(cls_loss=BCE(alpha=-1.0)).loss(logits, deltas, anchors, targets)["loss_dense_cls"]
    torch.testing.assert_close(bce, expected)
    focal = head(cls_loss=SigmoidFocal()).loss(logits, deltas, anchors, targets)["loss_dense_cls"]
    assert not torch.isclose(bce, focal)
    balanced = head(cls_loss=BCE(alpha=0.25)).loss(logits, deltas, anchors, targets)["loss_dense_cls"]
    assert not torch.isclose(bce, balanced)


@pytest.mark.parametrize("reg_loss", ["l1", "smooth_l1", "giou"])
def test_perfect_deltas_give_zero_box_loss(reg_loss):
    dense = head(reg_loss=REG_LOSSES[reg_loss]())
    targets = hand_made_batch()
    logits, deltas = outputs()
    anchors = tiles()
    gt = targets[0]["boxes"]
    matched = box_iou(gt, anchors).argmax(dim=0)
    perfect = deltas.detach().clone()
    perfect[0] = dense.box_coder.encode_single(gt[matched], anchors)
    zero = dense.loss(logits, perfect, [anchors, anchors], targets)["loss_dense_box"]
    assert zero.item() == pytest.approx(0.0, abs=1e-5)
    assert dense.loss(logits, deltas, [anchors, anchors], targets)["loss_dense_box"].item() > 0.01


def test_a_box_with_weight_zero_adds_no_box_loss():
    dense = head(reg_loss=SmoothL1())
    with_zero = target([GT_EXACT, GT_FAR], [1, 2], weights=torch.tensor([1.0, 0.0]))
    box_with = run(dense, [with_zero])["loss_dense_box"] * dense.last_stats["num_fg"]
    assert dense.last_stats["num_fg"] == 2  # its anchor is still foreground (not background)...
    box_without = run(dense, [target([GT_EXACT], [1])])["loss_dense_box"] * dense.last_stats["num_fg"]
    torch.testing.assert_close(box_with, box_without)  # ... but carries no box loss
    doubled = target([GT_EXACT], [1], weights=torch.tensor([2.0]))
    torch.testing.assert_close(run(dense, [doubled])["loss_dense_box"], 2 * box_without)


def test_random_sampler_limits_the_sampled_anchors():
    sampler = RandomSampler(
        IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.4), batch_size_per_image=8, fg_fraction=0.25
    )
    dense = head(sampler=sampler)
    losses = run(dense, hand_made_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    assert (dense.last_stats["num_fg"], dense.last_stats["num_bg"]) == (2, 14)


@dataclass
class TopLoss(Sampler):
    """Keeps the k highest-loss assigned candidates per image (an OHEM stand-in)."""

    k: int = 4
    needs_scores = True

    def select(
        self, labels: list[Tensor], candidates: Candidates, score_fn: ScoreFn | None
    ) -> list[SampleResult]:
        assert score_fn is not None
        self.scores = [loss.total for loss in score_fn(labels)]
        return [
            take(image_labels, scores.masked_fill(image_labels < 0, -math.inf).topk(self.k).indices)
            for image_labels, scores in zip(labels, self.scores)
        ]


def test_loss_ranking_sampler_gets_per_anchor_losses_without_grad():
    sampler = TopLoss(IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.4))
    dense = head(sampler=sampler)
    targets = hand_made_batch()
    logits, deltas = outputs()
    dense.loss(logits, deltas, [tiles(), tiles()], targets)
    scores = sampler.scores
    assert [s.shape for s in scores] == [(16,), (16,)] and not any(s.requires_grad for s in scores)
    # Background anchor 1 of image 0: classification only; foreground anchor 0: classification + box.
    bg_cls = sigmoid_focal_loss(logits[0, 1], torch.zeros(NUM_CLASSES), reduction="sum")
    torch.testing.assert_close(scores[0][1], bg_cls.detach())
    fg_cls = sigmoid_focal_loss(logits[0, 0], torch.tensor([1.0, 0.0, 0.0]), reduction="sum")
    fg_box = (
        (deltas[0, 0] - dense.box_coder.encode_single(targets[0]["boxes"][:1], tiles()[:1])[0]).abs().sum()
    )
    torch.testing.assert_close(scores[0][0], (fg_cls + fg_box).detach())
    assert dense.last_stats["num_fg"] + dense.last_stats["num_bg"] == 8


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="cls_loss must be a sigmoid loss, not 'ce'"):
        head(cls_loss=CrossEntropy())
    with pytest.raises(ValueError, match="num_convs"):
        head(num_convs=5)
    with pytest.raises(ValueError, match="head_norm"):
        head(head_norm="batch")


def test_classification_bias_starts_at_the_prior():
    dense = head(prior_prob=0.05, num_convs=2)
    assert len(dense.classification.conv) == 2
    torch.testing.assert_close(
        torch.sigmoid(dense.classification.cls_logits.bias), torch.full((NUM_CLASSES,), 0.05)
    )


# --- the detector ---------------------------------------------------------------------------------


@pytest.fixture
def model() -> RetinaNet:
    torch.manual_seed(0)
    cfg = load_config(None, ["model.arch=retinanet", "model.min_size=128", "model.max_size=128"])
    return build_model(cfg, NUM_CLASSES)


def images_and_targets() -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    images = [torch.rand(3, 96, 128), torch.rand(3, 120, 100)]
    targets = [
        target(
            [[10.0, 10.0, 40.0, 50.0], [60.0, 20.0, 120.0, 80.0]], [1, 3], weights=torch.tensor([1.0, 0.5])
        ),
        target([], []),
    ]
    return images, targets


def test_training_step_gives_finite_losses_and_gradients_on_every_head_parameter(model):
    model.train()
    images, targets = images_and_targets()
    losses = model(images, targets)
    assert set(losses) == {"loss_dense_cls", "loss_dense_box"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for name, param in model.head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in model.backbone.parameters())
    stats = model.heads["dense"].last_stats
    assert set(stats) == STAT_KEYS and stats["num_fg"] >= 2


def test_training_without_targets_is_an_error(model):
    model.train()
    with pytest.raises(ValueError, match="targets"):
        model([torch.rand(3, 64, 64)])


def test_eval_returns_detections_in_original_coordinates(model):
    model.eval()
    model.score_thresh = 0.0
    model.detections_per_img = 50
    images, _ = images_and_targets()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for det, image in zip(detections, images):
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert 0 < n <= 50 and det["boxes"].shape == (n, 4) and det["scores"].shape == (n,)
        assert det["labels"].dtype == torch.int64
        assert det["labels"].min() >= 1 and det["labels"].max() <= NUM_CLASSES
        h, w = image.shape[-2:]
        assert det["boxes"][:, 2].max() <= w + 1e-3 and det["boxes"][:, 3].max() <= h + 1e-3


def test_untrained_model_scores_below_the_threshold_and_returns_empty_detections(model):
    model.eval()
    with torch.no_grad():
        (det,) = model([torch.rand(3, 64, 80)])
    assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["labels"].shape == (0,)


def test_eval_decodes_the_best_anchor_into_the_original_image(model, monkeypatch):
    """Head outputs that encode one box on its best anchor come back as exactly that detection."""
    model.eval()
    image = torch.rand(3, 64, 96)  # resized to 85 x 128
    box = torch.tensor([[20.0, 10.0, 50.0, 40.0]])
    image_list, _ = model.transform([image])
    (h, w) = image_list.image_sizes[0]
    resized = box * torch.tensor([w / 96, h / 64, w / 96, h / 64])

    def fake_head(features: list[Tensor]) -> tuple[Tensor, Tensor]:
        anchors = model.anchor_generator(image_list, features)[0]
        best = box_iou(resized, anchors).argmax()
        logits = torch.full((1, anchors.shape[0], NUM_CLASSES), -10.0)
        logits[0, best, 1] = 10.0
        return logits, model.head.box_coder.encode_single(resized.expand_as(anchors), anchors)[None]

    monkeypatch.setattr(model.head, "forward", fake_head)
    with torch.no_grad():
        det = model([image])[0]
    assert det["labels"].tolist() == [2]
    torch.testing.assert_close(det["boxes"], box, atol=1e-3, rtol=0)


def test_anchor_count_must_match_the_head():
    anchors = AnchorGenerator(((16,), (32,)), ((1.0,), (0.5, 1.0)))
    dense = DenseHead(in_channels=8, num_anchors=1, num_classes=2)
    with pytest.raises(ValueError, match="anchors per location"):
        RetinaNet(torch.nn.Identity(), dense, anchors, DetectionTransform(64, 64))


def test_ohem_keeps_the_hardest_anchors_and_drops_a_near_duplicate_by_nms():
    sampler = OHEMSampler(
        IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.4), batch_size_per_image=3, per_image=True, nms_thresh=0.7
    )
    dense = head(sampler=sampler, cls_loss=BCE(alpha=-1.0))
    anchors = tiles()
    anchors[1] = torch.tensor([1.0, 0.0, 17.0, 16.0])  # IoU 0.88 with anchor 0: both match GT_EXACT
    targets = hand_made_batch()
    logits, deltas = outputs()
    losses = dense.loss(logits, deltas, [anchors, anchors], targets)

    # Hand-made expectation: per-anchor BCE summed over classes, + L1 on the deltas for foreground.
    labels = [torch.zeros(16, dtype=torch.long), torch.zeros(16, dtype=torch.long)]
    labels[0][[0, 1]], labels[0][[5, 6]] = 1, 3
    labels[1][15] = -1  # inside the ignore region
    gt = {0: GT_EXACT, 1: GT_EXACT, 5: GT_LOW, 6: GT_LOW}
    expected_cls, expected_box, num_fg = 0.0, 0.0, 0
    for i in range(2):
        onehot = F.one_hot(labels[i].clamp(min=0), NUM_CLASSES + 1)[:, 1:].float()
        cls = F.binary_cross_entropy_with_logits(logits[i].detach(), onehot, reduction="none").sum(1)
        box = torch.zeros(16)
        for a, g in gt.items() if i == 0 else ():
            target_deltas = dense.box_coder.encode_single(torch.tensor([g]), anchors[a : a + 1])[0]
            box[a] = (deltas[i, a].detach() - target_deltas).abs().sum()
        total = (cls + box).masked_fill(labels[i] < 0, -math.inf)
        if i == 0:  # NMS: of anchors 0 and 1 (same label, IoU 0.88) only the harder survives
            total[1 if total[0] >= total[1] else 0] = -math.inf
        keep = total.topk(3).indices
        expected_cls += cls[keep].sum()
        expected_box += box[keep].sum()
        num_fg += int((labels[i][keep] > 0).sum())
    torch.testing.assert_close(losses["loss_dense_cls"], expected_cls / max(num_fg, 1))
    torch.testing.assert_close(losses["loss_dense_box"], expected_box / max(num_fg, 1))
    stats = sampler.last_stats
    assert (stats["num_candidates"], stats["num_selected"]) == (31, 6)
    assert stats["num_removed_by_nms"] == 1
    assert stats["mean_loss_selected"] > stats["mean_loss_all"]


# --- hardmine's losses in the head: focal kernel, GHM-C / GHM-R, balanced L1, normaliser EMA -------


def hand_made_one_hot() -> tuple[Tensor, Tensor]:
    """One-hot targets [2, 16, C] of `hand_made_batch` and the mask of its sampled (not ignored) anchors."""
    one_hot = torch.zeros(2, 16, NUM_CLASSES)
    one_hot[0, 0, 0] = one_hot[0, 5, 2] = one_hot[0, 6, 2] = 1.0
    keep = torch.ones(2, 16, dtype=torch.bool)
    keep[1, 15] = False  # ignored
    return one_hot, keep


def foreground_residuals(dense: DenseHead, deltas: Tensor) -> Tensor:
    """[3, 4] deltas minus their encoded targets for the foreground anchors 0, 5, 6 of image 0."""
    gt = torch.tensor([GT_EXACT, GT_LOW, GT_LOW])
    return deltas[0, [0, 5, 6]], dense.box_coder.encode_single(gt, tiles()[[0, 5, 6]])


def test_focal_runs_hardmine_kernel_with_torchvision_values_and_gradients():
    logits, _ = outputs()
    one_hot, _ = hand_made_one_hot()
    for alpha in (0.25, -1.0, -0.5):
        ours = SigmoidFocal(alpha=alpha, gamma=2.0).elementwise(logits, one_hot, None)
        assert type(ours.grad_fn).__name__.startswith("_SigmoidFocal")
        reference = sigmoid_focal_loss(logits, one_hot, alpha=alpha if alpha >= 0 else -1.0, gamma=2.0)
        torch.testing.assert_close(ours, reference)
        (grad,) = torch.autograd.grad(ours.sum(), logits)
        (expected,) = torch.autograd.grad(reference.sum(), logits)
        torch.testing.assert_close(grad, expected)


def test_ghm_c_is_normalised_by_its_valid_elements_and_keeps_its_ema_as_state():
    dense = head(cls_loss=GHMCLoss())
    ghm_c = dense.criterion.cls_state
    assert isinstance(ghm_c, GHMC) and (ghm_c.bins, ghm_c.momentum) == (30, 0.75)
    assert "criterion.cls_state.acc_sum" in dense.state_dict()
    logits, deltas = outputs()
    one_hot, keep = hand_made_one_hot()
    reference = GHMC(bins=30, momentum=0.75)  # reduction "mean": sum / (31 sampled anchors x 3 classes)
    for _ in range(2):  # the second call uses the EMA of the first
        loss = dense.loss(logits, deltas, [tiles(), tiles()], hand_made_batch())["loss_dense_cls"]
        torch.testing.assert_close(loss, reference(logits[keep], one_hot[keep]))
    torch.testing.assert_close(ghm_c.acc_sum, reference.acc_sum)
    stats = dense.last_stats
    torch.testing.assert_close(stats["cls_loss_fg"] + stats["cls_loss_bg"], loss.detach() * 31 * 3)


def test_ghm_r_is_normalised_by_its_coordinates_and_weighted_by_ten():
    dense = head(reg_loss=GHMRLoss())
    ghm_r = dense.criterion.reg_state
    assert isinstance(ghm_r, GHMR) and (ghm_r.mu, ghm_r.bins, ghm_r.momentum) == (0.02, 10, 0.7)
    assert "criterion.reg_state.acc_sum" in dense.state_dict()
    logits, deltas = outputs()
    loss = dense.loss(logits, deltas, [tiles(), tiles()], hand_made_batch())["loss_dense_box"]
    reference = GHMR(mu=0.02, bins=10, momentum=0.7)  # reduction "mean": sum / (3 fg anchors x 4)
    torch.testing.assert_close(loss, 10 * reference(*foreground_residuals(dense, deltas)))
    torch.testing.assert_close(ghm_r.acc_sum, reference.acc_sum)
    single = head(reg_loss=GHMRLoss(loss_weight=1.0, momentum=0.0))
    assert single.criterion.reg_state.acc_sum is None
    assert "criterion.reg_state.acc_sum" not in single.state_dict()
    one = single.loss(logits, deltas, [tiles(), tiles()], hand_made_batch())["loss_dense_box"]
    torch.testing.assert_close(one, GHMR(momentum=0.0)(*foreground_residuals(single, deltas)))


def test_balanced_l1_box_loss_is_normalised_by_the_foreground_count():
    dense = head(reg_loss=BalancedL1(alpha=0.4, gamma=1.2, beta=0.2))
    logits, deltas = outputs()
    loss = dense.loss(logits, deltas, [tiles(), tiles()], hand_made_batch())["loss_dense_box"]
    pred, target_deltas = foreground_residuals(dense, deltas)
    expected = balanced_l1_loss(pred, target_deltas, alpha=0.4, gamma=1.2, beta=0.2).sum() / 3
    torch.testing.assert_close(loss, expected)


def test_the_scoring_pass_leaves_the_ghm_ema_unchanged():
    sampler = TopLoss(IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.4))
    dense = head(sampler=sampler, cls_loss=GHMCLoss(), reg_loss=GHMRLoss())
    run(dense, hand_made_batch())
    # Only the trained pass (4 anchors x 2 images x 3 classes) counts, from a zero start: (1 - m) x 24.
    assert dense.criterion.cls_state.acc_sum.sum().item() == pytest.approx(0.25 * 24)
    num_fg = int(dense.last_stats["num_fg"])
    assert dense.criterion.reg_state.acc_sum.sum().item() == pytest.approx(0.3 * 4 * num_fg)


@pytest.mark.parametrize(("cls_loss", "reg_loss"), [(GHMCLoss, GHMRLoss), (SigmoidFocal, BalancedL1)])
def test_losses_are_finite_on_a_batch_without_objects(cls_loss, reg_loss):
    dense = head(cls_loss=cls_loss(), reg_loss=reg_loss(), normalizer_momentum=0.9)
    logits, deltas = outputs(num_images=1)
    losses = dense.loss(logits, deltas, [tiles()], [target([], [])])
    assert torch.isfinite(losses["loss_dense_cls"]) and losses["loss_dense_cls"] > 0
    assert losses["loss_dense_box"].item() == 0.0
    sum(losses.values()).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(deltas.grad).all()


def test_the_default_normaliser_is_detectron2s_ema_starting_at_100():
    dense = DenseHead(in_channels=8, num_anchors=1, num_classes=NUM_CLASSES)
    assert dense.criterion.normaliser.momentum == 0.9 and ema(dense).item() == 100.0
    plain = head()
    run(dense, hand_made_batch())  # 3 foreground anchors
    assert ema(dense).item() == pytest.approx(0.9 * 100 + 0.1 * 3)
    with pytest.raises(ValueError, match="normalizer_init"):
        head(normalizer_momentum=0.9, normalizer_init=0.0)
    assert "criterion.normaliser.ema" in dense.state_dict()
    assert "criterion.normaliser.ema" not in plain.state_dict()


def test_a_batch_without_objects_gives_a_loss_of_the_same_order_as_a_normal_batch():
    """With the per-batch count (0 foreground -> divisor 1) the background's summed loss becomes the
    whole loss; the EMA keeps the divisor near the usual foreground count."""
    averaged, plain = head(normalizer_momentum=0.9, normalizer_init=3.0), head()
    empty = [target([], []), target([], [])]
    normal = {key: run(plain, hand_made_batch())[key] for key in ("loss_dense_cls",)}
    for _ in range(3):  # a few normal steps first, as in training
        run(averaged, hand_made_batch())
    ema_empty, plain_empty = run(averaged, empty), run(plain, empty)
    for losses in (ema_empty, plain_empty):
        assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_dense_box"] == 0
    # the EMA stayed near 3 (three normal batches of 3 fg anchors, then one of 0): 0.9 * 3 + 0.1 * 1
    assert ema(averaged).item() == pytest.approx(0.9 * 3.0 + 0.1 * 1.0)
    ratio = ema_empty["loss_dense_cls"] / normal["loss_dense_cls"]
    spike = plain_empty["loss_dense_cls"] / normal["loss_dense_cls"]
    assert 0.2 < ratio < 5.0, ratio  # the same order as a normal batch
    assert spike > 2.5 * ratio  # the per-batch count divides by 1 instead of ~2.8


def test_normaliser_is_an_ema_of_the_foreground_count():
    dense = head(normalizer_momentum=0.9, normalizer_init=4.0)
    plain = head()
    dense.eval()  # evaluation divides by the EMA without updating it
    reference, plain_fg = run(plain, hand_made_batch()), plain.last_stats["num_fg"].float()
    for key, value in run(dense, hand_made_batch()).items():
        torch.testing.assert_close(value, reference[key] * plain_fg / 4.0)
    assert ema(dense).item() == 4.0
    dense.train()
    batches = [  # 3, then 1, then 2 foreground anchors
        hand_made_batch(),
        [target([GT_EXACT], [1]), target([], [])],
        [target([GT_EXACT, GT_FAR], [1, 2]), target([], [])],
    ]
    first = 0.9 * 4.0 + 0.1 * 3
    expected = [first, 0.9 * first + 0.1 * 1, 0.9 * (0.9 * first + 0.1 * 1) + 0.1 * 2]
    for batch, normaliser in zip(batches, expected):
        losses = run(dense, batch)
        reference = run(plain, batch)
        num_fg = plain.last_stats["num_fg"].float()
        assert ema(dense).item() == pytest.approx(normaliser)
        for key in losses:
            torch.testing.assert_close(losses[key], reference[key] * num_fg / normaliser)
    dense.eval()  # evaluation reads the EMA without updating it
    run(dense, batches[0])
    assert ema(dense).item() == pytest.approx(expected[-1])
    with pytest.raises(ValueError, match="normalizer_momentum"):
        head(normalizer_momentum=1.0)


def test_config_builds_the_dense_losses_with_their_options():
    overrides = ["model.arch=retinanet", "dense_head.cls_loss=ghm", "dense_head.reg_loss=ghm"]
    cfg = load_config(None, [*overrides, "dense_head.cls_loss.bins=5", "dense_head.normalizer_momentum=0.9"])
    criterion = build_model(cfg, num_classes=2).heads["dense"].criterion
    assert criterion.cls_loss == GHMCLoss(bins=5, momentum=0.75)
    assert (criterion.cls_state.bins, criterion.cls_state.momentum) == (5, 0.75)
    assert criterion.reg_loss == GHMRLoss(mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
    assert criterion.normaliser.momentum == 0.9 and criterion.normaliser.ema is not None
    cfg = load_config("configs/retinanet_balanced_l1.yaml")
    criterion = build_model(cfg, num_classes=2).heads["dense"].criterion
    assert criterion.reg_loss == BalancedL1(alpha=0.5, gamma=1.5, beta=0.11)
    assert criterion.cls_state is None and criterion.reg_state is None
    assert criterion.normaliser.ema.item() == 100.0
    cfg = load_config(None, ["model.arch=retinanet", "dense_head.normalizer_momentum=0"])
    assert build_model(cfg, num_classes=2).heads["dense"].criterion.normaliser.ema is None


def test_label_smoothing_gives_bce_against_smoothed_one_hot_targets():
    targets = hand_made_batch()
    logits, deltas = outputs()
    one_hot = torch.zeros(2, 16, NUM_CLASSES)
    one_hot[0, 0, 0] = one_hot[0, 5, 2] = one_hot[0, 6, 2] = 1.0
    keep = torch.ones(2, 16, dtype=torch.bool)
    keep[1, 15] = False  # ignored
    smoothed = one_hot[keep] * 0.8 + 0.1  # eps 0.2: 1 -> 0.9, 0 -> 0.1
    expected = F.binary_cross_entropy_with_logits(logits[keep], smoothed, reduction="sum") / 3
    dense = head(cls_loss=BCE(alpha=-1.0, label_smoothing=0.2))
    losses = dense.loss(logits, deltas, [tiles(), tiles()], targets)
    torch.testing.assert_close(losses["loss_dense_cls"], expected)


def test_loss_ranking_scores_carry_the_box_weights():
    sampler = TopLoss(IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.4), k=16)
    dense = head(sampler=sampler)
    logits, deltas = outputs(num_images=1)
    dense.loss(logits, deltas, [tiles()], [target([GT_EXACT, GT_FAR], [1, 2])])
    unweighted = sampler.scores[0].clone()
    weighted_target = target([GT_EXACT, GT_FAR], [1, 2], weights=torch.tensor([1.0, 0.0]))
    dense.loss(logits, deltas, [tiles()], [weighted_target])
    weighted = sampler.scores[0]
    assert weighted[3].item() == 0.0 and unweighted[3].item() > 0  # anchor 3 is GT_FAR's (weight 0)
    keep = torch.arange(16) != 3
    torch.testing.assert_close(weighted[keep], unweighted[keep])
