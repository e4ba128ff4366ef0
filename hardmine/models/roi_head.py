"""hardmine's RoI head for Fast and Faster R-CNN: the sampler and the losses are options.

Built from torchvision's blocks (`MultiScaleRoIAlign`, `TwoMLPHead`, `FastRCNNPredictor`,
`BoxCoder`, `batched_nms`). Training, per batch:

1. candidates = proposals + ground-truth boxes (+ mined hard negatives, `hardmine.models.hard_negatives`),
   matched to the ground truth (`match_boxes`);
2. the sampler picks which candidates train the head; loss-ranking samplers get a scoring
   callable that runs the head over all candidates under `torch.no_grad()`;
3. only the picked candidates go through RoIAlign and the box head with autograd.

Losses: per-sample classification (`CLS_LOSSES`: cross-entropy, optionally against
`label_smoothing`-smoothed targets, or softmax focal loss with `focal_gamma`) and class-specific
box regression (`REG_LOSSES`: smooth L1, L1 or balanced L1 with `balanced_l1_alpha/gamma/beta`;
foreground only), each summed with the per-sample weights (sampler weights times the per-box
"weights" of mixup, for foreground) and divided by the number of sampled candidates
(torchvision's normalisation). Loss-ranking samplers rank by the same weighted losses.

Sampling-free training (`docs/soft-sampling.md`, usually with `sampler=none`): `guided_loss` > 0
divides the box loss by the number of foreground box coordinates instead (4 per foreground sample:
the per-coordinate mean of the authors' code) and rescales the classification loss each step to
`guided_loss` times the box loss's value (their RoI head: 2); `apply_priors` sets
the softmax bias so the initial class probabilities are the training set's (background
1 - N_f / N, each class N_f / (N * C)) and, with `class_adaptive_thresh`, the per-class score
thresholds (`class_score_thresh`, a buffer) that replace `score_thresh` at inference.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import MultiScaleRoIAlign, batched_nms

from hardmine.distributed import batch_normaliser
from hardmine.losses.guided import guided_loss_scale
from hardmine.losses.per_sample import CLS_LOSSES, REG_LOSSES
from hardmine.losses.smoothing import check_label_smoothing
from hardmine.models.hard_negatives import append_hard_negatives
from hardmine.models.iterative import IterativeRegression, first_round
from hardmine.models.matching import (
    Match,
    candidate_box_weights,
    candidates_from_matches,
    match_boxes,
    matched_boxes,
    sample_weights,
)
from hardmine.models.priors import (
    AssignmentCounts,
    softmax_prior_bias,
    store_class_thresholds,
)
from hardmine.models.stats import sampling_stats
from hardmine.sampling.base import CandidateLosses, Sampler


class RoIHead(nn.Module):
    """Classify and refine RoIs; see the module docstring for the training procedure."""

    def __init__(
        self,
        box_roi_pool: MultiScaleRoIAlign,
        box_head: nn.Module,
        box_predictor: nn.Module,
        sampler: Sampler,
        cls_loss: str = "ce",
        reg_loss: str = "smooth_l1",
        smooth_l1_beta: float = 1.0 / 9,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
        balanced_l1_alpha: float = 0.5,
        balanced_l1_gamma: float = 1.5,
        balanced_l1_beta: float = 1.0,
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
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"unknown cls_loss {cls_loss!r}; choose from {sorted(CLS_LOSSES)}")
        if reg_loss not in REG_LOSSES:
            raise ValueError(f"unknown reg_loss {reg_loss!r}; choose from {sorted(REG_LOSSES)}")
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.sampler = sampler
        self.cls_loss = CLS_LOSSES[cls_loss]
        if cls_loss == "softmax_focal":
            self.cls_loss = partial(self.cls_loss, gamma=focal_gamma)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        if label_smoothing > 0:
            if cls_loss != "ce":
                raise ValueError(f"label_smoothing applies to cls_loss='ce' only, not {cls_loss!r}")
            self.cls_loss = partial(self.cls_loss, label_smoothing=label_smoothing)
        self.reg_loss = REG_LOSSES[reg_loss]
        if reg_loss == "balanced_l1":
            self.reg_loss = partial(self.reg_loss, alpha=balanced_l1_alpha, gamma=balanced_l1_gamma)
        self.smooth_l1_beta = smooth_l1_beta
        #: the beta handed to the box loss: balanced L1's or smooth L1's
        self.reg_beta = balanced_l1_beta if reg_loss == "balanced_l1" else smooth_l1_beta
        self.box_coder = BoxCoder(box_coder_weights)
        self.add_gt_as_proposals = add_gt_as_proposals
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        if score_chunk_size <= 0:
            raise ValueError(f"score_chunk_size must be > 0, got {score_chunk_size}")
        self.score_chunk_size = score_chunk_size
        if guided_loss < 0:
            raise ValueError(f"guided_loss must be >= 0 (0 = off), got {guided_loss}")
        self.guided_loss = guided_loss
        # Class-adaptive score thresholds (NaN until `apply_priors`); a buffer, so checkpoints carry it.
        self.class_score_thresh: Tensor | None
        num_classes = box_predictor.cls_score.out_features - 1 if class_adaptive_thresh else 0
        thresholds = torch.full((num_classes,), float("nan")) if class_adaptive_thresh else None
        self.register_buffer("class_score_thresh", thresholds)
        #: test-time iterative box regression (None or 0 rounds: the usual single pass)
        self.iterative = iterative
        self.last_stats: dict[str, Tensor] = {}

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

    def _weighted_losses(
        self, cls: Tensor, reg: Tensor, labels: Tensor, weights: Tensor, num_sampled: int
    ) -> dict[str, Tensor]:
        """The head's two losses from per-sample ones (see the module docstring); in a distributed
        run the normalisers count the global batch (`batch_normaliser`)."""
        sampled_norm = batch_normaliser(num_sampled)
        cls_loss = (cls * weights).sum() / sampled_norm
        # sampling-free: the mean over foreground box coordinates, as the authors' code
        box_norm = batch_normaliser(4 * int((labels > 0).sum())) if self.guided_loss > 0 else sampled_norm
        box_loss = (reg * weights).sum() / box_norm
        if self.guided_loss > 0:
            cls_loss = guided_loss_scale(cls_loss, box_loss, self.guided_loss)
        return {"loss_roi_cls": cls_loss, "loss_roi_box": box_loss}

    def predict(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Class logits [K, C+1] and class-specific deltas [K, 4(C+1)] for the given boxes."""
        pooled = self.box_roi_pool(features, boxes, image_shapes)
        return self.box_predictor(self.box_head(pooled))

    @torch.no_grad()
    def predict_in_chunks(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """`predict` without autograd, `score_chunk_size` boxes at a time (in image order).

        The read-only pass of loss-ranking samplers runs over every candidate; in chunks its pooled
        features (K x C x 7 x 7 floats) never all exist at once, so it adds little to peak memory.
        """
        logits, deltas = [], []
        for i, image_boxes in enumerate(boxes):
            for chunk in image_boxes.split(self.score_chunk_size):
                # RoIAlign takes one box list per image; the other images get none.
                per_image = [chunk if j == i else chunk[:0] for j in range(len(boxes))]
                chunk_logits, chunk_deltas = self.predict(features, per_image, image_shapes)
                logits.append(chunk_logits)
                deltas.append(chunk_deltas)
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

    def _regression_targets(
        self, match: Match, target: dict[str, Tensor], boxes: Tensor, indices: Tensor | None = None
    ) -> Tensor:
        """Encoded deltas from each candidate (or those at `indices`) to its matched ground truth."""
        return self.box_coder.encode_single(matched_boxes(match, target["boxes"], indices), boxes)

    def _per_sample_losses(
        self, logits: Tensor, deltas: Tensor, labels: Tensor, reg_targets: Tensor
    ) -> tuple[Tensor, Tensor]:
        """[K] classification and [K] regression loss (0 for background samples)."""
        cls = self.cls_loss(logits, labels)
        reg = torch.zeros_like(cls)
        fg = torch.nonzero(labels > 0).flatten()
        if fg.numel():
            pred = deltas.view(deltas.shape[0], -1, 4)[fg, labels[fg]]
            reg = reg.index_put((fg,), self.reg_loss(pred, reg_targets[fg], self.reg_beta).to(reg.dtype))
        return cls, reg

    def _losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        if self.add_gt_as_proposals:
            proposals = [torch.cat([p, t["boxes"].to(p.dtype)]) for p, t in zip(proposals, targets)]
        proposals = append_hard_negatives(proposals, targets)  # mined regions (offline bootstrapping)
        matches = [
            match_boxes(p, t["boxes"], t["labels"], t.get("ignore_boxes")) for p, t in zip(proposals, targets)
        ]
        candidates = candidates_from_matches(matches, proposals)
        sizes = [p.shape[0] for p in proposals]
        num_candidates = sum(sizes)

        def all_regression_targets() -> Tensor:
            return torch.cat(
                [self._regression_targets(m, t, p) for m, t, p in zip(matches, targets, proposals)]
            )

        # `loss_mask` (the naive OHEM kept for comparison): one pass with autograd over all candidates,
        # the losses of the unselected ones zeroed. Otherwise a read-only pass scores the candidates and
        # only the selected ones are pooled again with autograd (two passes).
        loss_mask = self.sampler.needs_scores and getattr(self.sampler, "mode", "two_pass") == "loss_mask"
        if loss_mask:
            full_logits, full_deltas = self.predict(features, proposals, image_shapes)
            full_targets = all_regression_targets()

        def score_fn(assigned: list[Tensor]) -> list[CandidateLosses]:
            """Per-candidate cls and box loss over all candidates (times the mixup weight of the box
            a candidate is foreground for), without autograd."""
            with torch.no_grad():
                if loss_mask:
                    logits, deltas, reg_targets = full_logits.detach(), full_deltas.detach(), full_targets
                else:
                    logits, deltas = self.predict_in_chunks(features, proposals, image_shapes)
                    reg_targets = all_regression_targets()
                cls, reg = self._per_sample_losses(
                    logits, deltas, torch.cat(assigned).clamp(min=0), reg_targets
                )
                scores = []
                for c, r, m, t, a in zip(cls.split(sizes), reg.split(sizes), matches, targets, assigned):
                    box_weights = candidate_box_weights(m, t, a)
                    if box_weights is not None:  # rank by the weighted loss that would be trained
                        c, r = c * box_weights, r * box_weights
                    scores.append(CandidateLosses(c, r))
                return scores

        results = self.sampler(candidates, score_fn if self.sampler.needs_scores else None)
        weights = sample_weights(results, matches, targets, proposals[0].dtype)
        if loss_mask:
            offsets = torch.tensor([0, *sizes[:-1]], device=weights.device).cumsum(0)
            idx = torch.cat([r.indices + off for r, off in zip(results, offsets)])
            labels = torch.zeros(num_candidates, dtype=torch.long, device=weights.device)
            labels[idx] = torch.cat([r.labels for r in results])
            mask = torch.zeros(num_candidates, dtype=weights.dtype, device=weights.device)
            mask[idx] = weights
            cls, reg = self._per_sample_losses(full_logits, full_deltas, labels, full_targets)
            num_sampled = idx.numel()
            self.last_stats = sampling_stats(cls[idx], labels[idx], num_candidates=num_candidates)
            return self._weighted_losses(cls, reg, labels * (mask > 0), mask, num_sampled)
        boxes = [p[r.indices] for p, r in zip(proposals, results)]
        labels = torch.cat([r.labels for r in results])
        reg_targets = torch.cat(
            [
                self._regression_targets(m, t, b, r.indices)
                for m, t, r, b in zip(matches, targets, results, boxes)
            ]
        )
        logits, deltas = self.predict(features, boxes, image_shapes)
        cls, reg = self._per_sample_losses(logits, deltas, labels, reg_targets)
        num_sampled = labels.numel()
        self.last_stats = sampling_stats(cls, labels, num_candidates=num_candidates)
        return self._weighted_losses(cls, reg, labels, weights, num_sampled)

    def _postprocess(
        self, logits: Tensor, deltas: Tensor, proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Class-specific boxes above the threshold(s), per-class NMS, the best `detections_per_img`."""
        out = []
        for d in first_round(self, logits, deltas, proposals, image_shapes):
            keep = batched_nms(d.boxes, d.scores, d.labels, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": d.boxes[keep], "scores": d.scores[keep], "labels": d.labels[keep]})
        return out
