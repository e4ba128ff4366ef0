"""hardmine's samplers inside torchvision's own FasterRCNN: the docs example, module reuse, OHEM's
budget and gradients, torchvision-style detections, equivalence with torchvision's head, errors."""

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from hardmine.integrations.torchvision import TorchvisionRoIHead, with_sampler
from hardmine.losses import CrossEntropy
from hardmine.models.backbones import build_backbone
from hardmine.sampling import IoUThresholds, NoSampler, OHEMSampler, RandomSampler

DOC = Path(__file__).resolve().parents[2] / "docs" / "torchvision.md"

#: Two images of different sizes (both resized to 128 px on the short side by the model).
IMAGE_SIZES = [(96, 128), (64, 64)]
TARGETS = [
    {
        "boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0], [70.0, 5.0, 120.0, 40.0]]),
        "labels": torch.tensor([1, 2]),
    },
    {"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([2])},
]


def _model(cls: type[FasterRCNN] = FasterRCNN, **kwargs) -> FasterRCNN:
    """A small torchvision model (tiny backbone, 64-wide box head, 2 classes) with small RPN budgets."""
    torch.manual_seed(0)
    backbone = build_backbone("tiny")
    anchors = AnchorGenerator(backbone.anchor_sizes, ((0.5, 1.0, 2.0),) * len(backbone.anchor_sizes))
    return cls(
        backbone,
        num_classes=None if cls is FasterRCNN else 3,
        min_size=128,
        max_size=128,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=150,
        rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_test=80,
        **({"box_head": TwoMLPHead(64 * 7 * 7, 64), "box_predictor": FastRCNNPredictor(64, 3)} | kwargs),
    )


def _images() -> list[Tensor]:
    torch.manual_seed(1)
    return [torch.rand(3, h, w) for h, w in IMAGE_SIZES]


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    example = [b for b in blocks if "model.train()" in b]
    assert len(example) == 1, "docs/torchvision.md must hold exactly one complete example"
    exec(compile(example[0], str(DOC), "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    assert out.count("OHEM:") == 2 and "'num_selected': 64.0" in out


def test_head_reuses_the_models_modules_and_settings():
    model = _model(box_score_thresh=0.2, box_nms_thresh=0.4, box_detections_per_img=7)
    old = model.roi_heads
    params = [id(p) for p in model.parameters()]
    sampler = OHEMSampler()
    assert with_sampler(model, sampler) is model
    head = model.roi_heads
    assert isinstance(head, TorchvisionRoIHead) and head.sampler is sampler
    assert head.box_roi_pool is old.box_roi_pool
    assert head.box_head is old.box_head
    assert head.box_predictor is old.box_predictor
    assert [id(p) for p in model.parameters()] == params
    assert (head.score_thresh, head.nms_thresh, head.detections_per_img) == (0.2, 0.4, 7)
    assert head.box_coder.weights == old.box_coder.weights


def test_thresholds_come_from_the_model_unless_the_sampler_keeps_its_own():
    model = _model(box_fg_iou_thresh=0.6, box_bg_iou_thresh=0.4)
    assert with_sampler(model, OHEMSampler()).roi_heads.sampler.thresholds == IoUThresholds(0.6, 0.0, 0.4)
    # RandomSampler's own default has bg_lo = 0.1: torchvision's labelling replaces it.
    random = with_sampler(_model(), RandomSampler()).roi_heads.sampler
    assert random.thresholds == IoUThresholds(0.5, 0.0, 0.5)
    chosen = IoUThresholds(fg=0.7, bg_lo=0.1, bg_hi=0.3)
    replaced = with_sampler(_model(), OHEMSampler(thresholds=chosen)).roi_heads.sampler
    assert replaced.thresholds == IoUThresholds(0.5, 0.0, 0.5)
    kept = with_sampler(_model(), OHEMSampler(thresholds=chosen), keep_sampler_thresholds=True)
    assert kept.roi_heads.sampler.thresholds == chosen


def test_options_override_the_models_settings():
    head = with_sampler(_model(), NoSampler(), score_thresh=0.3, cls_loss=CrossEntropy()).roi_heads
    assert head.score_thresh == 0.3


def test_ohem_trains_at_most_b_per_image_and_gradients_reach_box_head_and_backbone():
    batch_size = 8
    model = with_sampler(_model(), OHEMSampler(batch_size_per_image=batch_size))
    rows_with_grad = []
    model.roi_heads.box_head.register_forward_hook(
        lambda module, args, out: rows_with_grad.append(out.shape[0]) if torch.is_grad_enabled() else None
    )
    model.train()
    losses = model(_images(), TARGETS)
    assert {"loss_roi_cls", "loss_roi_box", "loss_objectness", "loss_rpn_box_reg"} == losses.keys()
    stats = model.roi_heads.sampler.last_stats
    assert stats["num_candidates"] > batch_size * len(IMAGE_SIZES)
    assert stats["num_selected"] == batch_size * len(IMAGE_SIZES)
    assert rows_with_grad == [batch_size * len(IMAGE_SIZES)]  # the only box-head pass with autograd
    # The RPN's proposals are detached: the backbone's gradient below comes through RoIAlign alone.
    (losses["loss_roi_cls"] + losses["loss_roi_box"]).backward()
    assert model.roi_heads.box_head.fc6.weight.grad.abs().sum() > 0
    assert model.backbone.body.stem[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.rpn.parameters())


def test_eval_returns_torchvision_detections_in_original_coordinates():
    model = with_sampler(_model(), OHEMSampler()).eval()
    images = _images()
    with torch.no_grad():
        detections = model(images)
        # The same head in the resized frame, without torchvision's postprocess.
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        resized, _ = model.roi_heads(features, proposals, batch.image_sizes)
    assert [d.keys() for d in detections] == [{"boxes", "labels", "scores"}] * 2
    for det, raw, (h, w), (rh, rw) in zip(detections, resized, IMAGE_SIZES, batch.image_sizes):
        assert len(det["boxes"]) > 0
        assert det["labels"].dtype == torch.int64 and set(det["labels"].tolist()) <= {1, 2}
        scale = torch.tensor([w / rw, h / rh, w / rw, h / rh])
        torch.testing.assert_close(det["boxes"], raw["boxes"] * scale)
        assert (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()


def test_same_weights_give_the_same_detections_as_torchvisions_head():
    theirs = _model().eval()
    ours = with_sampler(copy.deepcopy(theirs), NoSampler()).eval()
    images = _images()
    with torch.no_grad():
        expected, actual = theirs(images), ours(images)
    for e, a in zip(expected, actual):
        assert len(e["boxes"]) > 0
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(e[key], a[key]), key


def test_training_losses_match_torchvisions_head_when_both_keep_every_roi():
    # torchvision's random sampler keeps all labelled RoIs when its budget exceeds their number.
    theirs = _model(box_batch_size_per_image=10**6, box_positive_fraction=0.5)
    ours = with_sampler(copy.deepcopy(theirs), NoSampler())
    images = _images()
    with torch.no_grad():
        batch, targets = theirs.transform(images, copy.deepcopy(TARGETS))
        features = theirs.backbone(batch.tensors)
        theirs.rpn.eval()
        proposals, _ = theirs.rpn(batch, features)
    # Shifted copies of the ground truth: foreground and background RoIs besides the random proposals.
    shifts = torch.tensor([[2.0, 2.0, 2.0, 2.0], [6.0, 0.0, 6.0, 0.0], [20.0, 10.0, 20.0, 10.0]])
    proposals = [
        torch.cat([p, (t["boxes"][:, None] + shifts).reshape(-1, 4)]) for p, t in zip(proposals, targets)
    ]
    expected = theirs.roi_heads(features, proposals, batch.image_sizes, targets)[1]
    actual = ours.roi_heads(features, proposals, batch.image_sizes, targets)[1]
    assert ours.roi_heads.last_stats["num_fg"] > sum(len(t["boxes"]) for t in targets)
    torch.testing.assert_close(actual["loss_roi_cls"], expected["loss_classifier"])
    torch.testing.assert_close(actual["loss_roi_box"], expected["loss_box_reg"])


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: _model(MaskRCNN, box_head=None, box_predictor=None), ValueError, "mask head"),
        (lambda: _model(KeypointRCNN, box_head=None, box_predictor=None), ValueError, "keypoint head"),
        (lambda: nn.Linear(2, 2), TypeError, "needs a torchvision.models.detection.FasterRCNN"),
        (lambda: with_sampler(_model(), NoSampler()), TypeError, "already hardmine's RoI head"),
    ],
    ids=["mask_rcnn", "keypoint_rcnn", "not_faster_rcnn", "replaced_twice"],
)
def test_unsupported_models_raise_a_clear_error(build, error: type[Exception], message: str):
    with pytest.raises(error, match=message):
        with_sampler(build(), OHEMSampler())


def test_bad_sampler_or_options_raise_type_errors():
    with pytest.raises(TypeError, match="must be a hardmine Sampler"):
        with_sampler(_model(), BalancedPositiveNegativeSampler(512, 0.25))
    with pytest.raises(TypeError, match="box_head"):
        with_sampler(_model(), OHEMSampler(), box_head=nn.Identity())


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"labels": torch.tensor([1, 2], dtype=torch.int32)}, TypeError, "labels must be of int64"),
        ({"ignore_boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]])}, ValueError, "'ignore_boxes' is not"),
    ],
    ids=["int32_labels", "ignore_boxes"],
)
def test_targets_are_checked(change: dict[str, Tensor], error: type[Exception], message: str):
    model = with_sampler(_model(), OHEMSampler()).train()
    targets = [TARGETS[0] | change, TARGETS[1]]
    with pytest.raises(error, match=message):
        model(_images(), targets)
