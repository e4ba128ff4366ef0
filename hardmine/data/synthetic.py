"""The built-in synthetic dataset: coloured shapes on photographic clutter, with real hard negatives.

Each class is a shape AND a colour (`SYNTH_CLASSES`). Every image also holds many distractors
that share one of the two: the class shapes in other colours (some only 25 degrees of hue away),
the class colours on other shapes (including another class's shape), striped patches and noise
blobs in any colour. Backgrounds are colour-jittered crops of the photographs that ship inside
scikit-image. Visibility rule (an object can be covered by items drawn after it or cut by the
border): at least 50% of its pixels visible -> annotated; 20-50% -> ignore region (COCO
`iscrowd=1`); under 20% -> not annotated (it is clutter). Boxes are tight around the visible
pixels (alpha > 0.5). Each image also gets an exact semantic mask, `masks/<split>_<index>.png`
(named by the image's `sem_seg_file_name`): the label on the visible pixels of annotated objects,
255 (ignore) on those of ignore-region objects, 0 elsewhere. docs/data-formats.md lists the full
rule set.

Each image draws from its own generator seeded by (seed, split, index), so the same seed gives
byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import colorsys
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hardmine.data.coco import write_coco
from hardmine.data.masks import IGNORE_LABEL, label_palette, write_mask_png
from hardmine.data.records import Category, DatasetIndex, ImageRecord, MaskFile

#: Class names; class k (label k + 1) is shape CLASS_SHAPES[k] in hue CLASS_HUES[k] (degrees).
#: Bump when the generator's output changes, so cached copies of the built-in dataset are rebuilt.
GENERATOR_VERSION = 2  # 2: semantic masks (images and boxes as in 1)

SYNTH_CLASSES: tuple[str, ...] = (
    "red_circle",
    "green_triangle",
    "blue_square",
    "yellow_star",
    "magenta_cross",
)
CLASS_SHAPES = ("circle", "triangle", "square", "star", "cross")
CLASS_HUES = (0.0, 120.0, 230.0, 55.0, 300.0)
#: Shapes that no class uses.
OTHER_SHAPES = ("ellipse", "ring", "hexagon", "pentagon", "bar")

IMAGE_SIDE = (256, 320)  # inclusive range of width and of height
OBJECT_SIZE = (8.0, 96.0)  # diameter of the shape's enclosing circle, log-uniform
OBJECTS_PER_IMAGE = (3, 15)  # inclusive
DISTRACTORS_PER_IMAGE = (8, 20)  # inclusive, plus the occluders
EMPTY_IMAGE_PROB = 0.1  # images with distractors only
OCCLUDER_PROB = 0.2  # chance that an object gets a clutter item drawn on top of it
OPACITY = (0.65, 1.0)  # of every drawn item: low contrast against the background sometimes
CLASS_HUE_JITTER = 8.0  # degrees
DISTRACTOR_HUE_MARGIN = 25.0  # distractor hues stay this far from every class hue
ANNOTATE_MIN_VISIBLE = 0.5
IGNORE_MIN_VISIBLE = 0.2

#: scikit-image photographs that ship inside the package (no download).
BACKGROUND_IMAGES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "brick",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "coins",
    "moon",
    "retina",
    "cell",
)
MAX_BACKGROUND_SIDE = 640  # larger photographs are shrunk once, so that crops resize quickly
SPLITS = ("train", "val")
PARALLEL_MIN_IMAGES = 64  # below this, starting worker processes costs more than it saves
_SUPERSAMPLE = 2  # masks are drawn at this scale and box-filtered down: anti-aliased edges


@dataclass
class _Item:
    """One drawn thing: alpha mask and fill on a patch whose top-left corner is (x, y) in the image."""

    mask: np.ndarray  # float32 [h, w] in [0, 1]
    fill: np.ndarray  # float32 [h, w, 3] in [0, 1]
    x: int
    y: int
    opacity: float
    label: int = 0  # 1..C for objects, 0 for clutter


@cache
def _noise_tile() -> np.ndarray:
    """A fixed tile of unit Gaussian noise; random crops of it are much cheaper than fresh noise."""
    side = 2 * IMAGE_SIDE[1]
    return np.random.default_rng(0).standard_normal((side, side, 3), dtype=np.float32)


def _noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    tile = _noise_tile()
    y, x = (int(v) for v in rng.integers(0, tile.shape[0] - max(height, width), 2))
    return tile[y : y + height, x : x + width]


@cache
def _backgrounds() -> tuple[np.ndarray, ...]:
    """The background photographs as uint8 RGB arrays, at most MAX_BACKGROUND_SIDE px per side."""
    import skimage.data

    photos = []
    for name in BACKGROUND_IMAGES:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        image.thumbnail((MAX_BACKGROUND_SIDE, MAX_BACKGROUND_SIDE), Image.Resampling.BILINEAR)
        photos.append(np.asarray(image))
    return tuple(photos)


def _hsv(hue: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue % 360.0) / 360.0, sat, val), np.float32)


def _class_colour(rng: np.random.Generator, cls: int) -> np.ndarray:
    hue = CLASS_HUES[cls] + rng.uniform(-CLASS_HUE_JITTER, CLASS_HUE_JITTER)
    return _hsv(hue, rng.uniform(0.5, 1.0), rng.uniform(0.45, 1.0))


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


def _distractor_colour(rng: np.random.Generator) -> np.ndarray:
    """A colour no class uses: a hue at least DISTRACTOR_HUE_MARGIN from each class hue, or a grey."""
    if rng.random() < 0.15:
        return _hsv(0.0, 0.0, rng.uniform(0.1, 0.95))
    while True:
        hue = rng.uniform(0.0, 360.0)
        if min(_hue_distance(hue, h) for h in CLASS_HUES) >= DISTRACTOR_HUE_MARGIN:
            return _hsv(hue, rng.uniform(0.4, 1.0), rng.uniform(0.35, 1.0))


def _any_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.4:
        return _class_colour(rng, int(rng.integers(len(CLASS_HUES))))
    return _distractor_colour(rng)


def _rotate(points: list[tuple[float, float]], angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _regular_polygon(n: int, radius: float, inner: float | None = None) -> list[tuple[float, float]]:
    """Vertices around (0, 0); with `inner`, a star alternating outer and `inner * radius` vertices."""
    steps = 2 * n if inner is not None else n
    radii = [radius if inner is None or k % 2 == 0 else radius * inner for k in range(steps)]
    angles = [2 * math.pi * k / steps for k in range(steps)]
    return [(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles)]


def _outline(shape: str, r: float, rng: np.random.Generator) -> list[tuple[float, float]] | None:
    """Polygon of `shape` with circumradius `r` around (0, 0), randomly rotated; None for discs."""
    sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
    if shape in sides:
        points = _regular_polygon(sides[shape], r)
    elif shape == "star":
        points = _regular_polygon(5, r, inner=0.45)
    elif shape == "cross":
        a = 0.32 * r  # half the arm width
        points = [
            (r, a),
            (a, a),
            (a, r),
            (-a, r),
            (-a, a),
            (-r, a),
            (-r, -a),
            (-a, -a),
            (-a, -r),
            (a, -r),
            (a, -a),
            (r, -a),
        ]
    elif shape == "bar":
        b = r * rng.uniform(0.15, 0.3)
        points = [(r, b), (-r, b), (-r, -b), (r, -b)]
    elif shape == "ellipse":
        b = r * rng.uniform(0.3, 0.6)
        points = [(r * math.cos(t), b * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40)[:-1]]
    else:  # circle, ring
        return None
    return _rotate(points, rng.uniform(0.0, 2 * math.pi))


def _shape_mask(shape: str, r: float, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased, slightly blurred alpha mask of `shape` on a square patch centred on it."""
    side = int(math.ceil(2 * r)) + 4
    s = _SUPERSAMPLE
    c = side * s / 2
    canvas = Image.new("L", (side * s, side * s), 0)
    draw = ImageDraw.Draw(canvas)
    outline = _outline(shape, r * s, rng)
    if outline is not None:
        draw.polygon([(c + x, c + y) for x, y in outline], fill=255)
    else:
        draw.ellipse((c - r * s, c - r * s, c + r * s, c + r * s), fill=255)
        if shape == "ring":
            hole = r * s * rng.uniform(0.45, 0.75)
            draw.ellipse((c - hole, c - hole, c + hole, c + hole), fill=0)
    mask = canvas.resize((side, side), Image.Resampling.BOX)
    blur = rng.uniform(0.0, 1.0)
    if blur > 0.3:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(mask, np.float32) / 255.0


def _blob_mask(r: float, rng: np.random.Generator) -> np.ndarray:
    """An irregular blob: a polygon with random radii, blurred."""
    side = int(math.ceil(2 * r)) + 4
    c = side / 2
    radii = r * rng.uniform(0.45, 1.0, 14)
    angles = np.sort(rng.uniform(0, 2 * math.pi, 14))
    canvas = Image.new("L", (side, side), 0)
    points = [(c + q * math.cos(a), c + q * math.sin(a)) for q, a in zip(radii, angles)]
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    return np.asarray(canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0))), np.float32) / 255.0


def _solid_fill(rng: np.random.Generator, colour: np.ndarray, side: int) -> np.ndarray:
    """`colour` with a soft linear shading and a little pixel noise."""
    ramp = np.linspace(-0.5, 0.5, side, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + rng.uniform(0.0, 0.3) * (ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle))
    noise = _noise(rng, side, side) * np.float32(rng.uniform(0.01, 0.04))
    return np.clip(colour * shade[..., None] + noise, 0.0, 1.0)


def _stripes_fill(rng: np.random.Generator, side: int) -> np.ndarray:
    """Parallel stripes of two random colours (class colours included), any angle and period."""
    ramp = np.arange(side, dtype=np.float32)
    angle = rng.uniform(0, math.pi)
    phase = (ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle)) / rng.uniform(3.0, 10.0)
    on = (phase % 1.0) < rng.uniform(0.3, 0.7)
    return np.where(on[..., None], _any_colour(rng), _any_colour(rng)).astype(np.float32)


def _blob_fill(rng: np.random.Generator, side: int) -> np.ndarray:
    """A random colour with blotchy low-frequency variation and strong pixel noise."""
    coarse = ((rng.normal(0.0, 0.2, (4, 4, 3)) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    blotches = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BILINEAR), np.float32)
    noise = _noise(rng, side, side) * np.float32(0.1)
    return np.clip(_any_colour(rng) + blotches / 127.5 - 1.0 + noise, 0.0, 1.0)


def _item(
    rng: np.random.Generator, mask: np.ndarray, fill: np.ndarray, cx: float, cy: float, label: int
) -> _Item:
    h, w = mask.shape
    x, y = int(round(cx - w / 2)), int(round(cy - h / 2))
    return _Item(mask, fill, x, y, rng.uniform(*OPACITY), label)


def _object(rng: np.random.Generator, cls: int, cx: float, cy: float, r: float) -> _Item:
    mask = _shape_mask(CLASS_SHAPES[cls], r, rng)
    return _item(rng, mask, _solid_fill(rng, _class_colour(rng, cls), mask.shape[0]), cx, cy, cls + 1)


def _clutter(rng: np.random.Generator, cx: float, cy: float, r: float) -> _Item:
    """A distractor: a look-alike (class shape in another colour, class colour on another shape),
    a striped patch or a noise blob."""
    kind = rng.random()
    if kind < 0.35:
        mask = _shape_mask(CLASS_SHAPES[rng.integers(len(CLASS_SHAPES))], r, rng)
        fill = _solid_fill(rng, _distractor_colour(rng), mask.shape[0])
    elif kind < 0.65:  # any shape but the class's own: a non-class shape or another class's shape
        cls = int(rng.integers(len(CLASS_SHAPES)))
        shapes = [s for s in CLASS_SHAPES + OTHER_SHAPES if s != CLASS_SHAPES[cls]]
        mask = _shape_mask(shapes[rng.integers(len(shapes))], r, rng)
        fill = _solid_fill(rng, _class_colour(rng, cls), mask.shape[0])
    elif kind < 0.85:
        mask = _shape_mask(("square", "circle", "bar", "ellipse")[rng.integers(4)], r, rng)
        fill = _stripes_fill(rng, mask.shape[0])
    else:
        mask = _blob_mask(r, rng)
        fill = _blob_fill(rng, mask.shape[0])
    return _item(rng, mask, fill, cx, cy, 0)


def _colour_jitter(rng: np.random.Generator, channel_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random channel shuffle, saturation, per-channel gain, contrast and brightness as one affine map.

    Returns (M, b) so that an RGB pixel p in [0, 1] becomes M @ p + b; the contrast is scaled
    around the image's mean, computed from `channel_mean` (the mean RGB before the map).
    """
    shuffle = np.eye(3)[rng.permutation(3)] if rng.random() < 0.3 else np.eye(3)
    sat = rng.uniform(0.3, 1.3)
    saturation = sat * np.eye(3) + (1.0 - sat) / 3.0
    matrix = np.diag(rng.uniform(0.7, 1.3, 3)) @ saturation @ shuffle
    contrast = rng.uniform(0.4, 1.0)
    offset = (1.0 - contrast) * float((matrix @ channel_mean).mean()) + rng.uniform(-0.15, 0.15)
    return (contrast * matrix).astype(np.float32), np.full(3, offset, np.float32)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A colour-jittered crop of a random photograph with low-frequency colour noise, float32 [H, W, 3]."""
    photos = _backgrounds()
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.3, 1.0) * min(ph / height, pw / width)
    ch, cw = max(int(height * scale), 16), max(int(width * scale), 16)
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = Image.fromarray(photo[y0 : y0 + ch, x0 : x0 + cw]).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(crop, np.float32) / np.float32(255.0)
    matrix, offset = _colour_jitter(rng, pixels.mean(axis=(0, 1)))
    # three broadcast multiply-adds rather than a matmul: BLAS threads would fight the worker processes
    image = offset + sum(pixels[..., c : c + 1] * matrix[:, c] for c in range(3))
    coarse = rng.normal(0.5, rng.uniform(0.02, 0.08), (height // 32 + 2, width // 32 + 2, 3))
    low = Image.fromarray((coarse * 255).clip(0, 255).astype(np.uint8))
    image += np.asarray(low.resize((width, height), Image.Resampling.BICUBIC), np.float32) / np.float32(255.0)
    image -= np.float32(0.5)
    return np.clip(image, 0.0, 1.0, out=image)


def _paste(canvas: np.ndarray, owner: np.ndarray, item: _Item, item_id: int) -> None:
    """Alpha-blend `item` into `canvas` and record it in `owner` as the top item where its mask is > 0.5."""
    height, width = owner.shape
    h, w = item.mask.shape
    x0, y0, x1, y1 = max(item.x, 0), max(item.y, 0), min(item.x + w, width), min(item.y + h, height)
    if x0 >= x1 or y0 >= y1:
        return
    local = np.s_[y0 - item.y : y1 - item.y, x0 - item.x : x1 - item.x]
    mask = item.mask[local]
    region = canvas[y0:y1, x0:x1]
    region += (mask * item.opacity)[..., None] * (item.fill[local] - region)
    owner[y0:y1, x0:x1][mask > 0.5] = item_id


def _random_diameter(rng: np.random.Generator) -> float:
    lo, hi = OBJECT_SIZE
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _object_centres(rng: np.random.Generator, radii: list[float], width: int, height: int) -> list[tuple]:
    """Centres anywhere in the image, avoiding heavy overlap between objects (a few tries each)."""
    centres: list[tuple[float, float]] = []
    for r in radii:
        for _ in range(10):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            if all(math.hypot(cx - x, cy - y) > 0.8 * (r + q) for (x, y), q in zip(centres, radii)):
                break
        centres.append((cx, cy))
    return centres


def _visible_box(item: _Item, owner: np.ndarray, item_id: int) -> tuple[np.ndarray | None, float]:
    """Tight box around the item's pixels still on top, and their fraction of the item's whole mask."""
    h, w = item.mask.shape
    x0, y0 = max(item.x, 0), max(item.y, 0)
    ys, xs = np.nonzero(owner[y0 : item.y + h, x0 : item.x + w] == item_id)
    if not len(xs):
        return None, 0.0
    visible = len(xs) / int((item.mask > 0.5).sum())
    return np.array([xs.min() + x0, ys.min() + y0, xs.max() + x0 + 1, ys.max() + y0 + 1], np.float32), visible


def _render_image(
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[tuple[np.ndarray, int, bool]], np.ndarray]:
    """One synthetic image (uint8 [H, W, 3]), its annotations as (xyxy box, label, is_ignore) and
    its semantic mask (uint8 [H, W]: label / IGNORE_LABEL on the visible pixels of annotated /
    ignore-region objects, 0 elsewhere)."""
    width, height = (int(v) for v in rng.integers(IMAGE_SIDE[0], IMAGE_SIDE[1] + 1, 2))
    canvas = _background(rng, width, height)
    empty = rng.random() < EMPTY_IMAGE_PROB
    num_objects = 0 if empty else int(rng.integers(*OBJECTS_PER_IMAGE, endpoint=True))
    radii = [_random_diameter(rng) / 2 for _ in range(num_objects)]
    centres = _object_centres(rng, radii, width, height)
    classes = rng.integers(len(SYNTH_CLASSES), size=num_objects)
    objects = [_object(rng, int(k), cx, cy, r) for k, (cx, cy), r in zip(classes, centres, radii)]
    clutter = [
        _clutter(rng, rng.uniform(0, width), rng.uniform(0, height), _random_diameter(rng) / 2)
        for _ in range(int(rng.integers(*DISTRACTORS_PER_IMAGE, endpoint=True)))
    ]
    items = objects + clutter
    drawn = [items[k] for k in rng.permutation(len(items))]
    for (cx, cy), r in zip(centres, radii):  # occluders go on top of everything
        if rng.random() < OCCLUDER_PROB:
            dx, dy = rng.uniform(-r, r, 2)
            drawn.append(_clutter(rng, cx + dx, cy + dy, r * rng.uniform(0.6, 1.2)))
    owner = np.full((height, width), -1, np.int32)
    for item_id, item in enumerate(drawn):
        _paste(canvas, owner, item, item_id)
    canvas += _noise(rng, height, width) * np.float32(rng.uniform(0.01, 0.04))  # sensor noise
    image = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    annotations = []
    mask_value = np.zeros(len(drawn) + 1, np.uint8)  # per item id + 1 (0: no item on top)
    for item_id, item in enumerate(drawn):
        if item.label:
            box, visible = _visible_box(item, owner, item_id)
            if box is not None and visible >= IGNORE_MIN_VISIBLE:
                ignore = visible < ANNOTATE_MIN_VISIBLE
                annotations.append((box, item.label, ignore))
                mask_value[item_id + 1] = IGNORE_LABEL if ignore else item.label
    return image, annotations, mask_value[owner + 1]


@cache
def _mask_palette() -> list[int]:
    """Each label in its class's pure hue, so a mask PNG can be looked at."""
    colours = [tuple(int(255 * v + 0.5) for v in _hsv(hue, 1.0, 1.0)) for hue in CLASS_HUES]
    return label_palette(colours)


def _render_file(out_dir: Path, seed: int, split: str, index: int) -> ImageRecord:
    """Render image `index` of `split`, write its PNG and its mask PNG and return its record (image
    id = index)."""
    image, annotations, mask = _render_image(np.random.default_rng([seed, SPLITS.index(split), index]))
    file_name = f"images/{split}_{index:06d}.png"
    Image.fromarray(image).save(out_dir / file_name, format="PNG", compress_level=1)
    mask_name = f"masks/{split}_{index:06d}.png"
    write_mask_png(out_dir / mask_name, mask, _mask_palette())
    objects = [(box, label) for box, label, ignore in annotations if not ignore]
    ignored = [(box, label) for box, label, ignore in annotations if ignore]
    return ImageRecord(
        image_id=index,
        file_name=file_name,
        width=image.shape[1],
        height=image.shape[0],
        boxes=np.array([b for b, _ in objects], np.float32).reshape(-1, 4),
        labels=np.array([lab for _, lab in objects], np.int64),
        ignore_boxes=np.array([b for b, _ in ignored], np.float32).reshape(-1, 4),
        ignore_labels=np.array([lab for _, lab in ignored], np.int64),
        mask=MaskFile(mask_name),
    )


def generate_synthetic(
    out_dir: Path, seed: int = 0, num_train: int = 200, num_val: int = 50, workers: int | None = None
) -> tuple[Path, Path]:
    """Write the synthetic dataset: out_dir/train.json, out_dir/val.json, out_dir/images/*.png and
    their semantic masks out_dir/masks/*.png.

    Image i of a split depends only on (seed, split, i): the files are the same whatever `workers`
    is, and a larger `num_train` keeps the first images. `workers` processes render in parallel
    (default: one per CPU core for 64 images or more, else 1). Returns the two COCO file paths.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"need at least one train and one val image, got {num_train} and {num_val}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(exist_ok=True)
    counts = {"train": num_train, "val": num_val}
    jobs = [(out_dir, seed, split, i) for split in SPLITS for i in range(counts[split])]
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = min(cores, 8) if len(jobs) >= PARALLEL_MIN_IMAGES else 1
    if workers > 1:
        # spawn, not fork: a caller that imported torch has threads that a forked child inherits broken
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            records = list(pool.map(_render_file, *zip(*jobs), chunksize=8))
    else:
        records = [_render_file(*job) for job in jobs]
    categories = [Category(id=k + 1, name=name, label=k + 1) for k, name in enumerate(SYNTH_CLASSES)]
    paths = []
    for split in SPLITS:
        path = out_dir / f"{split}.json"
        split_records = [r for r, job in zip(records, jobs) if job[2] == split]
        write_coco(DatasetIndex(split_records, categories, image_root=out_dir, source=path), path)
        paths.append(path)
    return paths[0], paths[1]
