"""The segmentation model: its targets at the input size (nearest, 255 padding), one training step,
predictions at each image's original size, the pixel diagnostics, and its build from the config."""

import pytest
import torch

from hardmine.config import load_config
from hardmine.errors import ConfigError
from hardmine.models.build import build_model
from hardmine.segmentation.model import SegmentationModel, batch_masks, upsample_to
from hardmine.segmentation.pixel_losses import ClassBalancedCrossEntropy, ClassPixelCounts
from hardmine.segmentation.pixel_sampling import OhemThreshold, OhemTopK

SMALL = ["model.min_size=64", "model.max_size=64"]


def _targets(*shapes: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
            "mask": torch.randint(0, 3, shape, generator=gen, dtype=torch.uint8),
            "image_id": torch.tensor(i),
        }
        for i, shape in enumerate(shapes)
    ]


def test_batch_masks_resizes_by_nearest_and_pads_with_255() -> None:
    mask = torch.tensor([[1, 2], [3, 255]], dtype=torch.uint8)
    out = batch_masks([{"mask": mask}, {"mask": mask[:1]}], [(4, 4), (1, 2)], (4, 5))
    expected = torch.tensor(
        [
            [[1, 1, 2, 2, 255], [1, 1, 2, 2, 255], [3, 3, 255, 255, 255], [3, 3, 255, 255, 255]],
            [[1, 2, 255, 255, 255], [255] * 5, [255] * 5, [255] * 5],
        ]
    )
    assert out.dtype == torch.int64
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="target 0 has no 'mask'"):
        batch_masks([{}], [(1, 1)], (1, 1))


def test_upsample_to_keeps_a_tensor_of_that_size_and_resizes_others() -> None:
    logits = torch.arange(4.0).view(1, 1, 2, 2)
    assert upsample_to(logits, (2, 2)) is logits
    assert upsample_to(logits, (4, 6)).shape == (1, 1, 4, 6)


@pytest.mark.parametrize("arch", ["fcn", "deeplabv3"])
def test_one_training_step_and_predictions_at_the_original_size(arch: str) -> None:
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.arch={arch}", *SMALL, "seg_head.sampler=topk"])
    model = build_model(cfg, num_classes=2)
    assert isinstance(model, SegmentationModel)
    images = [torch.rand(3, 50, 70), torch.rand(3, 64, 48)]
    model.train()
    losses = model(images, _targets((50, 70), (64, 48)))
    assert set(losses) == {"loss_seg"} and torch.isfinite(losses["loss_seg"])
    before = model.head[-1].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses["loss_seg"].backward()
    optimizer.step()
    assert not torch.equal(before, model.head[-1].weight)
    assert next(model.backbone.parameters()).grad is not None
    stats = model.diagnostics()
    # resized so that the longer side is 64 (torchvision rounds the size down): 45x64 and 64x48
    assert stats["seg/num_valid"] == 45 * 64 + 64 * 48
    assert stats["seg/num_kept"] == int(0.2 * (45 * 64 + 64 * 48))
    assert 0.0 <= stats["seg/fg_loss_share"] <= 1.0 and "seg/sampler/min_kept_loss" in stats
    model.eval()
    out = model(images)
    assert [o["mask"].shape for o in out] == [(50, 70), (64, 48)]
    assert all(o["mask"].dtype == torch.int64 and int(o["mask"].max()) <= 2 for o in out)


def test_training_without_targets_is_an_error() -> None:
    model = build_model(load_config(None, ["model.arch=fcn", *SMALL]), num_classes=1).train()
    with pytest.raises(ValueError, match="needs targets with a 'mask'"):
        model([torch.rand(3, 32, 32)])


def test_normalizer_all_divides_by_every_pixel_of_the_batch() -> None:
    torch.manual_seed(0)
    images, targets = [torch.rand(3, 64, 64)] * 2, _targets((64, 64), (64, 64))
    losses = {}
    for normalizer in ("kept", "all"):
        torch.manual_seed(0)
        cfg = load_config(
            None, ["model.arch=fcn", *SMALL, "seg_head.sampler=topk", f"seg_head.normalizer={normalizer}"]
        )
        model = build_model(cfg, num_classes=2).train()
        losses[normalizer] = model(images, targets)["loss_seg"].item()
        kept = model.diagnostics()["seg/num_kept"]
    assert losses["all"] == pytest.approx(losses["kept"] * kept / (2 * 64 * 64))


def test_min_kept_scales_with_the_image_area() -> None:
    sampler = OhemThreshold()  # mmsegmentation's 100000 at 512x1024
    assert sampler.kept_minimum(512, 1024) == 100_000
    assert sampler.kept_minimum(256, 256) == 12_500
    assert OhemThreshold(min_kept=7, min_kept_area=0).kept_minimum(256, 256) == 7
    # 1x8 image, all pixels at probability 1/2 (above thresh 0.4): min_kept 2 per 4 pixels keeps 4
    logits, target = torch.zeros(1, 2, 1, 8), torch.zeros(1, 1, 8, dtype=torch.long)
    keep = OhemThreshold(thresh=0.4, min_kept=2, min_kept_area=4)(logits, target, torch.zeros(1, 1, 8))
    assert keep.tolist() == [[[True] * 4 + [False] * 4]]


def test_class_balanced_weights_go_into_the_state_dict() -> None:
    cfg = load_config(None, ["model.arch=fcn", *SMALL, "seg_head.loss=class_balanced"])
    model = build_model(cfg, num_classes=2)
    assert isinstance(model.criterion.loss.declaration, ClassBalancedCrossEntropy)
    counts = ClassPixelCounts(
        pixels=torch.tensor([8, 2, 0]).numpy(), image_pixels=torch.tensor([10, 10, 0]).numpy()
    )
    model.fit_class_weights(counts)  # frequencies 0.8 and 0.2, median 0.5
    expected = torch.tensor([0.625, 2.5, 0.0])
    torch.testing.assert_close(model.state_dict()["criterion.loss.class_weight"], expected)
    plain = build_model(load_config(None, ["model.arch=fcn", *SMALL]), num_classes=2)
    assert not any("class_weight" in key for key in plain.state_dict())


def test_a_feature_level_the_backbone_lacks_is_a_config_error() -> None:
    cfg = load_config(None, ["model.arch=fcn", *SMALL, "seg_head.feature_level=3"])
    with pytest.raises(ConfigError, match="seg_head.feature_level=3: backbone 'tiny' has FPN levels 0..2"):
        build_model(cfg, num_classes=1)


def test_the_configured_sampler_and_loss_are_copies() -> None:
    cfg = load_config(
        None, ["model.arch=fcn", *SMALL, "seg_head.sampler=topk", "seg_head.sampler.fraction=0.5"]
    )
    model = build_model(cfg, num_classes=1)
    assert model.sampler == OhemTopK(fraction=0.5) and model.sampler is not cfg.seg_head.sampler
