"""Two-stage detectors: Faster R-CNN (RPN + RoI head) and Fast R-CNN (RoI head on given proposals)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hardmine.models.roi_head import RoIHead
from hardmine.models.rpn import RPN
from hardmine.models.transform import DetectionTransform


class TwoStageDetector(nn.Module):
    """Faster R-CNN when `rpn` is given, Fast R-CNN when it is None.

    Call convention (torchvision's): `model(images, targets)` with images a list of float [3, H, W]
    tensors in [0, 1] and targets dicts with "boxes", "labels" and optional "ignore_boxes",
    "weights". Training returns a dict of losses; evaluation a list of dicts with "boxes",
    "scores", "labels" (1..C) in original image coordinates.

    Fast R-CNN reads its candidate boxes from the "proposals" entry of each target, in original
    image coordinates; in evaluation pass `proposals=` (one [P, 4] tensor per image).
    """

    def __init__(
        self, transform: DetectionTransform, backbone: nn.Module, rpn: RPN | None, roi_head: RoIHead
    ):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_head = roi_head

    @property
    def heads(self) -> dict[str, nn.Module]:
        """The heads that sample candidates, by the name used in logs and diagnostics."""
        heads: dict[str, nn.Module] = {"roi": self.roi_head}
        if self.rpn is not None:
            heads["rpn"] = self.rpn
        return heads

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        proposals: list[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        if self.rpn is None and targets is None:
            if proposals is None:
                raise ValueError("Fast R-CNN needs proposals: pass proposals= (one [P, 4] tensor per image)")
            targets = [
                {"boxes": torch.zeros((0, 4), device=p.device), "proposals": p.to(torch.float32)}
                for p in proposals
            ]
        elif proposals is not None:
            if targets is None:
                raise ValueError("proposals= is only used by Fast R-CNN (model without an RPN)")
            targets = [{**t, "proposals": p} for t, p in zip(targets, proposals)]
        if targets is not None:
            targets = [dict(t) for t in targets]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        losses: dict[str, Tensor] = {}
        if self.rpn is not None:
            boxes, _, rpn_losses = self.rpn(image_list, features, targets if self.training else None)
            losses.update(rpn_losses)
        else:
            if targets is None or any("proposals" not in t for t in targets):
                raise ValueError("Fast R-CNN needs a 'proposals' entry in every target")
            boxes = [t["proposals"] for t in targets]
        detections, roi_losses = self.roi_head(
            features, boxes, image_list.image_sizes, targets if self.training else None
        )
        if self.training:
            losses.update(roi_losses)
            return losses
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    @torch.no_grad()
    def propose(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """RPN proposals ("boxes", "scores") per image, in original image coordinates."""
        if self.rpn is None:
            raise ValueError("this model has no RPN (Fast R-CNN); it cannot write proposals")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        boxes, scores, _ = self.rpn(image_list, features)
        detections = [{"boxes": b, "scores": s} for b, s in zip(boxes, scores)]
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
