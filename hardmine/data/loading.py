"""Pick the reader for a dataset path: a COCO `.json` file or a VOCdevkit-style directory; or make a
dataset without annotations of loose image files (`hardmine predict --images`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from hardmine.data.coco import load_coco
from hardmine.data.problems import ProblemLog
from hardmine.data.records import Category, DatasetIndex, ImageRecord
from hardmine.data.voc import load_voc
from hardmine.errors import DataError

DEFAULT_VOC_SPLIT = "trainval"


def load_dataset(
    path: str | Path,
    image_root: str | Path | None = None,
    split: str | None = None,
    class_names: Sequence[str] | None = None,
    log: ProblemLog | None = None,
    masks: bool = False,
) -> DatasetIndex:
    """Read a dataset from `path`, choosing the format from what the path is.

    A `.json` file is read as COCO (`image_root` applies; `split` and `class_names` are VOC-only
    and ignored). A directory with an `Annotations/` folder is read as VOC with `split` (default
    "trainval") and `class_names` (default: the 20 VOC classes); its images live under the directory.
    With a `log` the reader reports problems there and returns what is valid (see `load_coco`).
    With `masks` each record also says where its semantic mask comes from (`load_coco`,
    `load_voc`; read by `hardmine.data.masks.load_mask`).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset path does not exist")
    if path.is_file() and path.suffix.lower() == ".json":
        return load_coco(path, Path(image_root) if image_root is not None else None, log=log, masks=masks)
    if path.is_dir() and (path / "Annotations").is_dir():
        return load_voc(path, split or DEFAULT_VOC_SPLIT, class_names, log=log, masks=masks)
    raise DataError(
        f"{path}: not a dataset; expected a COCO annotation file (*.json) or a VOC root directory "
        "containing Annotations/, ImageSets/Main/ and JPEGImages/"
    )


def index_of_images(paths: Sequence[Path], categories: list[Category]) -> DatasetIndex:
    """Image files as a dataset without annotations: image ids 0, 1, ... in the order given, the
    sizes read from the files, `categories` those of the model that will predict on them."""
    records = []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                width, height = im.size
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: cannot read the image: {exc}") from None
        records.append(ImageRecord(image_id=i, file_name=str(p.resolve()), width=width, height=height))
    return DatasetIndex(records=records, categories=categories, image_root=Path("/"), source=Path("<images>"))
