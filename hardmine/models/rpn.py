"""Region proposal network whose anchor sampling is a hardmine `Sampler`.

Everything but the training targets is torchvision's `RegionProposalNetwork` (head, anchors,
proposal filtering). Anchors are matched with `match_boxes` (low-quality matches on, as in
Faster R-CNN) and chosen by the configured sampler, so the RPN takes the same samplers as the
RoI head: random (the Faster R-CNN default, 256 anchors per image, half foreground), none, and
later the loss-ranking ones through the scoring callable.

Both losses are divided by the number of sampled anchors (torchvision's normalisation). With
`guided_loss` > 0 (sampling-free training) the box loss is divided by the number of foreground
box coordinates instead (4 per foreground anchor: the per-coordinate mean of the sampling-free
authors' code; their extra factor 0.5 on the RPN's loss is not applied), and the objectness
loss is rescaled each step to `guided_loss` times the box loss's value; `apply_priors` sets the
objectness bias to the training set's foreground ratio.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from hardmine.distributed import batch_normaliser
from hardmine.losses.guided import guided_loss_scale
from hardmine.models.matching import (
    candidate_box_weights,
    candidates_from_matches,
    match_boxes,
    matched_boxes,
    sample_weights,
)
from hardmine.models.priors import AssignmentCounts, sigmoid_prior_bias
from hardmine.models.stats import sampling_stats
from hardmine.sampling.base import CandidateLosses, Sampler, SampleResult


class RPN(RegionProposalNetwork):
    """torchvision's RPN with anchor sampling and losses delegated to a hardmine `Sampler`."""

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        sampler: Sampler,
        pre_nms_top_n: dict[str, int],
        post_nms_top_n: dict[str, int],
        nms_thresh: float = 0.7,
        smooth_l1_beta: float = 1.0 / 9,
        guided_loss: float = 0.0,
    ) -> None:
        if guided_loss < 0:
            raise ValueError(f"guided_loss must be >= 0 (0 = off), got {guided_loss}")
        thresholds = sampler.thresholds
        # torchvision's own matcher/sampler are built but unused: hardmine's sampler replaces them.
        super().__init__(
            anchor_generator,
            head,
            fg_iou_thresh=thresholds.fg,
            bg_iou_thresh=thresholds.bg_hi,
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n=pre_nms_top_n,
            post_nms_top_n=post_nms_top_n,
            nms_thresh=nms_thresh,
        )
        self.sampler = sampler
        self.smooth_l1_beta = smooth_l1_beta
        self.guided_loss = guided_loss
        self.last_stats: dict[str, Tensor] = {}

    @torch.no_grad()
    def apply_priors(self, counts: AssignmentCounts, bias: bool, thresholds: bool) -> dict[str, object]:
        """Sampling-free initialisation: the objectness bias to the prior N_f / N (one class).

        Proposals have no class scores, so `thresholds` does not apply to the RPN.
        """
        if thresholds:
            raise ValueError("the RPN has no class scores: class-adaptive thresholds do not apply")
        if not bias:
            return {}
        prob = counts.prior(1)
        self.head.cls_logits.bias.fill_(sigmoid_prior_bias(prob))
        return {"prior": prob, "bias": sigmoid_prior_bias(prob)}

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        """Proposals and their objectness scores (per image, resized-image coordinates) and losses."""
        feature_list = list(features.values())
        objectness, deltas = self.head(feature_list)
        anchors = self.anchor_generator(images, feature_list)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, scores = self.filter_proposals(
            proposals, objectness, images.image_sizes, num_anchors_per_level
        )
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training mode")
            losses = self._losses(anchors, objectness.flatten(), deltas, targets)
        return boxes, scores, losses

    def _losses(
        self, anchors: list[Tensor], objectness: Tensor, deltas: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        matches = []
        for image_anchors, target in zip(anchors, targets):
            gt_boxes = target["boxes"]
            objectness_labels = torch.ones(gt_boxes.shape[0], dtype=torch.long, device=gt_boxes.device)
            matches.append(
                match_boxes(
                    image_anchors,
                    gt_boxes,
                    objectness_labels,
                    target.get("ignore_boxes"),
                    low_quality_min_iou=0.0,
                )
            )
        candidates = candidates_from_matches(matches, anchors)
        per_image = anchors[0].shape[0]
        logits = objectness.view(len(anchors), per_image)
        deltas = deltas.view(len(anchors), per_image, 4)

        def regression_targets(i: int, idx: Tensor) -> Tensor:
            gt = matched_boxes(matches[i], targets[i]["boxes"], idx)
            return self.box_coder.encode_single(gt, anchors[i][idx])

        def score_fn(assigned: list[Tensor]) -> list[CandidateLosses]:
            """Per-anchor objectness and box loss of every anchor (times its box's mixup weight),
            without autograd."""
            with torch.no_grad():
                scores = []
                for i, labels in enumerate(assigned):
                    cls = F.binary_cross_entropy_with_logits(
                        logits[i], (labels > 0).to(logits.dtype), reduction="none"
                    )
                    box = torch.zeros_like(cls)
                    fg = torch.nonzero(labels > 0).flatten()
                    if fg.numel():
                        fg_box = F.smooth_l1_loss(
                            deltas[i, fg],
                            regression_targets(i, fg),
                            beta=self.smooth_l1_beta,
                            reduction="none",
                        ).sum(dim=1)
                        box = box.index_put((fg,), fg_box.to(box.dtype))
                    box_weights = candidate_box_weights(matches[i], targets[i], labels)
                    if box_weights is not None:  # rank by the weighted loss that would be trained
                        cls, box = cls * box_weights, box * box_weights
                    scores.append(CandidateLosses(cls, box))
                return scores

        results: list[SampleResult] = self.sampler(
            candidates, score_fn if self.sampler.needs_scores else None
        )
        idx_images = torch.cat([torch.full_like(r.indices, i) for i, r in enumerate(results)])
        idx = torch.cat([r.indices for r in results])
        labels = torch.cat([r.labels for r in results])
        weights = sample_weights(results, matches, targets, logits.dtype)
        num_sampled = batch_normaliser(idx.numel())  # the global batch's count in a distributed run

        cls = F.binary_cross_entropy_with_logits(
            logits[idx_images, idx], (labels > 0).to(logits.dtype), reduction="none"
        )
        fg = labels > 0
        # outside the branch: in a distributed run every process must join the count's all-reduce
        box_norm = batch_normaliser(4 * int(fg.sum())) if self.guided_loss > 0 else num_sampled
        if fg.any():
            fg_targets = torch.cat(
                [regression_targets(i, r.indices[r.labels > 0]) for i, r in enumerate(results)]
            )
            box = F.smooth_l1_loss(
                deltas[idx_images[fg], idx[fg]], fg_targets, beta=self.smooth_l1_beta, reduction="none"
            ).sum(dim=1)
            box_loss = (box * weights[fg]).sum() / box_norm
        else:
            box_loss = deltas.sum() * 0.0
        self.last_stats = sampling_stats(cls.detach(), labels, num_candidates=logits.numel())
        cls_loss = (cls * weights).sum() / num_sampled
        if self.guided_loss > 0:
            cls_loss = guided_loss_scale(cls_loss, box_loss, self.guided_loss)
        return {"loss_rpn_cls": cls_loss, "loss_rpn_box": box_loss}
