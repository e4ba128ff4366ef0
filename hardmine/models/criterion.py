"""The training losses of a head, written once for the RPN, the RoI head and the dense head.

`HeadCriterion` turns one batch of a head's candidates (anchors, or proposals + ground truth) into
its two losses, in the same steps for every head:

1. **label**: match each image's candidates to its ground truth (`match_boxes`: ignore regions,
   low-quality matches where the head asks for them) into `Candidates`;
2. **score**: for samplers that rank by loss, a callable that computes every candidate's
   classification and box loss without autograd (times the mixup weight of the box it is
   foreground for), from the head's outputs over all candidates;
3. **sample**: the sampler picks the candidates that train the head;
4. **weight**: sampler weights times the per-box weights (mixup), times the head's extra factors
   (mined hard negatives in the dense head);
5. **losses**: per-sample losses of the picked candidates from the loss table
   (`hardmine.losses.CLS_LOSSES` / `REG_LOSSES`; box loss on foreground only), from a trainable
   pass over the picked candidates only, or, for a sampler that `trains_by_loss_mask`, over every
   candidate with the others' losses zeroed;
6. **normalise**: each loss's weighted sum over the head's normaliser (`SampledNormaliser`,
   `ForegroundNormaliser`), or the loss's own (GHM); with `guided_loss` > 0 the classification loss
   rescaled to that multiple of the box loss (sampling-free training);
7. **log**: `last_stats` (`hardmine.models.stats.sampling_stats`).

What differs between heads is passed in: the candidate boxes and a callable giving the head's
outputs (class logits, box deltas) for chosen candidates; whether the ground truth counts as one
class (the RPN's objectness); low-quality matches; class-specific box deltas (the RoI head); the
normaliser; the loss names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder

from hardmine.distributed import batch_normaliser, sum_over_processes, world_size
from hardmine.losses.box import RegLoss
from hardmine.losses.classification import ClsLoss
from hardmine.losses.guided import guided_loss_scale
from hardmine.models.hard_negatives import HardNegativeUpweight
from hardmine.models.matching import (
    Match,
    candidate_box_weights,
    candidates_from_matches,
    match_boxes,
    matched_boxes,
    sample_weights,
)
from hardmine.models.stats import sampling_stats
from hardmine.options import require
from hardmine.sampling.base import CandidateLosses, Sampler, SampleResult

#: A head's outputs for chosen candidates: called with each image's candidate positions (None: all
#: candidates), it returns class logits [K, C'] and box deltas [K, 4] (class-specific: [K, 4 C'])
#: of those candidates, image after image; with autograd unless called under `torch.no_grad()`.
Outputs = Callable[[list[Tensor] | None], tuple[Tensor, Tensor]]


class SampledNormaliser:
    """torchvision's normalisation (RPN, RoI head): both losses over the number of sampled
    candidates; with guided loss scaling the box loss over the number of foreground box
    coordinates instead (4 per foreground sample: the per-coordinate mean of the sampling-free
    authors' code). Counts are the global batch's in a distributed run."""

    def __call__(
        self, num_sampled: int, labels: Tensor, guided: bool
    ) -> tuple[Tensor | float, Tensor | float]:
        sampled = batch_normaliser(num_sampled)
        # outside any branch on the data: in a distributed run every process joins the same all-reduces
        box = batch_normaliser(4 * int((labels > 0).sum())) if guided else sampled
        return sampled, box


class ForegroundNormaliser(nn.Module):
    """RetinaNet's normalisation (dense head): both losses over an exponential moving average of
    the number of sampled foreground candidates across training iterations (detectron2: the buffer
    `ema` starts at `init` = 100 and moves with `momentum` = 0.9; saved and resumed), so that a
    batch whose images hold no object does not turn the background's summed loss into the whole
    loss; in eval mode the average is read without moving. With `momentum` = 0: each batch's own
    count (at least 1).

    In a distributed run the count is the global batch's (summed over the processes) and the
    normaliser is divided by the number of processes: DDP averages the processes' gradients, and
    that average then equals the gradient of one process on the combined batch (mmdetection's
    reduce_mean(num_pos)). The EMA holds the global count, the same on every process.
    """

    def __init__(self, momentum: float = 0.9, init: float = 100.0) -> None:
        super().__init__()
        require(0.0 <= momentum < 1.0, "normalizer_momentum", "must be in [0, 1)")
        require(init > 0, "normalizer_init", "must be > 0")
        self.momentum = momentum
        self.ema: Tensor | None
        self.register_buffer("ema", torch.tensor(float(init)) if momentum > 0 else None)

    def forward(self, num_sampled: int, labels: Tensor, guided: bool) -> tuple[Tensor, Tensor]:
        num_fg = (labels > 0).sum()
        processes = world_size()
        if processes > 1:
            num_fg = sum_over_processes(num_fg)
        count = num_fg.float().clamp_min(1.0)
        if self.ema is None:
            normaliser = count if processes == 1 else count / processes
            return normaliser, normaliser
        if self.training:
            self.ema.copy_(self.momentum * self.ema + (1 - self.momentum) * count)
        normaliser = self.ema.clone()  # the buffer moves on next step; autograd keeps this value
        normaliser = normaliser if processes == 1 else normaliser / processes
        return normaliser, normaliser


@contextmanager
def _state_kept(*modules: nn.Module | None) -> Iterator[None]:
    """Restore the buffers of `modules` (the losses' state, e.g. GHM's EMA) on exit: for read-only
    scoring passes, which must not count as training iterations."""
    saved = [(b, b.clone()) for m in modules if m is not None for b in m.buffers()]
    try:
        yield
    finally:
        for buffer, value in saved:
            buffer.copy_(value)


class HeadCriterion(nn.Module):
    """The losses of one head; see the module docstring.

    sampler:              which candidates train the head (its thresholds label them).
    cls_loss, reg_loss:   entries of the loss table; their state modules (if any) are submodules
                          `cls_state` / `reg_state`, so they go into checkpoints.
    box_coder:            the head's encoding of boxes as deltas.
    prefix:               the losses are named loss_{prefix}_cls and loss_{prefix}_box.
    normaliser:           `SampledNormaliser()` (default) or `ForegroundNormaliser(momentum)`.
    guided_loss:          sampling-free guided scaling of the classification loss; 0 = off.
    class_agnostic:       every ground-truth box counts as class 1 (objectness).
    low_quality_matches:  each ground truth's best candidates are foreground (Faster R-CNN's RPN).
    class_specific_boxes: deltas hold 4 values per class; the labelled class's 4 are trained.
    weight_factors:       extra per-sample loss factors of background candidates on mined regions.
    box_loss_over_samples: the box loss summed as a vector over every sample, 0 for the background
                          (the RoI head's form), instead of over the foreground only (the RPN's
                          and the dense head's, torchvision's). The value is the same up to the
                          order of the float additions; without foreground the first gives the
                          box regressor no gradient at all, the second a gradient of zeros (which
                          SGD's momentum and weight decay still act on).
    """

    def __init__(
        self,
        sampler: Sampler,
        cls_loss: ClsLoss,
        reg_loss: RegLoss,
        box_coder: BoxCoder,
        prefix: str,
        normaliser: SampledNormaliser | ForegroundNormaliser | None = None,
        guided_loss: float = 0.0,
        class_agnostic: bool = False,
        low_quality_matches: bool = False,
        class_specific_boxes: bool = False,
        weight_factors: HardNegativeUpweight | None = None,
        box_loss_over_samples: bool = False,
    ) -> None:
        super().__init__()
        require(guided_loss >= 0, "guided_loss", "must be >= 0 (0 = off)")
        self.sampler = sampler
        self.cls_loss = cls_loss
        self.reg_loss = reg_loss
        self.cls_state = cls_loss.state()
        self.reg_state = reg_loss.state()
        self.box_coder = box_coder
        self.names = (f"loss_{prefix}_cls", f"loss_{prefix}_box")
        self.normaliser = SampledNormaliser() if normaliser is None else normaliser
        self.guided_loss = guided_loss
        self.class_agnostic = class_agnostic
        self.low_quality_matches = low_quality_matches
        self.class_specific_boxes = class_specific_boxes
        self.weight_factors = weight_factors
        self.box_loss_over_samples = box_loss_over_samples
        self.last_stats: dict[str, Tensor] = {}

    def match(self, boxes: list[Tensor], targets: list[dict[str, Tensor]]) -> list[Match]:
        """Each image's candidates matched to its ground truth (step 1)."""
        matches = []
        for image_boxes, t in zip(boxes, targets):
            labels = torch.ones_like(t["labels"]) if self.class_agnostic else t["labels"]
            min_iou = 0.0 if self.low_quality_matches else None
            matches.append(
                match_boxes(
                    image_boxes, t["boxes"], labels, t.get("ignore_boxes"), low_quality_min_iou=min_iou
                )
            )
        return matches

    def per_sample_losses(
        self, logits: Tensor, deltas: Tensor, labels: Tensor, gt_boxes: Tensor, boxes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """[K] classification loss of K samples, [F] box loss of their foreground ones and the
        positions of those F among the K. Updates the losses' state (GHM's EMA)."""
        logits, deltas = logits.float(), deltas.float()
        cls = self.cls_loss(logits, labels, self.cls_state)
        fg = torch.nonzero(labels > 0).flatten()
        if self.class_specific_boxes:
            pred = deltas.view(deltas.shape[0], deltas.shape[1] // 4, 4)[fg, labels[fg]]
        else:
            pred = deltas[fg]
        reg = self.reg_loss(pred, gt_boxes[fg].float(), boxes[fg].float(), self.box_coder, self.reg_state)
        return cls, reg, fg

    def forward(
        self, boxes: list[Tensor], targets: list[dict[str, Tensor]], outputs: Outputs
    ) -> dict[str, Tensor]:
        """The head's two losses for one batch: `boxes` are each image's candidates, `outputs` the
        head's predictions for them (see `Outputs`), `targets` the ground truth (resized-image
        coordinates, as the candidates)."""
        matches = self.match(boxes, targets)
        candidates = candidates_from_matches(matches, boxes)
        sizes = [b.shape[0] for b in boxes]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        all_boxes = torch.cat(boxes)
        all_gt = torch.cat([matched_boxes(m, t["boxes"]) for m, t in zip(matches, targets)])
        # A loss-mask sampler trains every candidate: one pass with autograd, which scoring reuses.
        full = outputs(None) if self.sampler.trains_by_loss_mask else None

        def score_fn(assigned: list[Tensor]) -> list[CandidateLosses]:
            """Each candidate's cls and box loss (times the mixup weight of the box it is foreground
            for), without autograd and without updating the losses' state."""
            with torch.no_grad(), _state_kept(self.cls_state, self.reg_state):
                logits, deltas = (full[0].detach(), full[1].detach()) if full is not None else outputs(None)
                labels = torch.cat(assigned).clamp(min=0)
                cls, reg, fg = self.per_sample_losses(logits, deltas, labels, all_gt, all_boxes)
                box = torch.zeros_like(cls).index_put((fg,), reg.to(cls.dtype))
                scores = []
                per_image = zip(cls.split(sizes), box.split(sizes), matches, targets, assigned)
                for c, b, m, t, a in per_image:
                    box_weights = candidate_box_weights(m, t, a)
                    if box_weights is not None:  # rank by the weighted loss that would be trained
                        c, b = c * box_weights, b * box_weights
                    scores.append(CandidateLosses(c, b))
                return scores

        results: list[SampleResult] = self.sampler(
            candidates, score_fn if self.sampler.needs_scores else None
        )
        weights = sample_weights(results, matches, targets, all_boxes.dtype)
        if self.weight_factors is not None:
            weights = weights * self.weight_factors.factors(results, boxes, targets).to(weights.device)
        rows = torch.cat([r.indices + offset for r, offset in zip(results, offsets)])
        selected_labels = torch.cat([r.labels for r in results])
        if full is None:
            logits, deltas = outputs([r.indices for r in results])
            labels, gt, cand = selected_labels, all_gt[rows], all_boxes[rows]
        else:  # every candidate: the unselected ones are background with weight 0
            logits, deltas = full
            labels = torch.zeros(all_boxes.shape[0], dtype=torch.long, device=rows.device)
            labels[rows] = selected_labels
            mask = torch.zeros(all_boxes.shape[0], dtype=weights.dtype, device=weights.device)
            mask[rows] = weights
            weights, gt, cand = mask, all_gt, all_boxes
        cls, reg, fg = self.per_sample_losses(logits, deltas, labels, gt, cand)
        stats_cls = cls if full is None else cls[rows]
        self.last_stats = sampling_stats(stats_cls.detach(), selected_labels, num_candidates=sum(sizes))
        cls_norm, box_norm = self.normaliser(rows.numel(), selected_labels, self.guided_loss > 0)
        cls_loss = self.cls_loss.reduce(cls * weights, cls_norm, cls.numel() * logits.shape[-1])
        box_terms = reg * weights[fg]
        if self.box_loss_over_samples:
            box_terms = (
                torch.zeros_like(cls).index_put((fg,), box_terms) if fg.numel() else torch.zeros_like(cls)
            )
        box_loss = self.reg_loss.reduce(box_terms, box_norm, reg.numel() * 4)
        if self.guided_loss > 0:
            cls_loss = guided_loss_scale(cls_loss, box_loss, self.guided_loss)
        return dict(zip(self.names, (cls_loss, box_loss)))


class CriterionHead:
    """For heads whose training losses are a `HeadCriterion` (`self.criterion`): the head's
    `sampler` (read and replaced, e.g. by `hardmine gallery`) and `last_stats` are the criterion's."""

    criterion: HeadCriterion

    @property
    def sampler(self) -> Sampler:
        return self.criterion.sampler

    @sampler.setter
    def sampler(self, sampler: Sampler) -> None:
        self.criterion.sampler = sampler

    @property
    def last_stats(self) -> dict[str, Tensor]:
        return self.criterion.last_stats

    @last_stats.setter
    def last_stats(self, stats: dict[str, Tensor]) -> None:
        self.criterion.last_stats = stats
