"""`MultiScaleRoIAlign` that pools every pyramid level in one call of hardmine's CPU RoIAlign.

A drop-in subclass of `torchvision.ops.MultiScaleRoIAlign`: the same constructor, attributes and
state, and the same level of each box (torchvision's `LevelMapper`: canonical scale 224 at level 4,
eps 1e-6, from the same lazily set-up scales). Only the pooling kernel differs: on CPU float32 /
float64 features, `hardmine.ops.roi_align.pool_levels` pools the RoIs of all levels at once
(torchvision calls its kernel once per level and copies the results into place). bfloat16 / float16
maps on the CPU (bf16 autocast) are pooled in float32 and the result cast back, as torchvision's
autocast rule for its roi_align does. On any other device or dtype (CUDA included) `forward` is
torchvision's own.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from hardmine.ops.roi_align import pool_levels, runs_here


def _reduced_precision_on_cpu(features: list[Tensor]) -> bool:
    """bfloat16 / float16 maps on the CPU (e.g. under bf16 autocast)."""
    return features[0].device.type == "cpu" and features[0].dtype in (torch.bfloat16, torch.float16)


class MultiScaleRoIAlign(TorchvisionMultiScaleRoIAlign):
    """torchvision's `MultiScaleRoIAlign` with hardmine's RoIAlign kernel on the CPU."""

    @classmethod
    def like(
        cls, pooler: TorchvisionMultiScaleRoIAlign, sampling_ratio: int | None = None
    ) -> MultiScaleRoIAlign:
        """A pooler with the settings (and any set-up scales) of torchvision's `pooler`, e.g. to swap
        it into a torchvision or pretrained detector; `sampling_ratio` replaces the pooler's."""
        twin = cls(
            pooler.featmap_names,
            pooler.output_size,
            pooler.sampling_ratio if sampling_ratio is None else sampling_ratio,
            canonical_scale=pooler.canonical_scale,
            canonical_level=pooler.canonical_level,
        )
        twin.scales, twin.map_levels = pooler.scales, pooler.map_levels
        return twin

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if features and boxes and _reduced_precision_on_cpu(features):
            # As torchvision's autocast rule for roi_align: pool in float32, return the maps' dtype.
            full = {name: x[name].float() for name in self.featmap_names}
            return self.forward(full, [b.float() for b in boxes], image_shapes).to(features[0].dtype)
        if not features or not boxes or not runs_here(features, boxes[0].dtype):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        levels = self.map_levels(boxes) if len(features) > 1 else None
        rois = _convert_to_roi_format(boxes)
        return pool_levels(features, rois, levels, self.scales, self.output_size, self.sampling_ratio, False)
