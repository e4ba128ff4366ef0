"""What differs between the model families the engine trains: detection and semantic segmentation.

The trainer, its hooks, checkpoints, resume, the logs, DDP and mixed precision are the same for
both; a `Task` holds the rest, chosen once from `model.arch` (`task_of`):

    masks              whether the splits are read (and checked) with their semantic masks
    logged_metrics     the metrics an evaluation during training puts into log.csv (eval/KEY)
    headline           the metric a comparison ranks by
    training_dataset   the torch Dataset of training (targets with boxes, or with a mask too)
    prepare            what a fresh model gets from the training set before training (detection:
                       the sampling-free priors; segmentation: class-balanced loss weights)
    evaluate           a model's metrics on a split (COCO / VOC AP, or mIoU / IoU / pixel accuracy)
    evaluate_checkpoint, predict   `hardmine eval` and `hardmine predict`
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hardmine.config import SEGMENTATION_ARCHS, Config
from hardmine.data.dataset import DetectionDataset
from hardmine.data.loading import index_of_images
from hardmine.data.masks import load_mask
from hardmine.data.mixup import MixupOptions
from hardmine.data.records import DatasetIndex
from hardmine.data.transforms import AugmentOptions
from hardmine.engine.checkpoint import load_checkpoint, require_keys
from hardmine.engine.coco_eval import write_coco_results, write_metrics_json
from hardmine.engine.dataset_priors import apply_dataset_priors
from hardmine.engine.evaluation import evaluate_checkpoint as evaluate_detector_checkpoint
from hardmine.engine.evaluation import evaluate_model
from hardmine.engine.inference import checked_split, load_trained, predict_checkpoint, trained_categories
from hardmine.errors import CheckpointError
from hardmine.report.draw import draw_predictions
from hardmine.report.mask_draw import draw_mask_predictions
from hardmine.segmentation.dataset import SegmentationDataset
from hardmine.segmentation.evaluation import evaluate_segmentation, predicted_masks
from hardmine.segmentation.pixel_losses import count_class_pixels


class Task(ABC):
    """A model family's part of training, evaluation and prediction (see the module docstring)."""

    name: ClassVar[str]
    masks: ClassVar[bool]
    logged_metrics: ClassVar[tuple[str, ...]]
    headline: ClassVar[str]

    @abstractmethod
    def training_dataset(
        self,
        cfg: Config,
        train: DatasetIndex,
        proposals: dict[int, Tensor] | None,
        hard_negatives: dict[int, Tensor] | None,
        batches_per_epoch: int,
    ) -> DetectionDataset:
        """The training split as a seeded, augmented Dataset (see `engine.train_data`)."""

    @abstractmethod
    def prepare(
        self,
        model: nn.Module,
        cfg: Config,
        train: DatasetIndex,
        proposals: dict[int, Tensor] | None,
        run_dir: Path | None,
    ) -> None:
        """What a fresh (not resumed) model takes from the training set before its first step."""

    @abstractmethod
    def evaluate(
        self,
        model: nn.Module,
        cfg: Config,
        index: DatasetIndex,
        device: torch.device,
        proposals: dict[int, Tensor] | None = None,
        pr_curve_path: Path | None = None,
        detections_path: Path | None = None,
    ) -> dict[str, float]:
        """The metrics of `model` on `index` (every process calls it in a distributed run)."""

    @abstractmethod
    def evaluate_checkpoint(
        self, checkpoint: str | Path, overrides: list[str], out: Path
    ) -> tuple[dict[str, float], Path]:
        """`hardmine eval`: a checkpoint's metrics on its data.val, written to out/metrics.json."""

    @abstractmethod
    def predict(
        self,
        checkpoint: str | Path,
        overrides: list[str],
        images: list[Path],
        out: Path,
        score_thresh: float,
        max_images: int | None,
    ) -> str:
        """`hardmine predict`: predictions on `images` (or data.val) written and drawn to `out`;
        returns what was written."""


class DetectionTask(Task):
    """Faster R-CNN, Fast R-CNN and RetinaNet: boxes, COCO / VOC AP."""

    name = "detection"
    masks = False
    logged_metrics = ("AP", "AP50")
    headline = "AP"

    def training_dataset(
        self,
        cfg: Config,
        train: DatasetIndex,
        proposals: dict[int, Tensor] | None,
        hard_negatives: dict[int, Tensor] | None,
        batches_per_epoch: int,
    ) -> DetectionDataset:
        return DetectionDataset(
            train,
            train=True,
            hflip_prob=cfg.data.hflip_prob,
            seed=cfg.train.seed,
            proposals=proposals,
            hard_negatives=hard_negatives,
            augment=AugmentOptions.from_config(cfg.data),
            # mixup stops for the last data.mixup_off_last_epochs epochs of the batch sampler's epochs
            mixup=MixupOptions.from_config(cfg.data, cfg.solver.max_iter, batches_per_epoch),
        )

    def prepare(
        self,
        model: nn.Module,
        cfg: Config,
        train: DatasetIndex,
        proposals: dict[int, Tensor] | None,
        run_dir: Path | None,
    ) -> None:
        apply_dataset_priors(model, cfg, train, proposals, run_dir=run_dir)

    def evaluate(
        self,
        model: nn.Module,
        cfg: Config,
        index: DatasetIndex,
        device: torch.device,
        proposals: dict[int, Tensor] | None = None,
        pr_curve_path: Path | None = None,
        detections_path: Path | None = None,
    ) -> dict[str, float]:
        return evaluate_model(model, cfg, index, device, proposals, pr_curve_path, detections_path)

    def evaluate_checkpoint(
        self, checkpoint: str | Path, overrides: list[str], out: Path
    ) -> tuple[dict[str, float], Path]:
        return evaluate_detector_checkpoint(checkpoint, overrides, out)

    def predict(
        self,
        checkpoint: str | Path,
        overrides: list[str],
        images: list[Path],
        out: Path,
        score_thresh: float,
        max_images: int | None,
    ) -> str:
        index, predictions = predict_checkpoint(checkpoint, overrides, images)
        out.mkdir(parents=True, exist_ok=True)
        results_path = write_coco_results(out / "results.json", index, predictions)
        drawn = draw_predictions(index, predictions, out, score_thresh, max_images)
        return f"{len(predictions)} images: detections in {results_path}, {drawn} drawings in {out}"


class SegmentationTask(Task):
    """FCN and DeepLabV3 heads: semantic masks, mIoU (docs/segmentation.md)."""

    name = "segmentation"
    masks = True
    logged_metrics = ("mIoU", "pixel_accuracy")
    headline = "mIoU"

    def training_dataset(
        self,
        cfg: Config,
        train: DatasetIndex,
        proposals: dict[int, Tensor] | None,
        hard_negatives: dict[int, Tensor] | None,
        batches_per_epoch: int,
    ) -> DetectionDataset:
        return SegmentationDataset(
            train,
            train=True,
            hflip_prob=cfg.data.hflip_prob,
            seed=cfg.train.seed,
            augment=AugmentOptions.from_config(cfg.data),
        )

    def prepare(
        self,
        model: nn.Module,
        cfg: Config,
        train: DatasetIndex,
        proposals: dict[int, Tensor] | None,
        run_dir: Path | None,
    ) -> None:
        if cfg.seg_head.loss.weighted:  # class-balanced: weights from the training masks' pixel counts
            masks = (load_mask(record, train) for record in train.records)
            model.fit_class_weights(count_class_pixels(masks, train.num_classes))

    def evaluate(
        self,
        model: nn.Module,
        cfg: Config,
        index: DatasetIndex,
        device: torch.device,
        proposals: dict[int, Tensor] | None = None,
        pr_curve_path: Path | None = None,
        detections_path: Path | None = None,
    ) -> dict[str, float]:
        # `detections_path`: where an evaluation during training keeps its per-image results; for a
        # segmentation model each image's confusion matrix (hardmine compare's image bootstrap)
        return evaluate_segmentation(
            model, index, device, cfg.eval.batch_size, cfg.data.num_workers, confusions_path=detections_path
        )

    def evaluate_checkpoint(
        self, checkpoint: str | Path, overrides: list[str], out: Path
    ) -> tuple[dict[str, float], Path]:
        cfg, model, payload, device = load_trained(checkpoint, overrides)
        index = checked_split(cfg, payload, "val", checkpoint, masks=True)
        metrics = self.evaluate(model, cfg, index, device)
        extra = {"checkpoint": str(checkpoint), "dataset": str(index.source)}
        return metrics, write_metrics_json(out / "metrics.json", metrics, extra=extra)

    def predict(
        self,
        checkpoint: str | Path,
        overrides: list[str],
        images: list[Path],
        out: Path,
        score_thresh: float,
        max_images: int | None,
    ) -> str:
        cfg, model, payload, device = load_trained(checkpoint, overrides)
        if images:
            index = index_of_images(images, trained_categories(payload))
        else:
            index = checked_split(cfg, payload, "val", checkpoint, masks=True)
        predictions = predicted_masks(model, index, device, cfg.eval.batch_size, with_targets=not images)
        drawn = draw_mask_predictions(index, predictions, out, max_images)
        return f"{drawn} images: masks drawn in {out}, label PNGs in {out / 'masks'}"


DETECTION = DetectionTask()
SEGMENTATION = SegmentationTask()


def task_of(cfg: Config) -> Task:
    """The task of a config: segmentation for model.arch fcn / deeplabv3, else detection."""
    return SEGMENTATION if cfg.model.arch in SEGMENTATION_ARCHS else DETECTION


def task_of_checkpoint(checkpoint: str | Path) -> Task:
    """The task of the model a checkpoint holds (from its config's model.arch)."""
    payload: dict[str, Any] = load_checkpoint(checkpoint)
    require_keys(payload, ("config",), checkpoint)
    arch = payload["config"].get("model", {}).get("arch")
    if not isinstance(arch, str):
        raise CheckpointError(f"{checkpoint}: its config has no model.arch")
    return SEGMENTATION if arch in SEGMENTATION_ARCHS else DETECTION
