"""Sampling-free training in the three heads: guided scaling, bias init, class-adaptive thresholds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from hardmine.config import load_config
from hardmine.data.records import ImageRecord
from hardmine.engine.dataset_priors import _probe
from hardmine.errors import ConfigError
from hardmine.models.build import build_model
from hardmine.models.priors import AssignmentCounts, count_assignments, sigmoid_prior_bias

CONFIGS = "configs"
SMALL = [
    "model.min_size=128",
    "model.max_size=128",
    "rpn.pre_nms_top_n_train=200",
    "rpn.post_nms_top_n_train=100",
]
COUNTS = AssignmentCounts(num_fg=10, num_bg=990, gt_per_class=(30, 10))


def sampling_free(arch: str, *extra: str):
    cfg = load_config(f"{CONFIGS}/{arch}_sampling_free.yaml", [*SMALL, *extra])
    torch.manual_seed(0)
    return cfg, build_model(cfg, num_classes=2)


def batch(with_objects: bool = True) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 96, 128, generator=g)]
    boxes = [[10.0, 10.0, 50.0, 60.0], [60.0, 20.0, 120.0, 80.0]] if with_objects else []
    targets = [
        {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor([1, 2][: len(boxes)])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return images, targets


@pytest.mark.parametrize(
    ("arch", "pairs"),
    [
        ("retinanet", [("loss_dense_cls", "loss_dense_box", 1.0)]),
        # the authors' factors: 1 in the RPN, 2 in the RoI head
        ("faster_rcnn", [("loss_rpn_cls", "loss_rpn_box", 1.0), ("loss_roi_cls", "loss_roi_box", 2.0)]),
    ],
)
def test_guided_scaling_makes_each_cls_loss_its_multiple_of_the_box_loss(arch, pairs):
    _, model = sampling_free(arch)
    model.train()
    losses = model(*batch())
    for cls, box, factor in pairs:
        assert losses[box] > 0
        torch.testing.assert_close(losses[cls], factor * losses[box])
    sum(losses.values()).backward()
    cls_layer = (
        model.head.classification.cls_logits
        if arch == "retinanet"
        else model.roi_head.box_predictor.cls_score
    )
    assert cls_layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["retinanet", "faster_rcnn"])
def test_batch_without_objects_gives_finite_zero_losses(arch):
    _, model = sampling_free(arch)
    model.train()
    losses = model(*batch(with_objects=False))
    assert all(torch.isfinite(v) and v == 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_without_guided_scaling_the_losses_differ():
    _, model = sampling_free("retinanet", "dense_head.guided_loss=0")
    model.train()
    losses = model(*batch())
    assert not math.isclose(losses["loss_dense_cls"].item(), losses["loss_dense_box"].item(), rel_tol=1e-3)


@pytest.mark.parametrize("arch", ["retinanet", "faster_rcnn"])
def test_counting_reproduces_the_labels_of_a_training_step(arch):
    """Counting from annotations alone labels exactly the candidates a training forward labels."""
    cfg, model = sampling_free(arch)
    model.train()
    images, targets = batch()
    model(images[:1], targets[:1])
    record = ImageRecord(
        1, "a.png", 128, 96, boxes=targets[0]["boxes"].numpy(), labels=targets[0]["labels"].numpy()
    )
    heads = ["dense"] if arch == "retinanet" else ["rpn"]  # the RoI head's RoIs are the RPN's output
    for name in heads:
        counts = count_assignments([record], _probe(model, name), 2, cfg.model.min_size, cfg.model.max_size)
        stats = model.heads[name].last_stats
        assert (counts.num_fg, counts.num_bg) == (int(stats["num_fg"]), int(stats["num_bg"])), name
        assert counts.num_fg > 0


def test_dense_head_bias_and_thresholds_from_counts():
    _, model = sampling_free("retinanet")
    applied = model.head.apply_priors(COUNTS, bias=True, thresholds=True)
    bias = model.head.classification.cls_logits.bias
    torch.testing.assert_close(bias, torch.full_like(bias, sigmoid_prior_bias(0.005)))
    torch.testing.assert_close(model.head.class_score_thresh, torch.tensor([0.0075, 0.0025]))
    assert applied["prior"] == 0.005
    assert "head.class_score_thresh" in model.state_dict()  # checkpoints carry the thresholds


def test_rpn_bias_and_roi_softmax_bias_from_counts():
    _, model = sampling_free("faster_rcnn")
    model.rpn.apply_priors(AssignmentCounts(1, 99, (1, 1)), bias=True, thresholds=False)
    bias = model.rpn.head.cls_logits.bias
    torch.testing.assert_close(torch.sigmoid(bias), torch.full_like(bias, 0.01))
    with pytest.raises(ValueError, match="no class scores"):
        model.rpn.apply_priors(COUNTS, bias=True, thresholds=True)
    model.roi_head.apply_priors(COUNTS, bias=True, thresholds=True)
    torch.testing.assert_close(
        torch.softmax(model.roi_head.box_predictor.cls_score.bias, 0), torch.tensor([0.99, 0.005, 0.005])
    )
    torch.testing.assert_close(model.roi_head.class_score_thresh, torch.tensor([0.0075, 0.0025]))


def test_retinanet_inference_uses_the_per_class_thresholds():
    overrides = ["model.arch=retinanet", "model.min_size=64", "model.max_size=64"]
    cfg = load_config(None, [*overrides, "dense_head.class_adaptive_thresh=true"])
    model = build_model(cfg, num_classes=2).eval()
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0], [32.0, 32.0, 48.0, 48.0]])
    logits = torch.logit(torch.tensor([[[0.5, 0.3], [0.02, 0.04]]]))  # [1 image, 2 anchors, 2 classes]
    deltas = torch.zeros(1, 2, 4)

    def detect() -> list[tuple[int, float]]:
        out = model.postprocess(logits, deltas, [anchors], [2], [(64, 64)])[0]
        return sorted(zip(out["labels"].tolist(), [round(s, 3) for s in out["scores"].tolist()]))

    with pytest.raises(RuntimeError, match="thresholds were never computed"):
        detect()
    model.head.class_score_thresh.copy_(torch.tensor([0.6, 0.03]))
    assert detect() == [(2, 0.04), (2, 0.3)]  # class 1 needs 0.6 (0.5 and 0.02 fall short)
    model.head.class_score_thresh.copy_(torch.tensor([0.01, 0.5]))
    assert detect() == [(1, 0.02), (1, 0.5)]


def test_roi_head_inference_uses_the_per_class_thresholds():
    _, model = sampling_free("faster_rcnn")
    head = model.roi_head.eval()
    proposals = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [40.0, 40.0, 60.0, 60.0]])]
    probs = torch.tensor([[0.45, 0.5, 0.05], [0.9, 0.02, 0.08]])
    deltas = torch.zeros(2, 12)
    with pytest.raises(RuntimeError, match="thresholds were never computed"):
        head._postprocess(probs.log(), deltas, proposals, [(64, 64)])
    head.class_score_thresh.copy_(torch.tensor([0.1, 0.06]))
    out = head._postprocess(probs.log(), deltas, proposals, [(64, 64)])[0]
    assert sorted(zip(out["labels"].tolist(), [round(s, 3) for s in out["scores"].tolist()])) == [
        (1, 0.5),
        (2, 0.08),
    ]


def test_default_heads_have_no_threshold_buffer_so_old_checkpoints_load():
    cfg = load_config(f"{CONFIGS}/retinanet_tiny.yaml", SMALL)
    assert not any("class_score_thresh" in k for k in build_model(cfg, 2).state_dict())
    cfg = load_config(f"{CONFIGS}/faster_rcnn_tiny.yaml", SMALL)
    assert not any("class_score_thresh" in k for k in build_model(cfg, 2).state_dict())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rpn.guided_loss=-1", "rpn.guided_loss: must be >= 0"),
        ("roi_head.bias_init=zeros", "roi_head.bias_init"),
    ],
)
def test_bad_options_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(f"{CONFIGS}/retinanet_sampling_free.yaml", [override])
