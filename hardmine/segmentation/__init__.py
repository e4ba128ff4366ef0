"""Semantic segmentation: per-pixel losses (`pixel_losses`), pixel hard example mining
(`pixel_sampling`: OHEM by threshold with `min_kept`, top-k fraction) and mIoU metrics (`metrics`).

Plain functions and small classes on (logits [N, C + 1, H, W], target [N, H, W] long, 255 ignore);
the segmentation model, its config and its training loop are not here yet (docs/segmentation.md).
"""
