"""Dataset statistics of sampling-free training: how a head labels its candidates over a training set.

Chen et al. ("Is Sampling Heuristics Necessary in Training Deep Object Detectors?") replace
sampling by three things computed from these counts:

* the optimal bias initialisation: with N assigned candidates (foreground + background), N_f of
  them foreground, and C classes, the classification loss at the start of training is smallest
  when every class probability is pi = N_f / (N * C): a sigmoid bias of -log((1 - pi) / pi); for
  a softmax head, biases whose softmax is (1 - N_f / N, pi, ..., pi);
* class-adaptive score thresholds at inference: theta_j = (N_f / N) * (N_j / sum_k N_k), with N_j
  the ground-truth instances of class j.

`count_assignments` labels candidates exactly as the heads do in training (`match_boxes`, then the
head's `assign_labels` thresholds), at every training scale, from the annotations alone: no image
is read. The guided loss scaling is in `hardmine.losses.guided`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from hardmine.data.records import ImageRecord
from hardmine.models.matching import candidates_from_matches, match_boxes
from hardmine.models.transform import scaled_max_size
from hardmine.sampling.base import IoUThresholds, assign_labels


@dataclass(frozen=True)
class AssignmentCounts:
    """One head's labelled candidates over a training set.

    num_fg / num_bg: candidates labelled foreground / background (ignored ones are not counted).
    gt_per_class:    N_j, ground-truth instances of class j = 1..C (entry j - 1).
    """

    num_fg: int
    num_bg: int
    gt_per_class: tuple[int, ...]

    @property
    def num_assigned(self) -> int:
        """N: the candidates that enter the loss without sampling (foreground + background)."""
        return self.num_fg + self.num_bg

    @property
    def fg_ratio(self) -> float:
        """N_f / N."""
        return self.num_fg / self.num_assigned

    def prior(self, num_classes: int) -> float:
        """pi = N_f / (N * C): each class's probability at the optimum of the initial loss."""
        return self.fg_ratio / num_classes

    def check(self, head: str) -> None:
        """Refuse counts the formulas cannot use (no candidates, no foreground, no objects)."""
        if self.num_assigned == 0:
            raise ValueError(f"{head}: no candidate is foreground or background in the training set")
        if self.num_fg == 0:
            raise ValueError(
                f"{head}: no candidate reaches the foreground IoU threshold over the whole training "
                "set, so the sampling-free prior would be 0; lower the head's fg_iou or check the boxes"
            )
        if sum(self.gt_per_class) == 0:
            raise ValueError(f"{head}: the training set has no ground-truth boxes")

    def to_dict(self) -> dict[str, object]:
        return {"num_fg": self.num_fg, "num_bg": self.num_bg, "gt_per_class": list(self.gt_per_class)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> AssignmentCounts:
        gt = data["gt_per_class"]
        assert isinstance(gt, list)
        return cls(int(data["num_fg"]), int(data["num_bg"]), tuple(int(n) for n in gt))  # type: ignore[arg-type]


def sigmoid_prior_bias(prob: float) -> float:
    """Bias b with sigmoid(b) = prob: -log((1 - prob) / prob)."""
    if not 0.0 < prob < 1.0:
        raise ValueError(f"a prior probability must be in (0, 1), got {prob}")
    return -math.log((1.0 - prob) / prob)


def softmax_prior_bias(counts: AssignmentCounts, num_classes: int) -> Tensor:
    """[C + 1] biases whose softmax is (1 - N_f / N, pi, ..., pi), background first."""
    pi = counts.prior(num_classes)
    background = 1.0 - counts.fg_ratio
    if background <= 0.0:
        raise ValueError("every assigned candidate is foreground: no background probability to set")
    return torch.tensor([math.log(background)] + [math.log(pi)] * num_classes)


def class_adaptive_thresholds(counts: AssignmentCounts) -> Tensor:
    """[C] score thresholds theta_j = (N_f / N) * (N_j / sum_k N_k)."""
    gt = torch.tensor(counts.gt_per_class, dtype=torch.float64)
    return (counts.fg_ratio * gt / gt.sum()).float()


def store_class_thresholds(buffer: Tensor | None, counts: AssignmentCounts) -> list[float]:
    """Write the class-adaptive thresholds into a head's `class_score_thresh` buffer; returns them."""
    if buffer is None:
        raise ValueError("this head was built without class_adaptive_thresh")
    buffer.copy_(class_adaptive_thresholds(counts))
    return buffer.tolist()


def score_thresholds(buffer: Tensor | None, fixed: float, option: str) -> Tensor | float:
    """A head's inference threshold: its class-adaptive ones ([C]) when it has them, else `fixed`.

    Thresholds that were never computed (NaN) are an error naming the config `option`.
    """
    if buffer is None:
        return fixed
    if torch.isnan(buffer).any():
        raise RuntimeError(
            f"{option} is on but the thresholds were never computed: train with hardmine train, "
            "or call hardmine.engine.dataset_priors.apply_dataset_priors"
        )
    return buffer


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(h, w) after torchvision's `GeneralizedRCNNTransform.resize` at shorter side `min_size`.

    Same arithmetic (eager mode): a Python-float scale, then `interpolate`'s int(size * scale).
    """
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


def _padded(size: int, divisible: int) -> int:
    return int(math.ceil(size / divisible) * divisible)


class AnchorGrid:
    """Anchors of one image of a given padded size, as the detector makes them (memoised).

    Feature-map sizes come from one backbone pass over zeros per padded size, so they are exact
    for any backbone; the anchors come from the detector's own `AnchorGenerator`.
    """

    def __init__(self, backbone: nn.Module, anchor_generator: AnchorGenerator) -> None:
        self.backbone = backbone
        self.anchor_generator = anchor_generator
        self._cache: dict[tuple[int, int], Tensor] = {}

    @torch.no_grad()
    def __call__(self, padded_h: int, padded_w: int) -> Tensor:
        key = (padded_h, padded_w)
        if key not in self._cache:
            param = next(self.backbone.parameters())
            images = torch.zeros(1, 3, padded_h, padded_w, device=param.device, dtype=param.dtype)
            was_training = self.backbone.training
            self.backbone.eval()  # no BatchNorm statistics updates from the probe
            features = list(self.backbone(images).values())
            self.backbone.train(was_training)
            image_list = ImageList(images, [(padded_h, padded_w)])
            self._cache[key] = self.anchor_generator(image_list, features)[0].cpu()
        return self._cache[key]


@dataclass(frozen=True)
class HeadProbe:
    """How one head turns an image's boxes into labelled candidates.

    anchors:         the detector's anchors (RPN, dense head, and the Faster R-CNN RoI-head proxy)
                     or None when the candidates are the image's proposals (Fast R-CNN).
    thresholds:      the head's IoU thresholds (its sampler's).
    low_quality:     whether each ground truth's best candidates are forced to foreground.
    add_gt:          whether the ground-truth boxes are added to the candidates (RoI heads).
    class_agnostic:  count objectness (the RPN): every ground truth is class 1.
    """

    anchors: AnchorGrid | None
    thresholds: IoUThresholds
    low_quality: bool = False
    add_gt: bool = False
    class_agnostic: bool = False


def count_assignments(
    records: Iterable[ImageRecord],
    probe: HeadProbe,
    num_classes: int,
    min_sizes: Sequence[int],
    max_size: int,
    size_divisible: int = 32,
    proposals: dict[int, Tensor] | None = None,
) -> AssignmentCounts:
    """Count one head's foreground and background candidates over `records` (see the module doc).

    Candidates are summed over every training scale in `min_sizes`, each with the longer-side cap
    the model trains it with (`scaled_max_size`), so their ratio is the expectation over the random
    choice of scale; ground-truth instances are counted once. Each
    image is taken alone, padded to `size_divisible`, as in a batch of same-size images. Proposals
    (Fast R-CNN) are in original image coordinates, keyed by image id.
    """
    num_fg = num_bg = 0
    gt_per_class = [0] * num_classes
    for record in records:
        labels = torch.as_tensor(record.labels, dtype=torch.long)
        for j in labels.tolist():
            gt_per_class[j - 1] += 1
        for min_size in min_sizes:
            cap = scaled_max_size(max_size, min_size, min_sizes[-1])  # as DetectionTransform trains
            h, w = resized_size(record.height, record.width, min_size, cap)
            scale = torch.tensor([w / record.width, h / record.height] * 2)
            boxes = torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4) * scale
            ignore = torch.as_tensor(record.ignore_boxes, dtype=torch.float32).reshape(-1, 4) * scale
            if probe.anchors is not None:
                candidates = probe.anchors(_padded(h, size_divisible), _padded(w, size_divisible))
            else:
                if proposals is None or record.image_id not in proposals:
                    raise ValueError(f"no proposals for image id {record.image_id} ({record.file_name})")
                candidates = proposals[record.image_id].float().reshape(-1, 4) * scale
            if probe.add_gt:
                candidates = torch.cat([candidates, boxes])
            gt_labels = torch.ones_like(labels) if probe.class_agnostic else labels
            match = match_boxes(
                candidates, boxes, gt_labels, ignore, low_quality_min_iou=0.0 if probe.low_quality else None
            )
            assigned = assign_labels(candidates_from_matches([match], [candidates]), probe.thresholds)[0]
            num_fg += int((assigned > 0).sum())
            num_bg += int((assigned == 0).sum())
    return AssignmentCounts(num_fg, num_bg, tuple(gt_per_class))
