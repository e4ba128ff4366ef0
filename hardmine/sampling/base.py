"""The sampler protocol shared by the RoI head, the RPN and the dense head.

A sampler sees tensors only, never the head that owns it:

* `Candidates`: for each image, every candidate (RoI, anchor) with its best IoU to a ground-truth
  box, the class of that box, its coordinates and optional ignore / forced-foreground masks.
* an optional scoring callable (`ScoreFn`) that the head builds for samplers that rank by loss
  (OHEM, SSD hard negatives). The sampler calls it with the labels it assigned and gets back, per
  image, each candidate's classification and box-regression loss (`CandidateLosses`), computed
  without autograd.

It returns one `SampleResult` per image: the selected candidate indices, their target labels and,
for methods that re-weight, per-sample loss weights.

A sampler is a dataclass whose fields declared with `hardmine.options.opt` are its options: the config
section `HEAD.sampler` (`roi_head.sampler: {name: ohem, batch_size_per_image: 64}`), its validation
(`__post_init__`), `--help` and the build all derive from them. Its `name` is the one the config
uses; `hardmine.sampling.SAMPLERS` finds every sampler of the package by it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from hardmine.options import check_choices

#: Assigned label of a candidate that is neither foreground nor background (never sampled).
IGNORE = -1


@dataclass
class CandidateLosses:
    """One image's per-candidate losses from a head's read-only pass (no autograd).

    cls: [N] classification loss of each candidate against its assigned label (ignored ones as
         background); box: [N] box-regression loss, 0 where the candidate is not foreground.
    """

    cls: Tensor
    box: Tensor

    @property
    def total(self) -> Tensor:
        return self.cls + self.box


#: Called with the assigned labels (one [N_i] tensor per image: >= 1 foreground class, 0 background,
#: -1 ignored) and returns each image's `CandidateLosses`, computed without autograd.
ScoreFn = Callable[[list[Tensor]], list["CandidateLosses"]]


@dataclass(frozen=True)
class IoUThresholds:
    """Foreground at IoU >= `fg`; background at `bg_lo` <= IoU < `bg_hi`; the rest is ignored."""

    fg: float = 0.5
    bg_lo: float = 0.1
    bg_hi: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.bg_lo <= self.bg_hi <= self.fg <= 1.0:
            raise ValueError(
                f"IoU thresholds must satisfy 0 <= bg_lo <= bg_hi <= fg <= 1, got "
                f"bg_lo={self.bg_lo}, bg_hi={self.bg_hi}, fg={self.fg}"
            )


@dataclass
class Candidates:
    """Per-image candidate sets for one batch; every list has one entry per image.

    ious:      [N_i] float, best IoU of each candidate with any ground-truth box (0 when none).
    gt_labels: [N_i] long, class (1..C) of that best ground-truth box (0 when none).
    boxes:     [N_i, 4] candidate boxes (x1, y1, x2, y2), used by samplers that de-duplicate.
    ignore:    [N_i] bool, candidates inside an ignore region: never background.
    force_fg:  [N_i] bool, low-quality matches (the best candidate of a ground truth): foreground.
    gt_index:  [N_i] long, which ground-truth box of the image that best box is (0 when none; see
               `gt_labels`), for samplers that treat objects alike (instance balancing).
    """

    ious: list[Tensor]
    gt_labels: list[Tensor]
    boxes: list[Tensor]
    ignore: list[Tensor] | None = None
    force_fg: list[Tensor] | None = None
    gt_index: list[Tensor] | None = None

    def __len__(self) -> int:
        return len(self.ious)


@dataclass
class SampleResult:
    """What a sampler keeps of one image's candidates.

    indices: [K] long, positions into that image's candidates.
    labels:  [K] long, training target (>= 1 foreground class, 0 background).
    weights: [K] float per-sample loss weight, or None for uniform weights.
    """

    indices: Tensor
    labels: Tensor
    weights: Tensor | None = None

    @property
    def num_fg(self) -> int:
        return int((self.labels > 0).sum())

    @property
    def num_bg(self) -> int:
        return int((self.labels == 0).sum())


def assign_labels(candidates: Candidates, thresholds: IoUThresholds) -> list[Tensor]:
    """Label each candidate: its GT class if foreground, 0 if background, `IGNORE` otherwise."""
    out = []
    for i, (ious, gt_labels) in enumerate(zip(candidates.ious, candidates.gt_labels)):
        fg = ious >= thresholds.fg
        if candidates.force_fg is not None:
            fg = fg | candidates.force_fg[i]
        fg = fg & (gt_labels > 0)
        bg = (ious >= thresholds.bg_lo) & (ious < thresholds.bg_hi) & ~fg
        if candidates.ignore is not None:
            bg = bg & ~candidates.ignore[i]
        labels = torch.full_like(gt_labels, IGNORE)
        labels[bg] = 0
        labels[fg] = gt_labels[fg]
        out.append(labels)
    return out


#: The read-only scoring passes a head can run: "exact"; "bf16" (the box head under bfloat16
#: autocast, RoIAlign in float32); "coarse" (RoIAlign with one sampling point per bin instead of the
#: head's sampling_ratio); "bf16_coarse" (both).
SCORING_PASSES = ("exact", "bf16", "coarse", "bf16_coarse")


@dataclass
class Sampler(ABC):
    """Chooses which candidates train a head. Subclasses set `name` and implement `select`; their
    options are their fields declared with `opt`, checked in `__post_init__` (call this one's).

    `thresholds` is not an option: it is the labelling of the head that uses the sampler.
    """

    thresholds: IoUThresholds = field(default_factory=IoUThresholds)

    #: The sampler's name in configs (`roi_head.sampler=NAME`).
    name: ClassVar[str]
    #: True when `select` needs the scoring callable (loss-ranking samplers).
    needs_scores: ClassVar[bool] = False
    #: The lower bound of the background IoU range in the sampler's paper, used where a head leaves
    #: its `bg_iou_lo` unset (null); None: the sampler has none of its own.
    paper_bg_iou_lo: ClassVar[float | None] = None

    def __post_init__(self) -> None:
        check_choices(self)
        self.last_stats: dict[str, float] = {}

    @property
    def trains_by_loss_mask(self) -> bool:
        """How a head trains the selection: False (the usual) runs the trainable pass over the
        selected candidates only; True runs it over every candidate and zeroes the losses of the
        unselected ones (one pass instead of a read-only pass plus a trainable one)."""
        return False

    @property
    def scoring(self) -> str:
        """How a head computes the losses `score_fn` returns (loss-ranking samplers): "exact" (the
        trained model's own forward), or a cheaper approximation a sampler may opt into (see
        `SCORING_PASSES`)."""
        return "exact"

    def __call__(self, candidates: Candidates, score_fn: ScoreFn | None = None) -> list[SampleResult]:
        if self.needs_scores and score_fn is None:
            raise ValueError(f"{type(self).__name__} ranks candidates by loss and needs a score_fn")
        labels = assign_labels(candidates, self.thresholds)
        return self.select(labels, candidates, score_fn)

    @abstractmethod
    def select(
        self, labels: list[Tensor], candidates: Candidates, score_fn: ScoreFn | None
    ) -> list[SampleResult]:
        """Pick candidates given their assigned labels (see `assign_labels`)."""


def take(labels: Tensor, indices: Tensor) -> SampleResult:
    """A `SampleResult` for `indices`, with the labels assigned to them."""
    return SampleResult(indices=indices, labels=labels[indices])
