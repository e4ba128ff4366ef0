"""draw_detections writes a PNG of the image's size with the kept boxes drawn on it; draw_boxes and
draw_legend (the gallery's building blocks) keep the image's size too."""

import numpy as np
import torch
from PIL import Image

from hardmine.report.draw import GT_COLOR, class_color, draw_boxes, draw_detections, draw_legend

H, W = 80, 120
KEPT = [10, 20, 60, 70]
DROPPED = [80, 10, 110, 40]  # score below the threshold
GT = [70, 50, 115, 75]


def read(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_draws_kept_boxes_only(tmp_path):
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    out = draw_detections(
        image,
        torch.tensor([KEPT, DROPPED], dtype=torch.float32),
        torch.tensor([2, 1]),
        torch.tensor([0.87, 0.1]),
        ["cat", "dog"],
        tmp_path / "sub" / "det.png",
    )
    assert out == tmp_path / "sub" / "det.png"
    pixels = read(out)
    assert pixels.shape == (H, W, 3)
    x1, y1, x2, y2 = KEPT
    assert tuple(pixels[y2, (x1 + x2) // 2]) == class_color(2)  # bottom edge in the class colour
    assert pixels[y1 : y2 + 1, x1 : x2 + 1].any()
    x1, y1, x2, y2 = DROPPED
    assert not pixels[y1 : y2 + 1, x1 : x2 + 1].any()
    assert not image.any()  # the input is left untouched


def test_accepts_float_images_numpy_arrays_and_ground_truth(tmp_path):
    image = torch.full((3, H, W), 0.5)
    out = draw_detections(
        image,
        np.array([KEPT], np.float32),
        np.array([1]),
        np.array([0.9], np.float32),
        ["cat"],
        tmp_path / "det.png",
        gt_boxes=np.array([GT], np.float32),
    )
    pixels = read(out)
    assert pixels.shape == (H, W, 3)
    assert tuple(pixels[40, 100]) == (128, 128, 128)  # untouched background
    x1, y1, x2, y2 = GT
    assert tuple(pixels[y2, (x1 + x2) // 2]) == GT_COLOR
    x1, y1, x2, y2 = KEPT
    assert tuple(pixels[y2, (x1 + x2) // 2]) == class_color(1)


def test_reads_image_files(tmp_path):
    source = tmp_path / "in.png"
    Image.new("L", (W, H)).save(source)  # grayscale on disk, drawn as RGB
    out = draw_detections(source, [KEPT], [1], [0.9], ["cat"], tmp_path / "det.png", score_thresh=0.95)
    pixels = read(out)
    assert pixels.shape == (H, W, 3) and not pixels.any()  # nothing passed the threshold


def test_class_colours_are_distinct():
    colors = [class_color(label) for label in range(1, 21)]
    assert len(set(colors)) == 20 and GT_COLOR not in colors


def test_draw_boxes_rounds_to_the_nearest_pixel_and_blends_faint_boxes():
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    x1, y1, x2, y2 = KEPT
    almost = [x1 + 0.4, y1 - 0.3, x2 - 0.0001, y2 - 0.4]  # e.g. mapped back from another scale
    drawn = draw_boxes(image, [almost], (0, 200, 0))
    assert drawn.shape == (3, H, W) and drawn[:, y2, (x1 + x2) // 2].tolist() == [0, 200, 0]
    faint = draw_boxes(image, [KEPT], (0, 200, 0), opacity=0.25)
    assert faint[:, y2, (x1 + x2) // 2].tolist() == [0, 50, 0]
    assert torch.equal(draw_boxes(image, np.zeros((0, 4)), (0, 200, 0)), image)


def test_draw_legend_keeps_the_size_and_shows_the_colours():
    legend = draw_legend(
        torch.zeros(3, H, W, dtype=torch.uint8), [("12 fg", (0, 230, 64)), ("3 bg", GT_COLOR)]
    )
    pixels = np.asarray(legend)
    assert legend.size == (W, H) and pixels.shape == (H, W, 3)
    red, green = pixels[..., 0].astype(int), pixels[..., 1].astype(int)
    assert ((green > 150) & (red < 60)).any()  # the green line (antialiased text: no exact colour)
    assert (pixels.min(axis=-1) > 150).any()  # the white one
    assert not pixels[H - 10 :, W - 10 :].any()  # the panel stays in the top-left corner
