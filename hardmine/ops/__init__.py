"""Hand-written replacements of torchvision ops, each with a measured reason in docs/BENCHMARKS.md."""

from hardmine.ops.poolers import MultiScaleRoIAlign
from hardmine.ops.roi_align import roi_align

__all__ = ["MultiScaleRoIAlign", "roi_align"]
