"""Semantic segmentation: per-pixel losses (`pixel_losses`), pixel hard example mining
(`pixel_sampling`: OHEM by threshold with `min_kept`, top-k fraction) and mIoU metrics (`metrics`).

Plain functions and small classes on (logits [N, C + 1, H, W], target [N, H, W] long, 255 ignore);
and the model trained on them (`model`, built from the config by `build`), its training dataset
(`dataset`) and its evaluation (`evaluation`); the engine trains it (`hardmine.engine.tasks`,
docs/segmentation.md).
"""
