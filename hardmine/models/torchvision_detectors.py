"""torchvision's COCO-pretrained detectors as starting points (`model.torchvision_detector`).

The architecture is torchvision's. Each entry of `TORCHVISION_DETECTORS` builds its detector's
modules with torchvision's own blocks as its builder in `torchvision.models.detection` does (same
backbone extractor, FPN extra levels, anchors, RPN head, RoI pooler, box head or RetinaNet head,
`trainable_layers` frozen stages), loads the COCO weights into them and hands them to hardmine's
detector classes, which take torchvision modules. Samplers, losses, resizing and the solver still
come from hardmine's config; only the class-specific layers (the RoI head's predictor, RetinaNet's
class logits) are new, sized for the user's classes.

The weights come from the local torch hub cache only, under the file name of the weights enum's URL
(`hardmine.weights.weights_path`); nothing downloads, and a missing file is a `ConfigError` that
says where it belongs and where to get it. The file is read with `torch.load(weights_only=True)`
and compared with the freshly built detector: any missing, unexpected or mis-shaped key, another
number of classes than COCO's 91, or a file that is not a state dict is a `CheckpointError` naming
the file and what differs. torchvision's own loader is not used: its hash check would refuse any
file but the original, and it downloads when the file is missing.

Two choices differ from torchvision's builders, both for fine-tuning with small batches:

* the ResNet-50 body of the v2 detectors uses frozen BatchNorm like every other backbone here
  (torchvision's v2 builders keep trainable BatchNorm there, whose statistics a 2-image batch would
  replace); their FPN and box head keep torchvision's BatchNorm, as they are trained anyway;
* the RPN and the heads are hardmine's, so proposal counts, thresholds and losses are the config's
  (torchvision's MobileNet detectors also drop proposals scoring below 0.05; hardmine keeps them).

The v1 ResNet-50 files were trained with frozen BatchNorm of eps 0; as in torchvision, that eps is
set after loading them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.models import WeightsEnum, mobilenet_v3_large, resnet50
from torchvision.models.detection import (
    FasterRCNN,
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    FasterRCNN_MobileNet_V3_Large_FPN_Weights,
    FasterRCNN_ResNet50_FPN_V2_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
    RetinaNet_ResNet50_FPN_V2_Weights,
    RetinaNet_ResNet50_FPN_Weights,
    faster_rcnn,
    retinanet,
)
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    _mobilenet_extractor,
    _resnet_fpn_extractor,
)
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from hardmine.errors import CheckpointError, ConfigError
from hardmine.models.dense_head import DenseHead
from hardmine.weights import ensure_weights_available, read_state_dict, state_dict_mismatch

#: Outputs of the class-specific layers of torchvision's COCO detectors: the 90 category ids of
#: COCO's annotation files (80 used, 10 unused) and the background.
COCO_NUM_CLASSES = 91

#: The class-specific layers in torchvision's Faster R-CNN state dicts -> their outputs per class.
FASTER_RCNN_CLASS_LAYERS = {
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
}
#: RetinaNet's class-specific layer (its outputs per class: the anchors per location).
RETINANET_CLASS_LAYER = "head.classification_head.cls_logits.weight"

TorchvisionModel = FasterRCNN | RetinaNet


@dataclass(frozen=True)
class TorchvisionDetector:
    """One of torchvision's COCO detectors: its weights, how its modules are built, what it fixes."""

    arch: str  #: hardmine's `model.arch` for it
    weights: WeightsEnum
    #: trainable_layers -> torchvision's detector for COCO's 91 classes, randomly initialised
    build: Callable[[int], TorchvisionModel]
    anchors: Callable[[], AnchorGenerator]  #: its anchors (also built into `build`'s model)
    backbone: str  #: the `model.backbone` of the same network (config files may name it)
    max_trainable_layers: int  #: stages of its backbone (`model.trainable_layers` counts them from the top)
    head_norm: str = "none"  #: RetinaNet: the head towers' normalisation (`dense_head.head_norm`)
    zero_eps: bool = False  #: trained with frozen BatchNorm eps 0 (torchvision's v1 ResNet-50 files)

    def fixed_options(self) -> dict[str, object]:
        """The config keys whose value this detector fixes -> its value."""
        anchors = self.anchors()
        options: dict[str, object] = {
            "model.backbone": self.backbone,
            "model.pretrained": True,
            "model.fpn_channels": 256,
            "model.anchor_sizes": [list(sizes) for sizes in anchors.sizes],
            "model.aspect_ratios": list(anchors.aspect_ratios[0]),
        }
        if self.arch == "retinanet":
            return {**options, "dense_head.num_convs": 4, "dense_head.head_norm": self.head_norm}
        return {
            **options,
            "roi_head.representation_size": 1024,
            "roi_head.roi_output_size": 7,
            "roi_head.sampling_ratio": 2,
        }


def _resnet50_fpn(trainable_layers: int, **fpn: Any) -> BackboneWithFPN:
    """ResNet-50 with frozen BatchNorm and torchvision's FPN extractor (`fpn`: its options)."""
    return _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), trainable_layers, **fpn)


def _mobilenet_anchors() -> AnchorGenerator:
    """torchvision's anchors for its MobileNetV3 detectors: 5 sizes on each of the 3 levels."""
    return AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)


def _fasterrcnn_resnet50_fpn(trainable_layers: int) -> FasterRCNN:
    anchors = faster_rcnn._default_anchorgen()
    return FasterRCNN(_resnet50_fpn(trainable_layers), COCO_NUM_CLASSES, rpn_anchor_generator=anchors)


def _fasterrcnn_resnet50_fpn_v2(trainable_layers: int) -> FasterRCNN:
    backbone = _resnet50_fpn(trainable_layers, norm_layer=nn.BatchNorm2d)
    anchors = faster_rcnn._default_anchorgen()
    rpn_head = RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=2)
    box_head = FastRCNNConvFCHead(
        (backbone.out_channels, 7, 7), [256, 256, 256, 256], [1024], norm_layer=nn.BatchNorm2d
    )
    return FasterRCNN(
        backbone, COCO_NUM_CLASSES, rpn_anchor_generator=anchors, rpn_head=rpn_head, box_head=box_head
    )


def _fasterrcnn_mobilenet_v3_large_fpn(trainable_layers: int) -> FasterRCNN:
    """Both MobileNetV3 detectors (full-size and 320): they differ only in torchvision's test settings."""
    backbone = _mobilenet_extractor(mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, trainable_layers)
    return FasterRCNN(backbone, COCO_NUM_CLASSES, rpn_anchor_generator=_mobilenet_anchors())


def _retinanet_resnet50_fpn(trainable_layers: int) -> RetinaNet:
    backbone = _resnet50_fpn(
        trainable_layers, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
    )
    return RetinaNet(backbone, COCO_NUM_CLASSES, anchor_generator=retinanet._default_anchorgen())


def _retinanet_resnet50_fpn_v2(trainable_layers: int) -> RetinaNet:
    extra = LastLevelP6P7(2048, 256)
    backbone = _resnet50_fpn(trainable_layers, returned_layers=[2, 3, 4], extra_blocks=extra)
    anchors = retinanet._default_anchorgen()
    head = RetinaNetHead(
        backbone.out_channels,
        anchors.num_anchors_per_location()[0],
        COCO_NUM_CLASSES,
        norm_layer=partial(nn.GroupNorm, 32),
    )
    return RetinaNet(backbone, COCO_NUM_CLASSES, anchor_generator=anchors, head=head)


_RESNET = {"backbone": "resnet50_fpn", "max_trainable_layers": 5}
_MOBILENET = {
    "build": _fasterrcnn_mobilenet_v3_large_fpn,
    "anchors": _mobilenet_anchors,
    "backbone": "mobilenet_v3_fpn",
    "max_trainable_layers": 6,
}

#: `model.torchvision_detector` name (torchvision's builder name) -> detector.
TORCHVISION_DETECTORS: dict[str, TorchvisionDetector] = {
    "fasterrcnn_resnet50_fpn": TorchvisionDetector(
        "faster_rcnn",
        FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
        _fasterrcnn_resnet50_fpn,
        faster_rcnn._default_anchorgen,
        zero_eps=True,
        **_RESNET,
    ),
    "fasterrcnn_resnet50_fpn_v2": TorchvisionDetector(
        "faster_rcnn",
        FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
        _fasterrcnn_resnet50_fpn_v2,
        faster_rcnn._default_anchorgen,
        **_RESNET,
    ),
    "fasterrcnn_mobilenet_v3_large_fpn": TorchvisionDetector(
        "faster_rcnn", FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1, **_MOBILENET
    ),
    "fasterrcnn_mobilenet_v3_large_320_fpn": TorchvisionDetector(
        "faster_rcnn", FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1, **_MOBILENET
    ),
    "retinanet_resnet50_fpn": TorchvisionDetector(
        "retinanet",
        RetinaNet_ResNet50_FPN_Weights.COCO_V1,
        _retinanet_resnet50_fpn,
        retinanet._default_anchorgen,
        zero_eps=True,
        **_RESNET,
    ),
    "retinanet_resnet50_fpn_v2": TorchvisionDetector(
        "retinanet",
        RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1,
        _retinanet_resnet50_fpn_v2,
        retinanet._default_anchorgen,
        head_norm="group",
        **_RESNET,
    ),
}


def check_torchvision_detector(config: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """ConfigError unless the config (`Config.to_dict()`) fits its `model.torchvision_detector`.

    The model family must be the detector's, `model.trainable_layers` within its stages, and every
    option the detector fixes (`TorchvisionDetector.fixed_options`) at its default (`defaults`, the
    default config's dict) or at the detector's own value: a silently ignored value would mislead.
    """
    name = config["model"]["torchvision_detector"]
    detector = TORCHVISION_DETECTORS[name]
    arch = config["model"]["arch"]
    if arch != detector.arch:
        raise ConfigError(
            f"model.torchvision_detector={name} is a {detector.arch} detector; it needs "
            f"model.arch={detector.arch}, got model.arch={arch}"
        )
    layers = config["model"]["trainable_layers"]
    if not 0 <= layers <= detector.max_trainable_layers:
        raise ConfigError(
            f"model.trainable_layers: {name} has {detector.max_trainable_layers} backbone stages; "
            f"choose 0 to {detector.max_trainable_layers}, got {layers}"
        )
    for key, own in detector.fixed_options().items():
        section, option = key.split(".")
        value = config[section][option]
        if value not in (defaults[section][option], own):
            raise ConfigError(
                f"{key}={value!r}: model.torchvision_detector={name} fixes it to {own!r}; "
                f"leave {key} at its default or set it to {own!r}"
            )


@dataclass
class PretrainedModules:
    """A torchvision detector's modules with its COCO weights, for hardmine's detector classes.

    Two-stage detectors use `rpn_head`, `box_roi_pool` and `box_head` (whose output has
    `box_head_features` values, the input of the new class-specific predictor); RetinaNet uses
    `dense_head` through `init_dense_head`. The backbone carries `feature_names` and `anchor_sizes`
    like hardmine's own backbones.
    """

    name: str
    backbone: BackboneWithFPN
    anchor_generator: AnchorGenerator
    rpn_head: RPNHead | None = None
    box_roi_pool: MultiScaleRoIAlign | None = None
    box_head: nn.Module | None = None
    box_head_features: int = 0
    dense_head: RetinaNetHead | None = None

    def init_dense_head(self, head: DenseHead) -> None:
        """Give hardmine's dense head the COCO towers and box regression; its class logits (for the
        user's classes, with the prior-probability bias) stay its own."""
        if self.dense_head is None:
            raise ValueError(f"{self.name} is not a RetinaNet; it has no dense head")
        head.classification.conv = self.dense_head.classification_head.conv
        head.regression = self.dense_head.regression_head


def load_torchvision_detector(name: str, trainable_layers: int) -> PretrainedModules:
    """The modules of torchvision's detector `name` with its COCO weights from the torch hub cache.

    `trainable_layers` backbone stages, counted from the top, train; the others are frozen.
    Raises ConfigError when the file is not cached, CheckpointError when it does not fit.
    """
    if name not in TORCHVISION_DETECTORS:
        raise ConfigError(
            f"unknown torchvision detector {name!r}; choose from {', '.join(TORCHVISION_DETECTORS)}"
        )
    detector = TORCHVISION_DETECTORS[name]
    path = ensure_weights_available(
        detector.weights, instead="train without it: model.torchvision_detector=''"
    )
    state = read_state_dict(path, f"{name}'s COCO weights")
    model = detector.build(trainable_layers)
    _check_fits(state, model, name, path)
    model.load_state_dict(state)
    if detector.zero_eps:
        overwrite_eps(model, 0.0)
    backbone = model.backbone
    # hardmine's backbone attributes: the FPN levels (the extra ones excluded) and the anchor sizes.
    backbone.feature_names = list(backbone.body.return_layers.values())
    if isinstance(model, RetinaNet):
        backbone.anchor_sizes = model.anchor_generator.sizes
        return PretrainedModules(name, backbone, model.anchor_generator, dense_head=model.head)
    rpn, roi_heads = model.rpn, model.roi_heads
    backbone.anchor_sizes = rpn.anchor_generator.sizes
    return PretrainedModules(
        name,
        backbone,
        rpn.anchor_generator,
        rpn_head=rpn.head,
        box_roi_pool=roi_heads.box_roi_pool,
        box_head=roi_heads.box_head,
        box_head_features=roi_heads.box_predictor.cls_score.in_features,
    )


def _check_fits(state: Mapping[str, Any], model: TorchvisionModel, name: str, path: Path) -> None:
    """CheckpointError naming `path` unless `state` is the state dict of `model` (COCO's classes)."""
    expected = model.state_dict()
    per_class = dict(FASTER_RCNN_CLASS_LAYERS)
    if isinstance(model, RetinaNet):
        per_class = {RETINANET_CLASS_LAYER: model.head.classification_head.num_anchors}
    for key, outputs in per_class.items():
        if key in state and key in expected and state[key].shape[1:] == expected[key].shape[1:]:
            rows = state[key].shape[0]
            if rows != expected[key].shape[0] and rows % outputs == 0:
                layer = key.removesuffix(".weight")
                raise CheckpointError(
                    f"{path}: not torchvision's COCO weights for {name}: its class-specific layer {layer} "
                    f"is for {rows // outputs} classes, expected {COCO_NUM_CLASSES} (COCO's 90 category ids "
                    f"and the background). A fine-tuned model saved under this name? The file must be "
                    f"the one at {TORCHVISION_DETECTORS[name].weights.url}"
                )
    # Frozen BatchNorm drops the batch counters that files saved from trainable BatchNorm carry.
    counters = {k for k in state if k.endswith(".num_batches_tracked") and k not in expected}
    differences = state_dict_mismatch(expected, {k: v for k, v in state.items() if k not in counters}, 5)
    if differences:
        raise CheckpointError(
            f"{path}: does not fit torchvision's {name} (a file of another architecture?); "
            + "; ".join(differences)
        )
