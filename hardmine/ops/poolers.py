"""`MultiScaleRoIAlign` that pools every pyramid level in one call of hardmine's CPU RoIAlign.

A drop-in subclass of `torchvision.ops.MultiScaleRoIAlign`: the same constructor, attributes and
state, and the same level of each box (torchvision's `LevelMapper`: canonical scale 224 at level 4,
eps 1e-6, from the same lazily set-up scales). Only the pooling kernel differs: on CPU float32 /
float64 features, `hardmine.ops.roi_align.pool_levels` pools the RoIs of all levels at once
(torchvision calls its kernel once per level and copies the results into place). On any other
device or dtype (CUDA included) `forward` is torchvision's own.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from hardmine.ops.roi_align import pool_levels, runs_here


class MultiScaleRoIAlign(TorchvisionMultiScaleRoIAlign):
    """torchvision's `MultiScaleRoIAlign` with hardmine's RoIAlign kernel on the CPU."""

    @classmethod
    def like(cls, pooler: TorchvisionMultiScaleRoIAlign) -> MultiScaleRoIAlign:
        """A pooler with the settings (and any set-up scales) of torchvision's `pooler`, e.g. to swap
        it into a torchvision or pretrained detector."""
        twin = cls(
            pooler.featmap_names,
            pooler.output_size,
            pooler.sampling_ratio,
            canonical_scale=pooler.canonical_scale,
            canonical_level=pooler.canonical_level,
        )
        twin.scales, twin.map_levels = pooler.scales, pooler.map_levels
        return twin

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if not features or not boxes or not runs_here(features, boxes[0].dtype):
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        levels = self.map_levels(boxes) if len(features) > 1 else None
        rois = _convert_to_roi_format(boxes)
        return pool_levels(features, rois, levels, self.scales, self.output_size, self.sampling_ratio, False)
