"""Region proposal network whose anchor sampling and losses are hardmine's (`HeadCriterion`).

Everything but the training targets is torchvision's `RegionProposalNetwork` (head, anchors,
proposal filtering). The losses are the shared path of every head (`hardmine.models.criterion`):
anchors matched with `match_boxes` (low-quality matches on, as in Faster R-CNN, every ground truth
class 1), chosen by the configured sampler, so the RPN takes the same samplers and losses as the
other heads: random (the Faster R-CNN default, 256 anchors per image, half foreground), none, the
loss-ranking ones; sigmoid BCE on the objectness (one class) and smooth L1 by default.

Both losses are divided by the number of sampled anchors (torchvision's normalisation). With
`guided_loss` > 0 (sampling-free training) the box loss is divided by the number of foreground
box coordinates instead (4 per foreground anchor: the per-coordinate mean of the sampling-free
authors' code; their extra factor 0.5 on the RPN's loss is not applied), and the objectness
loss is rescaled each step to `guided_loss` times the box loss's value; `apply_priors` sets the
objectness bias to the training set's foreground ratio.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from hardmine.losses.box import RegLoss, SmoothL1
from hardmine.losses.classification import BCE, SIGMOID, ClsLoss
from hardmine.models.criterion import CriterionHead, HeadCriterion
from hardmine.models.priors import AssignmentCounts, sigmoid_prior_bias
from hardmine.options import require
from hardmine.sampling.base import Sampler


class RPN(CriterionHead, RegionProposalNetwork):
    """torchvision's RPN with anchor sampling and losses delegated to a `HeadCriterion`.

    `sampler` labels and picks the anchors; `cls_loss` must be a sigmoid loss (objectness is one
    class), by default plain BCE; `reg_loss` defaults to smooth L1 with beta 1/9 (torchvision's).
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        sampler: Sampler,
        pre_nms_top_n: dict[str, int],
        post_nms_top_n: dict[str, int],
        nms_thresh: float = 0.7,
        cls_loss: ClsLoss | None = None,
        reg_loss: RegLoss | None = None,
        guided_loss: float = 0.0,
    ) -> None:
        # torchvision's constructor wants a matcher and a sampler, which the criterion replaces; they
        # are deleted below, so the RPN holds one labelling and one sampler only.
        super().__init__(
            anchor_generator,
            head,
            fg_iou_thresh=sampler.thresholds.fg,
            bg_iou_thresh=sampler.thresholds.bg_hi,
            batch_size_per_image=1,
            positive_fraction=0.5,
            pre_nms_top_n=pre_nms_top_n,
            post_nms_top_n=post_nms_top_n,
            nms_thresh=nms_thresh,
        )
        del self.proposal_matcher, self.fg_bg_sampler
        cls_loss = BCE(alpha=-1.0) if cls_loss is None else cls_loss
        require(cls_loss.activation == SIGMOID, "cls_loss", f"must be a sigmoid loss, not {cls_loss.name!r}")
        self.criterion = HeadCriterion(
            sampler,
            cls_loss,
            SmoothL1() if reg_loss is None else reg_loss,
            self.box_coder,
            prefix="rpn",
            guided_loss=guided_loss,
            class_agnostic=True,
            low_quality_matches=True,
        )

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
            per_image = anchors[0].shape[0]

            def outputs(indices: list[Tensor] | None) -> tuple[Tensor, Tensor]:
                """Objectness logits [K, 1] and deltas [K, 4] of the chosen anchors (all: None)."""
                if indices is None:
                    return objectness, deltas
                rows = torch.cat([idx + i * per_image for i, idx in enumerate(indices)])
                return objectness[rows], deltas[rows]

            losses = self.criterion(anchors, targets, outputs)
        return boxes, scores, losses
