"""Multi-scale / flip testing: passes, mirroring (boxes and proposals), merging, real detectors."""

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from hardmine.config import load_config
from hardmine.engine.tta import TestTimeAugmentation as TTA
from hardmine.engine.tta import hflip_boxes, predict_tta, resized_to
from hardmine.errors import ConfigError
from hardmine.models.build import build_model
from hardmine.models.transform import DetectionTransform


def test_hflip_boxes_mirrors_left_right():
    boxes = torch.tensor([[5.0, 10, 25, 20], [0, 0, 60, 40]])
    assert_close(hflip_boxes(boxes, 60), torch.tensor([[35.0, 10, 55, 20], [0, 0, 60, 40]]))
    assert_close(hflip_boxes(hflip_boxes(boxes, 60), 60), boxes)


def test_resized_to_scales_the_cap_and_restores_the_transform():
    transform = DetectionTransform((100,), 200)
    with resized_to(transform, 150):
        assert (transform.min_size, transform.max_size) == ((150,), 300)
    assert (transform.min_size, transform.max_size) == ((100,), 200)
    with resized_to(transform, None):
        assert (transform.min_size, transform.max_size) == ((100,), 200)


class Stub(nn.Module):
    """Finds the bright rectangle of each image it is given (so a mirrored image gives a mirrored
    box), moved right by `shift` px per 100 px of test size above 100, scored test size / 1000."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.transform = DetectionTransform((100,), 200)
        self.shift = shift
        self.calls: list[tuple[tuple[int, ...], int, list[Tensor] | None]] = []

    def forward(self, images: list[Tensor], proposals: list[Tensor] | None = None) -> list[dict[str, Tensor]]:
        size = self.transform.min_size[-1]
        self.calls.append((self.transform.min_size, self.transform.max_size, proposals))
        out = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
            dx = self.shift * (size - 100) / 100
            box = torch.tensor(
                [[xs.min() + dx, ys.min(), xs.max() + 1 + dx, ys.max() + 1]], dtype=torch.float32
            )
            out.append({"boxes": box, "scores": torch.tensor([size / 1000]), "labels": torch.tensor([1])})
        return out


def _image() -> Tensor:
    image = torch.zeros(3, 40, 60)
    image[:, 10:20, 5:25] = 1.0  # the object: [5, 10, 25, 20]
    return image


def test_every_scale_and_flip_runs_and_maps_back_to_the_original_image():
    stub = Stub()
    proposals = [torch.tensor([[0.0, 0, 10, 40]])]
    tta = TTA(scales=(100, 200), hflip=True)
    (merged,) = predict_tta(stub, [_image()], tta, proposals)
    assert_close(merged["boxes"], torch.tensor([[5.0, 10, 25, 20]]))  # all 4 passes agree
    assert_close(merged["scores"], torch.tensor([0.2]))
    assert [(c[0], c[1]) for c in stub.calls] == [((100,), 200), ((100,), 200), ((200,), 400), ((200,), 400)]
    for (_, _, given), flipped in zip(stub.calls, [False, True, False, True]):
        expected = torch.tensor([[50.0, 0, 60, 40]]) if flipped else proposals[0]
        assert_close(given[0], expected)
    assert (stub.transform.min_size, stub.transform.max_size) == ((100,), 200)
    assert tta.num_passes == 4


def test_scales_merge_by_nms_or_by_vote():
    images = [_image()]
    # Scale 100: [5, 10, 25, 20] at 0.1; scale 200: [7, 10, 27, 20] at 0.2 (IoU 18/22).
    nms = predict_tta(Stub(shift=2.0), images, TTA(scales=(100, 200)))[0]
    assert_close(nms["boxes"], torch.tensor([[7.0, 10, 27, 20]]))
    assert_close(nms["scores"], torch.tensor([0.2]))
    vote = predict_tta(Stub(shift=2.0), images, TTA(scales=(100, 200), merge="vote"))[0]
    x1 = (0.1 * 5 + 0.2 * 7) / 0.3
    assert_close(vote["boxes"], torch.tensor([[x1, 10, x1 + 20, 20]]))
    assert_close(vote["scores"], torch.tensor([0.2]))


def test_a_model_without_a_detection_transform_is_refused():
    with pytest.raises(ValueError, match="DetectionTransform"):
        predict_tta(nn.Identity(), [_image()], TTA(hflip=True))


@pytest.mark.parametrize("arch", ["faster_rcnn", "retinanet"])
def test_the_native_scale_alone_reproduces_the_detector(arch):
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.arch={arch}", "model.min_size=128", "model.max_size=160"])
    model = build_model(cfg, num_classes=3).eval()
    images = [torch.rand(3, 90, 120), torch.rand(3, 100, 80)]
    with torch.no_grad():
        plain = model(images)
        same = predict_tta(model, images, TTA(scales=(128,)))
        several = predict_tta(model, images, TTA(scales=(96, 160), hflip=True))
    for a, b in zip(plain, same):
        assert_close(b["boxes"], a["boxes"])
        assert_close(b["scores"], a["scores"])
        assert torch.equal(b["labels"], a["labels"])
    for image, dets in zip(images, several):
        h, w = image.shape[-2:]
        assert len(dets["boxes"]) <= 100
        assert (dets["boxes"][:, 2] <= w).all() and (dets["boxes"][:, 3] <= h).all()
        assert (dets["boxes"] >= 0).all()


def test_fast_rcnn_proposals_follow_the_flip():
    torch.manual_seed(0)
    cfg = load_config(None, ["model.arch=fast_rcnn", "data.train_proposals=x.pt", "model.min_size=128"])
    model = build_model(cfg, num_classes=3).eval()
    images = [torch.rand(3, 90, 120)]
    proposals = [torch.tensor([[0.0, 0, 40, 40], [60, 30, 110, 80]])]
    with torch.no_grad():
        plain = model(images, proposals=proposals)[0]
        mirrored = model([images[0].flip(-1)], proposals=[hflip_boxes(proposals[0], 120)])[0]
        merged = predict_tta(model, images, TTA(hflip=True, merge_iou=1.0), proposals)[0]
    # merge IoU 1.0 keeps both passes: the plain one's boxes and the mirrored pass's, mirrored back.
    expected = torch.cat([plain["boxes"], hflip_boxes(mirrored["boxes"], 120)])
    scores = torch.cat([plain["scores"], mirrored["scores"]])
    order = scores.argsort(descending=True)[:100]
    assert_close(merged["boxes"], expected[order])


def test_eval_options_are_validated():
    with pytest.raises(ConfigError, match="eval.scales"):
        load_config(None, ["eval.scales=[320, 0]"])
    with pytest.raises(ConfigError, match="eval.merge='wbf' is not allowed; choose from nms, vote"):
        load_config(None, ["eval.merge=wbf"])
    with pytest.raises(ConfigError, match="eval.merge_iou"):
        load_config(None, ["eval.merge_iou=1.5"])
    tta = TTA.from_config(load_config(None, ["eval.scales=[256, 320]", "eval.hflip=true"]).eval)
    assert (tta.scales, tta.hflip, tta.enabled, tta.num_passes) == ((256, 320), True, True, 4)
    assert not TTA.from_config(load_config(None, []).eval).enabled
