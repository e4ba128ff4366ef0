"""The precision benchmark's training step (speed itself is measured, not tested)."""

import torch

from benchmarks.common import make_batches, train_steps
from benchmarks.precision import VARIANTS
from hardmine.config import load_config
from hardmine.engine.schedule import build_optimizer
from hardmine.models.build import build_model


def test_every_variant_trains_a_step(synth_dir):
    cfg = load_config(
        "configs/faster_rcnn_tiny.yaml",
        ["model.min_size=[64]", "model.max_size=64", f"data.train={synth_dir / 'train.json'}"],
    )
    batches = make_batches(cfg, 1, 2, torch.device("cpu"))
    assert list(VARIANTS) == ["float32", "channels_last", "bf16", "bf16_channels_last"]
    for channels_last, bf16 in VARIANTS.values():
        torch.manual_seed(0)
        model = build_model(cfg, 3)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        before = [p.detach().clone() for p in model.parameters()]
        assert train_steps(model, build_optimizer(model, cfg.solver), batches, torch.device("cpu"), bf16) > 0
        after = list(model.parameters())
        assert all(torch.isfinite(p).all() for p in after)
        assert any(not torch.equal(a, b) for a, b in zip(before, after))
