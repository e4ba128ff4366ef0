"""hardmine's RetinaNet-style dense head: the anchor sampler and both losses are options.

The conv towers are torchvision's `RetinaNetClassificationHead` / `RetinaNetRegressionHead`
(optionally shortened to `num_convs` layers), with GroupNorm after each conv by default
(`head_norm="group"`, as in RetinaNet v2): without it a from-scratch backbone barely learns under
focal loss in a short budget (measured in docs/BENCHMARKS.md). Only their forward passes are used.
Training, per batch:

1. every anchor is matched to the ground truth (`match_boxes`, with ignore regions and low-quality
   matches), giving one `Candidates` set per image;
2. the sampler picks the anchors that train the head (default: all assigned ones, as RetinaNet);
   loss-ranking samplers get a scoring callable that evaluates the per-anchor loss of the already
   computed head outputs without autograd;
3. the classification loss (`CLS_LOSS_NAMES`, sigmoid, one-vs-all, against targets smoothed to
   eps / 2 and 1 - eps / 2 with `label_smoothing` eps > 0) and the box loss
   (`REG_LOSS_NAMES`, foreground only) of the picked anchors are weighted (sampler weights x
   per-box "weights" of mixup for foreground; loss-ranking samplers rank by these weighted losses
   too) and divided by a normaliser.

Normalisers. Focal, BCE and the box losses l1 / smooth_l1 / giou / balanced_l1 are divided by an
exponential moving average of the number of sampled foreground anchors across training iterations
(detectron2's RetinaNet: the buffer `normalizer` starts at `normalizer_init` = 100 and moves with
`normalizer_momentum` = 0.9), so that a batch whose images hold no object, with no foreground anchor
at all, does not turn the background's summed loss into the whole loss; with `normalizer_momentum` =
0 the divisor is each batch's own count (at least 1). The GHM losses instead keep their own
normalisation, as in their authors' code: GHM-C divides by its number of valid elements (sampled
anchors x classes) and GHM-R by its number of valid box coordinates (4 x sampled foreground
anchors), each at least 1; the GHM-R loss is then multiplied by `ghmr_loss_weight` (10 in the
official config, which makes up for that per-coordinate normaliser). The GHM modules (`ghm_c`,
`ghm_r`) are submodules, so their EMA buffers `acc_sum` are state and go into checkpoints; the
read-only scoring pass of loss-ranking samplers leaves those buffers unchanged.

Sampling-free training (`docs/soft-sampling.md`): `guided_loss` > 0 rescales the classification
loss each step to that multiple of the box loss (`hardmine.losses.guided_loss_scale`);
`apply_priors` sets the classification bias and, with `class_adaptive_thresh`, the per-class score
thresholds (`class_score_thresh`, a buffer used by the detector's inference instead of its fixed
`score_thresh`) from the training set's `AssignmentCounts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetRegressionHead
from torchvision.ops import generalized_box_iou_loss

from hardmine.distributed import sum_over_processes, world_size
from hardmine.losses import (
    GHMC,
    GHMR,
    balanced_l1_loss,
    guided_loss_scale,
    sigmoid_focal_loss,
    smooth_binary_targets,
)
from hardmine.losses.smoothing import check_label_smoothing
from hardmine.models.hard_negatives import HardNegativeUpweight
from hardmine.models.matching import (
    candidate_box_weights,
    candidates_from_matches,
    match_boxes,
    sample_weights,
)
from hardmine.models.priors import AssignmentCounts, sigmoid_prior_bias, store_class_thresholds
from hardmine.models.stats import sampling_stats
from hardmine.sampling.base import CandidateLosses, IoUThresholds, Sampler
from hardmine.sampling.none import NoSampler

#: (logits [K, C], one-hot targets [K, C], alpha, gamma) -> elementwise loss [K, C].
DenseClsLoss = Callable[[Tensor, Tensor, float, float], Tensor]
#: (deltas [F, 4], matched gt boxes [F, 4], anchors [F, 4], box coder, smooth L1 beta) -> loss [F].
DenseRegLoss = Callable[[Tensor, Tensor, Tensor, BoxCoder, float], Tensor]


def focal(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Sigmoid focal loss (RetinaNet) by `hardmine.losses` (torchvision's values); alpha < 0 = off."""
    return sigmoid_focal_loss(logits, targets, alpha=alpha if alpha >= 0 else -1.0, gamma=gamma)


def bce(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Sigmoid binary cross-entropy, alpha-balanced when alpha >= 0 (`gamma` unused)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def l1(deltas: Tensor, gt_boxes: Tensor, anchors: Tensor, coder: BoxCoder, beta: float) -> Tensor:
    """L1 on encoded deltas, summed over the 4 coordinates (`beta` unused)."""
    return (deltas - coder.encode_single(gt_boxes, anchors)).abs().sum(dim=-1)


def smooth_l1(deltas: Tensor, gt_boxes: Tensor, anchors: Tensor, coder: BoxCoder, beta: float) -> Tensor:
    """Smooth L1 on encoded deltas, summed over the 4 coordinates."""
    target = coder.encode_single(gt_boxes, anchors)
    return F.smooth_l1_loss(deltas, target, beta=beta, reduction="none").sum(dim=-1)


def balanced_l1(
    deltas: Tensor,
    gt_boxes: Tensor,
    anchors: Tensor,
    coder: BoxCoder,
    beta: float,
    alpha: float = 0.5,
    gamma: float = 1.5,
) -> Tensor:
    """Balanced L1 (Libra R-CNN) on encoded deltas, summed over the 4 coordinates."""
    return balanced_l1_loss(deltas, coder.encode_single(gt_boxes, anchors), alpha, gamma, beta).sum(dim=-1)


def giou(deltas: Tensor, gt_boxes: Tensor, anchors: Tensor, coder: BoxCoder, beta: float) -> Tensor:
    """Generalized IoU loss between the decoded boxes and their ground truth (`beta` unused)."""
    return generalized_box_iou_loss(coder.decode_single(deltas, anchors), gt_boxes, reduction="none")


#: Config name -> elementwise sigmoid classification loss (plain functions).
CLS_LOSSES: dict[str, DenseClsLoss] = {"focal": focal, "bce": bce}
#: Config name -> per-anchor box regression loss (plain functions).
REG_LOSSES: dict[str, DenseRegLoss] = {
    "l1": l1,
    "smooth_l1": smooth_l1,
    "giou": giou,
    "balanced_l1": balanced_l1,
}
#: Every `cls_loss` of the head: the functions above, and "ghm" (GHM-C, a stateful module).
CLS_LOSS_NAMES = (*CLS_LOSSES, "ghm")
#: Every `reg_loss` of the head: the functions above, and "ghm" (GHM-R, a stateful module).
REG_LOSS_NAMES = (*REG_LOSSES, "ghm")


@contextmanager
def _frozen_ema(*modules: nn.Module | None) -> Iterator[None]:
    """Restore the GHM EMA buffers (`acc_sum`) of `modules` on exit: for read-only scoring passes."""
    saved = [(m, m.acc_sum.clone()) for m in modules if m is not None and m.acc_sum is not None]
    try:
        yield
    finally:
        for m, acc in saved:
            m.acc_sum.copy_(acc)


def default_sampler() -> Sampler:
    """RetinaNet's assignment: fg at IoU >= 0.5, bg below 0.4, every assigned anchor trains."""
    return NoSampler(IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.4))


class DenseHead(nn.Module):
    """Per-anchor class scores and box deltas over all FPN levels; see the module docstring.

    forward(features) -> (cls_logits [N, A, C], deltas [N, A, 4]) with A the anchors of all levels,
    level by level in `AnchorGenerator` order. `loss(...)` turns them into the two losses and sets
    `last_stats` (see `hardmine.models.stats.sampling_stats`).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        sampler: Sampler | None = None,
        cls_loss: str = "focal",
        reg_loss: str = "l1",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
        smooth_l1_beta: float = 1.0 / 9,
        balanced_l1_alpha: float = 0.5,
        balanced_l1_gamma: float = 1.5,
        balanced_l1_beta: float = 0.11,
        ghmc_bins: int = 30,
        ghmc_momentum: float = 0.75,
        ghmr_mu: float = 0.02,
        ghmr_bins: int = 10,
        ghmr_momentum: float = 0.7,
        ghmr_loss_weight: float = 10.0,
        normalizer_momentum: float = 0.9,
        normalizer_init: float = 100.0,
        prior_prob: float = 0.01,
        guided_loss: float = 0.0,
        class_adaptive_thresh: bool = False,
        hard_negatives: HardNegativeUpweight | None = None,
        num_convs: int = 4,
        head_norm: str = "group",
        low_quality_matches: bool = True,
        box_coder_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        if cls_loss not in CLS_LOSS_NAMES:
            raise ValueError(f"unknown cls_loss {cls_loss!r}; choose from {sorted(CLS_LOSS_NAMES)}")
        if reg_loss not in REG_LOSS_NAMES:
            raise ValueError(f"unknown reg_loss {reg_loss!r}; choose from {sorted(REG_LOSS_NAMES)}")
        if not 0.0 <= normalizer_momentum < 1.0:
            raise ValueError(f"normalizer_momentum must be in [0, 1), got {normalizer_momentum}")
        if normalizer_init <= 0:
            raise ValueError(f"normalizer_init must be > 0, got {normalizer_init}")
        if head_norm not in ("group", "none"):
            raise ValueError(f"head_norm must be 'group' or 'none', got {head_norm!r}")
        if not 0 <= num_convs <= 4:
            raise ValueError(f"num_convs must be in [0, 4], got {num_convs}")
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        if guided_loss < 0:
            raise ValueError(f"guided_loss must be >= 0 (0 = off), got {guided_loss}")
        norm = partial(nn.GroupNorm, min(32, in_channels // 4)) if head_norm == "group" else None
        self.classification = RetinaNetClassificationHead(
            in_channels, num_anchors, num_classes, prior_prob, norm_layer=norm
        )
        self.regression = RetinaNetRegressionHead(in_channels, num_anchors, norm_layer=norm)
        # torchvision's towers have 4 convs; a shorter tower keeps the first `num_convs`.
        self.classification.conv = self.classification.conv[:num_convs]
        self.regression.conv = self.regression.conv[:num_convs]
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.sampler = default_sampler() if sampler is None else sampler
        # GHM-C / GHM-R: modules whose EMA buffers are state (saved in checkpoints); None otherwise.
        self.ghm_c = GHMC(ghmc_bins, ghmc_momentum, reduction="none") if cls_loss == "ghm" else None
        self.ghm_r = GHMR(ghmr_mu, ghmr_bins, ghmr_momentum, reduction="none") if reg_loss == "ghm" else None
        self.cls_loss = CLS_LOSSES.get(cls_loss)
        self.reg_loss = REG_LOSSES.get(reg_loss)
        if reg_loss == "balanced_l1":
            self.reg_loss = partial(balanced_l1, alpha=balanced_l1_alpha, gamma=balanced_l1_gamma)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.smooth_l1_beta = smooth_l1_beta
        self.reg_beta = balanced_l1_beta if reg_loss == "balanced_l1" else smooth_l1_beta
        self.ghmr_loss_weight = ghmr_loss_weight
        self.normalizer_momentum = normalizer_momentum
        # EMA of the foreground count; a buffer, so it is saved and resumed.
        self.normalizer: Tensor | None
        ema = torch.tensor(float(normalizer_init)) if normalizer_momentum > 0 else None
        self.register_buffer("normalizer", ema)
        self.low_quality_matches = low_quality_matches
        self.box_coder = BoxCoder(box_coder_weights)
        self.guided_loss = guided_loss
        # Class-adaptive score thresholds (NaN until `apply_priors`); a buffer, so checkpoints carry it.
        self.class_score_thresh: Tensor | None
        thresholds = torch.full((num_classes,), float("nan")) if class_adaptive_thresh else None
        self.register_buffer("class_score_thresh", thresholds)
        #: loss weight of background anchors near mined hard negatives (offline bootstrapping)
        self.hard_negatives = hard_negatives
        self.last_stats: dict[str, Tensor] = {}

    @torch.no_grad()
    def apply_priors(self, counts: AssignmentCounts, bias: bool, thresholds: bool) -> dict[str, object]:
        """Sampling-free initialisation from the training set's counts; returns the values set.

        bias: every class logit's bias to the optimal prior pi = N_f / (N * C).
        thresholds: the class-adaptive score thresholds (the head must have been built with them).
        """
        applied: dict[str, object] = {}
        if bias:
            prob = counts.prior(self.num_classes)
            self.classification.cls_logits.bias.fill_(sigmoid_prior_bias(prob))
            applied.update(prior=prob, bias=sigmoid_prior_bias(prob))
        if thresholds:
            applied["class_score_thresh"] = store_class_thresholds(self.class_score_thresh, counts)
        return applied

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        return self.classification(features), self.regression(features)

    def _per_sample_losses(
        self, logits: Tensor, deltas: Tensor, labels: Tensor, gt_boxes: Tensor, anchors: Tensor
    ) -> tuple[Tensor, Tensor]:
        """[K] classification loss of K samples and [F] box loss of their foreground ones (in order).

        labels: [K] >= 1 foreground class, 0 background; the other tensors are per sample.

        GHM-C / GHM-R give their harmonized elementwise losses summed per anchor (their normalisers
        are applied in `loss`); every call updates their EMA (use `_frozen_ema` to prevent that).
        """
        logits, deltas = logits.float(), deltas.float()
        fg = labels > 0
        targets = torch.zeros_like(logits)
        targets[fg, labels[fg] - 1] = 1.0
        targets = smooth_binary_targets(targets, self.label_smoothing)
        if self.ghm_c is not None:
            cls = self.ghm_c(logits, targets).sum(dim=-1)
        else:
            assert self.cls_loss is not None
            cls = self.cls_loss(logits, targets, self.focal_alpha, self.focal_gamma).sum(dim=-1)
        gt_fg, anchors_fg = gt_boxes[fg].float(), anchors[fg].float()
        if self.ghm_r is not None:
            reg = self.ghm_r(deltas[fg], self.box_coder.encode_single(gt_fg, anchors_fg)).sum(dim=-1)
        else:
            assert self.reg_loss is not None
            reg = self.reg_loss(deltas[fg], gt_fg, anchors_fg, self.box_coder, self.reg_beta)
        return cls, reg

    def _foreground_normaliser(self, num_fg: Tensor) -> Tensor:
        """The EMA of max(num_fg, 1) across training iterations, updated by this batch's count in
        training (read without updating in eval mode); max(num_fg, 1) with `normalizer_momentum` 0.

        In a distributed run the count is the global batch's (summed over the processes) and the
        normaliser is divided by the number of processes: DDP averages the processes' gradients, and
        that average then equals the gradient of one process on the combined batch (mmdetection's
        reduce_mean(num_pos)). The EMA buffer holds the global count, the same on every process.
        """
        processes = world_size()
        if processes > 1:
            num_fg = sum_over_processes(num_fg)
        count = num_fg.float().clamp_min(1.0)
        if self.normalizer is None:
            return count if processes == 1 else count / processes
        if self.training:
            m = self.normalizer_momentum
            self.normalizer.copy_(m * self.normalizer + (1 - m) * count)
        normaliser = self.normalizer.clone()  # the buffer moves on next step; autograd keeps this value
        return normaliser if processes == 1 else normaliser / processes

    def loss(
        self,
        cls_logits: Tensor,
        deltas: Tensor,
        anchors: list[Tensor],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """The head's losses for one batch (anchors and targets in resized-image coordinates)."""
        num_images, num_anchors, num_classes = cls_logits.shape
        min_iou = 0.0 if self.low_quality_matches else None
        matches = [
            match_boxes(a, t["boxes"], t["labels"], t.get("ignore_boxes"), low_quality_min_iou=min_iou)
            for a, t in zip(anchors, targets)
        ]
        candidates = candidates_from_matches(matches, anchors)
        # Flat [N * A] views: anchor j of image i is row i * A + j.
        flat_logits = cls_logits.reshape(-1, num_classes)
        flat_deltas = deltas.reshape(-1, 4)
        flat_anchors = torch.cat(anchors)
        flat_gt = torch.cat(
            [
                t["boxes"][m.matched] if t["boxes"].numel() else torch.zeros_like(a)
                for a, t, m in zip(anchors, targets, matches)
            ]
        )

        def score_fn(assigned: list[Tensor]) -> list[CandidateLosses]:
            """Per-anchor cls and box loss of every anchor, without autograd (ignored ones scored as bg)."""
            with torch.no_grad(), _frozen_ema(self.ghm_c, self.ghm_r):
                labels = torch.cat(assigned).clamp(min=0)
                cls, reg = self._per_sample_losses(flat_logits, flat_deltas, labels, flat_gt, flat_anchors)
                box = torch.zeros_like(cls).index_put((torch.nonzero(labels > 0).flatten(),), reg)
                scores = []
                per_image = zip(cls.split(num_anchors), box.split(num_anchors), matches, targets, assigned)
                for c, b, m, t, a in per_image:
                    box_weights = candidate_box_weights(m, t, a)
                    if box_weights is not None:  # rank by the weighted loss that would be trained
                        c, b = c * box_weights, b * box_weights
                    scores.append(CandidateLosses(c, b))
                return scores

        results = self.sampler(candidates, score_fn if self.sampler.needs_scores else None)
        idx = torch.cat([r.indices + i * num_anchors for i, r in enumerate(results)])
        labels = torch.cat([r.labels for r in results])
        weights = sample_weights(results, matches, targets, torch.float32)
        if self.hard_negatives is not None:
            weights = weights * self.hard_negatives.factors(results, anchors, targets).to(weights.device)
        cls, reg = self._per_sample_losses(
            flat_logits[idx], flat_deltas[idx], labels, flat_gt[idx], flat_anchors[idx]
        )
        fg = labels > 0
        normaliser = self._foreground_normaliser(fg.sum())
        cls_norm = max(cls.numel() * num_classes, 1) if self.ghm_c is not None else normaliser
        box_norm = max(reg.numel() * 4, 1) if self.ghm_r is not None else normaliser
        box_weight = self.ghmr_loss_weight if self.ghm_r is not None else 1.0
        self.last_stats = sampling_stats(cls, labels, num_candidates=num_images * num_anchors)
        cls_loss = (cls * weights).sum() / cls_norm
        box_loss = (reg * weights[fg]).sum() * box_weight / box_norm
        if self.guided_loss > 0:
            cls_loss = guided_loss_scale(cls_loss, box_loss, self.guided_loss)
        return {"loss_dense_cls": cls_loss, "loss_dense_box": box_loss}
