"""Scoring the runs of a comparison on resampled validation images, from the detections their
evaluations kept (`detections/ITERATION.json`; a segmentation run's: each image's confusion
matrix, scored by mIoU), for the verdicts and the racing decisions.

Every run is scored on the same bootstrap replicates (`image_bootstrap.image_samples`), so the
differences between runs are paired over images; runs on other validation images are not compared.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hardmine.config import SEGMENTATION_ARCHS, Config
from hardmine.data.records import DatasetIndex
from hardmine.data.sources import resolve_split
from hardmine.engine.evaluation import detections_file
from hardmine.report.image_bootstrap import REPLICATES, image_samples, per_image_evaluation, read_detections
from hardmine.report.runs import PlannedRun
from hardmine.report.verdicts import MethodScores, RunScores
from hardmine.segmentation.image_scores import read_confusions


def _silent(text: str) -> None:
    """The validation set was checked (and its skips reported) by the runs themselves."""


@dataclass
class Scorer:
    """Scores runs at an iteration; caches the validation sets, the image draws and the scores."""

    replicates: int = REPLICATES
    _indexes: dict[str, DatasetIndex] = field(default_factory=dict)
    _samples: dict[int, np.ndarray] = field(default_factory=dict)
    _scores: dict[tuple[str, int], RunScores | None] = field(default_factory=dict)

    def validation_set(self, cfg: Config) -> DatasetIndex:
        key = json.dumps(cfg.to_dict()["data"], sort_keys=True)
        if key not in self._indexes:
            self._indexes[key] = resolve_split(cfg.data, "val", say=_silent)
        return self._indexes[key]

    def samples(self, num_images: int) -> np.ndarray:
        if num_images not in self._samples:
            self._samples[num_images] = image_samples(num_images, self.replicates)
        return self._samples[num_images]

    def run(self, planned: PlannedRun, iteration: int) -> tuple[RunScores, tuple[int, ...]] | None:
        """The run's AP at `iteration` on the full validation set and on every replicate, with the
        ids of the images scored; None without detections from that evaluation."""
        key = (str(planned.run_dir), iteration)
        if key not in self._scores:
            path = detections_file(planned.run_dir, iteration)
            scores = None
            if path.is_file() and planned.cfg.model.arch in SEGMENTATION_ARCHS:  # per-image confusions
                confusions = read_confusions(path)
                replicates = confusions.replicates(self.samples(confusions.num_images))
                scores = (RunScores(planned.seed, confusions.miou(), replicates), confusions.image_ids)
            elif path.is_file():
                index = self.validation_set(planned.cfg)
                evaluation = per_image_evaluation(index, read_detections(path, index))
                replicates = evaluation.replicates(self.samples(evaluation.num_images))
                scores = (RunScores(planned.seed, evaluation.ap(), replicates), evaluation.image_ids)
            self._scores[key] = scores
        return self._scores[key]

    def methods(
        self, planned: Sequence[PlannedRun], iteration: Callable[[PlannedRun], int]
    ) -> dict[str, list[MethodScores]]:
        """Per family, every method with at least one scored run (at `iteration(run)`), in spec
        order; runs whose images differ from their family's first scored run are left out."""
        families: dict[str, list[MethodScores]] = {}
        images: dict[str, tuple[int, ...]] = {}
        for p in planned:
            scored = self.run(p, iteration(p))
            if scored is None:
                continue
            scores, image_ids = scored
            if images.setdefault(p.run.family, image_ids) != image_ids:
                continue
            members = families.setdefault(p.run.family, [])
            method = next((m for m in members if m.name == p.run.name), None)
            if method is None:
                metric = "mIoU" if p.cfg.model.arch in SEGMENTATION_ARCHS else "AP"
                method = MethodScores(p.run.name, p.run.family, {}, len(image_ids), metric)
                members.append(method)
            method.runs[p.seed] = scores
        return families
