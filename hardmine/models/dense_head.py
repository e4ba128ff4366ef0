"""hardmine's RetinaNet-style dense head: the anchor sampler and both losses are options.

The conv towers are torchvision's `RetinaNetClassificationHead` / `RetinaNetRegressionHead`
(optionally shortened to `num_convs` layers), with GroupNorm after each conv by default
(`head_norm="group"`, as in RetinaNet v2): without it a from-scratch backbone barely learns under
focal loss in a short budget (measured in docs/BENCHMARKS.md). Only their forward passes are used.
Training goes through the path every head shares (`hardmine.models.criterion.HeadCriterion`):

1. every anchor is matched to the ground truth (`match_boxes`, with ignore regions and low-quality
   matches), giving one `Candidates` set per image;
2. the sampler picks the anchors that train the head (default: all assigned ones, as RetinaNet);
   loss-ranking samplers get a scoring callable that evaluates the per-anchor loss of the already
   computed head outputs without autograd;
3. the classification loss (a sigmoid loss of the loss table: focal, BCE, GHM-C; one-vs-all,
   against targets smoothed to eps / 2 and 1 - eps / 2 with its `label_smoothing` eps > 0) and the
   box loss (L1, smooth L1, GIoU, balanced L1, GHM-R; foreground only) of the picked anchors are
   weighted (sampler weights x per-box "weights" of mixup for foreground x `hard_negatives` factors;
   loss-ranking samplers rank by these weighted losses too) and divided by a normaliser.

Normalisers. The losses are divided by an exponential moving average of the number of sampled
foreground anchors across training iterations (detectron2's RetinaNet, `ForegroundNormaliser`: the
buffer starts at `normalizer_init` = 100 and moves with `normalizer_momentum` = 0.9), so that a
batch whose images hold no object, with no foreground anchor at all, does not turn the
background's summed loss into the whole loss; with `normalizer_momentum` = 0 the divisor is each
batch's own count (at least 1). The GHM losses instead keep their own normalisation, as in their
authors' code: GHM-C divides by its number of valid elements (sampled anchors x classes) and GHM-R
by its number of valid box coordinates (4 x sampled foreground anchors), each at least 1; the GHM-R
loss is then multiplied by its `loss_weight` (10 in the official config, which makes up for
that per-coordinate normaliser). The GHM state modules are submodules (`criterion.cls_state`,
so their EMA buffers `acc_sum` are state and go into checkpoints; the read-only scoring pass of
loss-ranking samplers leaves those buffers unchanged.

Sampling-free training (`docs/soft-sampling.md`): `guided_loss` > 0 rescales the classification
loss each step to that multiple of the box loss (`hardmine.losses.guided_loss_scale`);
`apply_priors` sets the classification bias and, with `class_adaptive_thresh`, the per-class score
thresholds (`class_score_thresh`, a buffer used by the detector's inference instead of its fixed
`score_thresh`) from the training set's `AssignmentCounts`.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetRegressionHead

from hardmine.losses.box import L1, RegLoss
from hardmine.losses.classification import SIGMOID, ClsLoss, SigmoidFocal
from hardmine.models.criterion import CriterionHead, ForegroundNormaliser, HeadCriterion
from hardmine.models.hard_negatives import HardNegativeUpweight
from hardmine.models.priors import AssignmentCounts, sigmoid_prior_bias, store_class_thresholds
from hardmine.options import require
from hardmine.sampling.base import IoUThresholds, Sampler
from hardmine.sampling.none import NoSampler

#: Normalisation layers of the head towers (`head_norm`).
HEAD_NORMS = ("group", "none")


def default_sampler() -> Sampler:
    """RetinaNet's assignment: fg at IoU >= 0.5, bg below 0.4, every assigned anchor trains."""
    return NoSampler(IoUThresholds(fg=0.5, bg_lo=0.0, bg_hi=0.4))


class DenseHead(CriterionHead, nn.Module):
    """Per-anchor class scores and box deltas over all FPN levels; see the module docstring.

    forward(features) -> (cls_logits [N, A, C], deltas [N, A, 4]) with A the anchors of all levels,
    level by level in `AnchorGenerator` order. `loss(...)` turns them into the two losses and sets
    `last_stats` (see `hardmine.models.stats.sampling_stats`).

    sampler: default `default_sampler()`; cls_loss: a sigmoid loss, default focal (alpha 0.25,
    gamma 2); reg_loss: default L1.
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        sampler: Sampler | None = None,
        cls_loss: ClsLoss | None = None,
        reg_loss: RegLoss | None = None,
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
        cls_loss = SigmoidFocal() if cls_loss is None else cls_loss
        require(cls_loss.activation == SIGMOID, "cls_loss", f"must be a sigmoid loss, not {cls_loss.name!r}")
        require(head_norm in HEAD_NORMS, "head_norm", f"must be one of {HEAD_NORMS}, got {head_norm!r}")
        require(0 <= num_convs <= 4, "num_convs", f"must be in [0, 4], got {num_convs}")
        require(0.0 < prior_prob < 1.0, "prior_prob", f"must be in (0, 1), got {prior_prob}")
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
        self.box_coder = BoxCoder(box_coder_weights)
        #: whether each box's best anchors are foreground whatever their IoU (RetinaNet's matcher)
        self.low_quality_matches = low_quality_matches
        self.criterion = HeadCriterion(
            default_sampler() if sampler is None else sampler,
            cls_loss,
            L1() if reg_loss is None else reg_loss,
            self.box_coder,
            prefix="dense",
            normaliser=ForegroundNormaliser(normalizer_momentum, normalizer_init),
            guided_loss=guided_loss,
            low_quality_matches=low_quality_matches,
            weight_factors=hard_negatives,
        )
        # Class-adaptive score thresholds (NaN until `apply_priors`); a buffer, so checkpoints carry it.
        self.class_score_thresh: Tensor | None
        thresholds = torch.full((num_classes,), float("nan")) if class_adaptive_thresh else None
        self.register_buffer("class_score_thresh", thresholds)

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

    def loss(
        self,
        cls_logits: Tensor,
        deltas: Tensor,
        anchors: list[Tensor],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """The head's losses for one batch (anchors and targets in resized-image coordinates)."""
        num_anchors = cls_logits.shape[1]
        # Flat [N * A] views: anchor j of image i is row i * A + j.
        flat_logits = cls_logits.reshape(-1, cls_logits.shape[-1])
        flat_deltas = deltas.reshape(-1, 4)

        def outputs(indices: list[Tensor] | None) -> tuple[Tensor, Tensor]:
            """Logits and deltas of the chosen anchors (all: None), image after image."""
            if indices is None:
                return flat_logits, flat_deltas
            rows = torch.cat([idx + i * num_anchors for i, idx in enumerate(indices)])
            return flat_logits[rows], flat_deltas[rows]

        return self.criterion(anchors, targets, outputs)
