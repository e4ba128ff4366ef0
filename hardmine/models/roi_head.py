"""hardmine's RoI head for Fast and Faster R-CNN: the sampler and the losses are options.

Built from torchvision's blocks (`MultiScaleRoIAlign`, `TwoMLPHead`, `FastRCNNPredictor`,
`BoxCoder`, `batched_nms`). Training goes through the path every head shares
(`hardmine.models.criterion.HeadCriterion`), per batch:

1. candidates = proposals + ground-truth boxes (+ mined hard negatives, `hardmine.models.hard_negatives`),
   matched to the ground truth (`match_boxes`);
2. the sampler picks which candidates train the head; loss-ranking samplers get a scoring
   callable that runs the head over all candidates under `torch.no_grad()` (`score_chunk_size`
   RoIs at a time, `predict_in_chunks`);
3. only the picked candidates go through RoIAlign and the box head with autograd (or, for a
   sampler that trains by a loss mask, every candidate, the others' losses zeroed).

Losses: a softmax classification loss of the loss table (`cross-entropy`, optionally against
label-smoothed targets, or softmax focal loss) and class-specific box regression (smooth L1, L1,
balanced L1, GIoU; foreground only), each summed with the per-sample weights (sampler weights
times the per-box "weights" of mixup, for foreground) and divided by the number of sampled
candidates (torchvision's normalisation). Loss-ranking samplers rank by the same weighted losses.

Sampling-free training (`docs/soft-sampling.md`, usually with `sampler=none`): `guided_loss` > 0
divides the box loss by the number of foreground box coordinates instead (4 per foreground sample:
the per-coordinate mean of the authors' code) and rescales the classification loss each step to
`guided_loss` times the box loss's value (their RoI head: 2); `apply_priors` sets
the softmax bias so the initial class probabilities are the training set's (background
1 - N_f / N, each class N_f / (N * C)) and, with `class_adaptive_thresh`, the per-class score
thresholds (`class_score_thresh`, a buffer) that replace `score_thresh` at inference.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import MultiScaleRoIAlign, batched_nms

from hardmine import ops
from hardmine.losses.box import RegLoss, SmoothL1
from hardmine.losses.classification import SOFTMAX, ClsLoss, CrossEntropy
from hardmine.models.criterion import CriterionHead, HeadCriterion
from hardmine.models.hard_negatives import append_hard_negatives
from hardmine.models.iterative import IterativeRegression, first_round
from hardmine.models.priors import (
    AssignmentCounts,
    softmax_prior_bias,
    store_class_thresholds,
)
from hardmine.options import require
from hardmine.sampling.base import Sampler


class RoIHead(CriterionHead, nn.Module):
    """Classify and refine RoIs; see the module docstring for the training procedure.

    `cls_loss` must be a softmax loss (default: cross-entropy), `reg_loss` any box loss (default:
    smooth L1 with beta 1/9, torchvision's).
    """

    def __init__(
        self,
        box_roi_pool: MultiScaleRoIAlign,
        box_head: nn.Module,
        box_predictor: nn.Module,
        sampler: Sampler,
        cls_loss: ClsLoss | None = None,
        reg_loss: RegLoss | None = None,
        box_coder_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        add_gt_as_proposals: bool = True,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        score_chunk_size: int = 256,
        guided_loss: float = 0.0,
        class_adaptive_thresh: bool = False,
        iterative: IterativeRegression | None = None,
    ) -> None:
        super().__init__()
        cls_loss = CrossEntropy() if cls_loss is None else cls_loss
        require(cls_loss.activation == SOFTMAX, "cls_loss", f"must be a softmax loss, not {cls_loss.name!r}")
        require(score_chunk_size > 0, "score_chunk_size", "must be > 0")
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.box_coder = BoxCoder(box_coder_weights)
        self.criterion = HeadCriterion(
            sampler,
            cls_loss,
            SmoothL1() if reg_loss is None else reg_loss,
            self.box_coder,
            prefix="roi",
            guided_loss=guided_loss,
            class_specific_boxes=True,
            box_loss_over_samples=True,
        )
        self.add_gt_as_proposals = add_gt_as_proposals
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.score_chunk_size = score_chunk_size
        # Class-adaptive score thresholds (NaN until `apply_priors`); a buffer, so checkpoints carry it.
        self.class_score_thresh: Tensor | None
        num_classes = box_predictor.cls_score.out_features - 1 if class_adaptive_thresh else 0
        thresholds = torch.full((num_classes,), float("nan")) if class_adaptive_thresh else None
        self.register_buffer("class_score_thresh", thresholds)
        #: test-time iterative box regression (None or 0 rounds: the usual single pass)
        self.iterative = iterative

    @torch.no_grad()
    def apply_priors(self, counts: AssignmentCounts, bias: bool, thresholds: bool) -> dict[str, object]:
        """Sampling-free initialisation from the training set's counts; returns the values set."""
        applied: dict[str, object] = {}
        if bias:
            cls_score = self.box_predictor.cls_score
            values = softmax_prior_bias(counts, cls_score.out_features - 1)
            cls_score.bias.copy_(values)
            applied["bias"] = values.tolist()
        if thresholds:
            applied["class_score_thresh"] = store_class_thresholds(self.class_score_thresh, counts)
        return applied

    def predict(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Class logits [K, C+1] and class-specific deltas [K, 4(C+1)] for the given boxes."""
        pooled = self.box_roi_pool(features, boxes, image_shapes)
        return self.box_predictor(self.box_head(pooled))

    @torch.no_grad()
    def predict_in_chunks(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
        scoring: str = "exact",
    ) -> tuple[Tensor, Tensor]:
        """`predict` without autograd, `score_chunk_size` boxes at a time (in image order).

        The read-only pass of loss-ranking samplers runs over every candidate; in chunks its pooled
        features (K x C x 7 x 7 floats) never all exist at once, so it adds little to peak memory.
        `scoring` (`hardmine.sampling.base.SCORING_PASSES`) may trade exactness for speed: "bf16"
        runs the box head under bfloat16 autocast, "coarse" pools with one sampling point per bin;
        the outputs are float32 either way.
        """
        pool = self.box_roi_pool
        if "coarse" in scoring:
            pool = ops.MultiScaleRoIAlign.like(pool, sampling_ratio=1)
        device = next(iter(features.values())).device.type
        precision = torch.autocast(device, dtype=torch.bfloat16) if "bf16" in scoring else nullcontext()
        logits, deltas = [], []
        with precision:
            for i, image_boxes in enumerate(boxes):
                for chunk in image_boxes.split(self.score_chunk_size):
                    # RoIAlign takes one box list per image; the other images get none.
                    per_image = [chunk if j == i else chunk[:0] for j in range(len(boxes))]
                    chunk_logits, chunk_deltas = self.box_predictor(
                        self.box_head(pool(features, per_image, image_shapes))
                    )
                    logits.append(chunk_logits.float())
                    deltas.append(chunk_deltas.float())
        if not logits:  # no boxes in any image
            return self.predict(features, boxes, image_shapes)
        return torch.cat(logits), torch.cat(deltas)

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("the RoI head needs targets in training mode")
            return [], self._losses(features, proposals, image_shapes, targets)
        if self.iterative is not None and self.iterative.rounds > 0:
            return self.iterative(self, features, proposals, image_shapes), {}
        logits, deltas = self.predict(features, proposals, image_shapes)
        return self._postprocess(logits, deltas, proposals, image_shapes), {}

    def _losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        if self.add_gt_as_proposals:
            proposals = [torch.cat([p, t["boxes"].to(p.dtype)]) for p, t in zip(proposals, targets)]
        candidates = append_hard_negatives(proposals, targets)  # mined regions (offline bootstrapping)

        def outputs(indices: list[Tensor] | None) -> tuple[Tensor, Tensor]:
            """The head over the chosen candidates (all: None); in chunks without autograd."""
            if indices is None and not torch.is_grad_enabled():
                return self.predict_in_chunks(features, candidates, image_shapes, self.sampler.scoring)
            boxes = candidates if indices is None else [c[i] for c, i in zip(candidates, indices)]
            return self.predict(features, boxes, image_shapes)

        return self.criterion(candidates, targets, outputs)

    def _postprocess(
        self, logits: Tensor, deltas: Tensor, proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Class-specific boxes above the threshold(s), per-class NMS, the best `detections_per_img`."""
        out = []
        for d in first_round(self, logits, deltas, proposals, image_shapes):
            keep = batched_nms(d.boxes, d.scores, d.labels, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": d.boxes[keep], "scores": d.scores[keep], "labels": d.labels[keep]})
        return out
