"""Feature-pyramid backbones for the detectors, all built as torchvision `BackboneWithFPN`s.

Every backbone maps an image batch [N, 3, H, W] to an OrderedDict of FPN levels ("0", "1", ...,
"pool", the last one a max-pooled extra level) and carries three attributes the heads need:

* `out_channels`: channels of every level;
* `feature_names`: the levels RoI pooling uses (all but "pool");
* `anchor_sizes`: default anchor sizes, one tuple per returned level, "pool" included.

The default anchors suit small objects (the built-in dataset has 8-96 px objects): 12 and 18 px on
the finest level, doubling on each coarser one. On the tiny backbone (strides 8-64) this gives
82% of such objects at least one anchor at IoU >= 0.5, against 55% for (8, 12) px anchors, with
the same anchor count. Datasets with larger objects should set their own sizes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial

from torch import nn
from torchvision.models import (
    MobileNet_V2_Weights,
    MobileNet_V3_Large_Weights,
    ResNet18_Weights,
    ResNet50_Weights,
    WeightsEnum,
    mobilenet_v2,
    mobilenet_v3_large,
    resnet18,
    resnet50,
)
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d

from hardmine.errors import ConfigError
from hardmine.weights import ensure_weights_available

#: Signature of a backbone builder: (pretrained, trainable_layers, fpn_channels) -> backbone.
BackboneBuilder = Callable[[bool, int, int | None], BackboneWithFPN]

#: FPN width of the torchvision backbones (torchvision's detection models use 256).
DEFAULT_FPN_CHANNELS = 256


def build_backbone(
    name: str, pretrained: bool = False, trainable_layers: int = 3, fpn_channels: int | None = None
) -> BackboneWithFPN:
    """Build the backbone `name` (a key of `BACKBONES`).

    pretrained:       load ImageNet weights from the local torch hub cache (see `hardmine.weights`).
    trainable_layers: with pretrained weights, how many stages, counted from the top, are trained;
                      the rest is frozen. A randomly initialised backbone trains all its layers (and
                      uses BatchNorm instead of frozen BatchNorm), as torchvision's builders do.
    fpn_channels:     FPN width; None (or 0) for the backbone's default (64 for "tiny", else 256).
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](pretrained, trainable_layers, fpn_channels)


def default_anchor_sizes(num_levels: int) -> tuple[tuple[int, ...], ...]:
    """(12, 18) px anchors on the finest level, doubling on each coarser level."""
    return tuple((12 << level, 18 << level) for level in range(num_levels))


def _pyramid(
    body: nn.Module, return_layers: dict[str, str], in_channels: list[int], fpn_channels: int
) -> BackboneWithFPN:
    """FPN over the `return_layers` of `body` plus a max-pool level, with the attributes heads need."""
    backbone = BackboneWithFPN(
        body, return_layers, in_channels, fpn_channels, extra_blocks=LastLevelMaxPool()
    )
    backbone.feature_names = list(return_layers.values())
    backbone.anchor_sizes = default_anchor_sizes(len(return_layers) + 1)
    return backbone


def _freeze(stages: Sequence[nn.Module], trainable_layers: int) -> None:
    """Freeze all but the last `trainable_layers` stages (listed input first)."""
    if not 0 <= trainable_layers <= len(stages):
        raise ConfigError(
            f"trainable_layers must be in [0, {len(stages)}] for this backbone, got {trainable_layers}"
        )
    for stage in stages[: len(stages) - trainable_layers]:
        stage.requires_grad_(False)


def _norm_layer(pretrained: bool) -> Callable[..., nn.Module]:
    """Frozen BatchNorm keeps ImageNet statistics; a model trained from scratch needs real BatchNorm."""
    return FrozenBatchNorm2d if pretrained else nn.BatchNorm2d


def _load_weights(weights: WeightsEnum, pretrained: bool) -> WeightsEnum | None:
    """`weights` if pretrained (after checking the file is cached, so nothing downloads), else None."""
    if not pretrained:
        return None
    ensure_weights_available(weights)
    return weights


class TinyNet(nn.Sequential):
    """A small conv-BN-ReLU network for CPU training: outputs at strides 8 ("c3"), 16 ("c4"), 32 ("c5").

    Each stage is a stride-2 3x3 conv followed by one stride-1 3x3 conv. With its FPN it costs about
    50 ms forward + backward for two 320x320 images on a 2-core CPU.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96, 128)) -> None:
        stem, c2, c3, c4, c5 = widths
        super().__init__(
            OrderedDict(
                stem=nn.Sequential(Conv2dNormActivation(3, stem, 3, 2), Conv2dNormActivation(stem, c2, 3, 2)),
                c3=self._stage(c2, c3),
                c4=self._stage(c3, c4),
                c5=self._stage(c4, c5),
            )
        )
        self.stage_channels = [c3, c4, c5]

    @staticmethod
    def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
        return nn.Sequential(
            Conv2dNormActivation(in_channels, out_channels, 3, 2),
            Conv2dNormActivation(out_channels, out_channels, 3, 1),
        )


def tiny_fpn(pretrained: bool, trainable_layers: int, fpn_channels: int | None) -> BackboneWithFPN:
    """`TinyNet` + FPN (default 64 channels): levels at strides 8, 16, 32, pool at 64. Never pretrained."""
    if pretrained:
        raise ConfigError("backbone 'tiny' has no pretrained weights; set model.pretrained=false")
    body = TinyNet()
    return_layers = {"c3": "0", "c4": "1", "c5": "2"}
    return _pyramid(body, return_layers, body.stage_channels, fpn_channels or 64)


def resnet_fpn(
    pretrained: bool,
    trainable_layers: int,
    fpn_channels: int | None,
    *,
    arch: Callable[..., nn.Module],
    weights: WeightsEnum,
) -> BackboneWithFPN:
    """ResNet + FPN on layer1..layer4: levels at strides 4, 8, 16, 32 and pool at 64.

    trainable_layers in [0, 5] counts layer4, layer3, layer2, layer1, stem (as in torchvision).
    """
    net = arch(weights=_load_weights(weights, pretrained), norm_layer=_norm_layer(pretrained))
    stages = [nn.ModuleList([net.conv1, net.bn1]), net.layer1, net.layer2, net.layer3, net.layer4]
    _freeze(stages, trainable_layers if pretrained else len(stages))
    return_layers = {f"layer{k}": str(k - 1) for k in range(1, 5)}
    # After construction `inplanes` is layer4's width; layer1..layer4 double from an eighth of it.
    in_channels = [net.inplanes // 8 * 2**i for i in range(4)]
    return _pyramid(net, return_layers, in_channels, fpn_channels or DEFAULT_FPN_CHANNELS)


def mobilenet_fpn(
    pretrained: bool,
    trainable_layers: int,
    fpn_channels: int | None,
    *,
    arch: Callable[..., nn.Module],
    weights: WeightsEnum,
) -> BackboneWithFPN:
    """MobileNet (v2 / v3) features + FPN on the last block at strides 8, 16 and 32, pool at 64.

    Stages are split as in torchvision's `mobilenet_backbone` (at the stem, at every strided block and
    at the final 1x1 conv); trainable_layers in [0, number of stages] counts them from the top.
    """
    features = arch(weights=_load_weights(weights, pretrained), norm_layer=_norm_layer(pretrained)).features
    strided = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    starts = [0, *strided, len(features) - 1]
    stages = [features[a:b] for a, b in zip(starts, [*starts[1:], len(features)])]
    _freeze(stages, trainable_layers if pretrained else len(stages))
    # The last block before each strided one ends a resolution; keep strides 8, 16 and 32.
    ends = [i - 1 for i in strided[-2:]] + [len(features) - 1]
    return_layers = {str(end): str(level) for level, end in enumerate(ends)}
    in_channels = [features[end].out_channels for end in ends]
    return _pyramid(features, return_layers, in_channels, fpn_channels or DEFAULT_FPN_CHANNELS)


#: Config / CLI name -> backbone builder.
BACKBONES: dict[str, BackboneBuilder] = {
    "tiny": tiny_fpn,
    "mobilenet_v2_fpn": partial(mobilenet_fpn, arch=mobilenet_v2, weights=MobileNet_V2_Weights.IMAGENET1K_V1),
    "mobilenet_v3_fpn": partial(
        mobilenet_fpn, arch=mobilenet_v3_large, weights=MobileNet_V3_Large_Weights.IMAGENET1K_V1
    ),
    "resnet18_fpn": partial(resnet_fpn, arch=resnet18, weights=ResNet18_Weights.IMAGENET1K_V1),
    "resnet50_fpn": partial(resnet_fpn, arch=resnet50, weights=ResNet50_Weights.IMAGENET1K_V1),
}
