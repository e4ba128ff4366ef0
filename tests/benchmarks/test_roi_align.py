"""The RoIAlign benchmark's inputs and timing code (speed itself is measured, not tested)."""

import torch
from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign

from benchmarks.roi_align import BATCH, IMAGE_SIZE, case_timings, make_boxes, make_features
from hardmine.ops import MultiScaleRoIAlign


def test_boxes_are_split_over_the_batch_and_lie_in_the_image():
    boxes = make_boxes(2001, torch.Generator().manual_seed(0))
    assert [len(b) for b in boxes] == [1001, 1000]
    for b in boxes:
        assert b.min() >= 0 and b.max() <= IMAGE_SIZE
        assert (b[:, 2:] >= b[:, :2]).all()


def test_features_are_the_tiny_presets_pyramid():
    features = make_features(4, torch.Generator().manual_seed(0))
    assert [tuple(f.shape) for f in features.values()] == [
        (BATCH, 4, 40, 40),
        (BATCH, 4, 20, 20),
        (BATCH, 4, 10, 10),
    ]


def test_every_timing_runs_for_both_poolers():
    generator = torch.Generator().manual_seed(0)
    features, boxes = make_features(2, generator), make_boxes(30, generator)
    kinds = ("forward", "backward", "forward+backward")
    for pooler in (
        TorchvisionMultiScaleRoIAlign(list(features), 7, 2),
        MultiScaleRoIAlign(list(features), 7, 2),
    ):
        for chunk in (None, 8):
            timings = case_timings(pooler, features, boxes, chunk, kinds, repeats=1)
            assert set(timings) == set(kinds) and all(t > 0 for t in timings.values())
