"""Configuration: typed dataclasses (the one source of defaults), YAML presets, key=value overrides.

A run is described by `Config`. Presets in `configs/*.yaml` hold nested mappings that mirror it
(`roi_head: {sampler: random}`) and may start from another preset (`base: faster_rcnn_tiny`); the
command line overrides single keys with dotted paths (`roi_head.sampler=ohem solver.lr=0.01`).
Values are parsed as YAML scalars/lists and checked against the field's type; an unknown key is an
error that lists the valid keys of its section.

Each head's `sampler`, `cls_loss` and `reg_loss` hold a sampler or a loss of the loss table, chosen
by name, whose options are declared once, in its own dataclass (`hardmine.sampling`,
`hardmine.losses`); reading, writing, `--help` and validation of options derive from the
declarations (`hardmine.options`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from hardmine import options
from hardmine.errors import ConfigError
from hardmine.losses import (
    BCE,
    CLS_LOSSES,
    L1,
    REG_LOSSES,
    SIGMOID,
    SOFTMAX,
    ClsLoss,
    CrossEntropy,
    RegLoss,
    SigmoidFocal,
    SmoothL1,
)
from hardmine.models.backbones import BACKBONES
from hardmine.models.dense_head import HEAD_NORMS
from hardmine.models.iterative import IterativeRegression
from hardmine.models.merge import MERGE_METHODS
from hardmine.models.torchvision_detectors import TORCHVISION_DETECTORS, check_torchvision_detector
from hardmine.options import component, opt
from hardmine.sampling import SAMPLERS, IoUThresholds, NoSampler, RandomSampler, Sampler
from hardmine.segmentation.pixel_losses import PIXEL_LOSSES, PixelCrossEntropy, PixelLoss
from hardmine.segmentation.pixel_sampling import PIXEL_SAMPLERS, AllPixels, PixelSampler


def guided_loss_opt() -> Any:
    """The `guided_loss` option shared by the three heads (sampling-free training)."""
    return opt(
        0.0,
        "sampling-free: rescale the cls loss each step to this multiple of the box loss (no gradient "
        "through the factor; the RPN's and RoI head's box loss is then averaged over the foreground "
        "box coordinates); 0 = off, paper: 1",
    )


def class_adaptive_thresh_opt() -> Any:
    """The `class_adaptive_thresh` option of the heads with class scores (sampling-free training)."""
    return opt(
        False,
        "sampling-free: per-class inference thresholds (N_f/N) * (N_j / sum N) from the training set "
        "instead of score_thresh",
    )


def bias_init_opt(what: str) -> Any:
    """The `bias_init` option of the three heads (sampling-free training)."""
    return opt(
        "default",
        f"classification bias at start: {what}, or 'dataset' = sampling-free optimal prior from the "
        "training set's assignments (cached; see docs/soft-sampling.md)",
        BIAS_INITS,
    )


def sampler_opt(default: Any, what: str) -> Any:
    return component(default, f"how {what} are chosen for the head's loss", SAMPLERS)


def cls_loss_opt(default: Any, what: str, activation: str) -> Any:
    losses = {name: loss for name, loss in CLS_LOSSES.items() if loss.activation == activation}
    return component(default, what, losses)


def reg_loss_opt(default: Any, what: str = "box regression loss (foreground only)") -> Any:
    return component(default, what, REG_LOSSES)


DETECTION_ARCHS = ("faster_rcnn", "fast_rcnn", "retinanet")
#: Semantic segmentation heads (torchvision's FCNHead, DeepLabHead) over the same backbones.
SEGMENTATION_ARCHS = ("fcn", "deeplabv3")
ARCHS = DETECTION_ARCHS + SEGMENTATION_ARCHS
#: `data.augment` steps that move a semantic mask with the image (the others move boxes only).
SEGMENTATION_AUGMENT_STEPS = ("hflip", "color_jitter")
#: Training augmentation steps (`data.augment`), in the order a pipeline applies them
#: (`hardmine.data.transforms`).
AUGMENT_STEPS = ("hflip", "color_jitter", "scale_jitter", "iou_crop")
BACKBONE_NAMES = tuple(BACKBONES)
SAMPLER_NAMES = tuple(SAMPLERS)
#: Classification-bias initialisations: the head's usual one, or sampling-free's from dataset counts.
BIAS_INITS = ("default", "dataset")


@dataclass
class ModelConfig:
    arch: str = opt(
        "faster_rcnn",
        "detector: Faster R-CNN, Fast R-CNN (needs proposal files) or RetinaNet; or semantic "
        "segmentation: an FCN or DeepLabV3 head (seg_head.*; docs/segmentation.md)",
        ARCHS,
    )
    backbone: str = opt("tiny", "feature extractor; 'tiny' is a small CPU-friendly net", BACKBONE_NAMES)
    pretrained: bool = opt(
        False, "load ImageNet backbone weights from the local torch hub cache (never downloads)"
    )
    torchvision_detector: str = opt(
        "",
        "start from this torchvision COCO-pretrained detector (architecture and weights, from the torch "
        "hub cache; never downloads); its class layers are new; '' = off (docs/pretrained.md)",
        ("", *TORCHVISION_DETECTORS),
    )
    trainable_layers: int = opt(
        3, "pretrained backbones and torchvision detectors: how many stages (from the top) are trained"
    )
    fpn_channels: int = opt(0, "FPN width; 0 = the backbone's default")
    sync_bn: bool = opt(
        False,
        "torchrun runs: BatchNorm statistics over the global batch (all processes) instead of each "
        "process's share; frozen BatchNorm (pretrained backbones) stays frozen; one process: no effect",
    )
    min_size: list[int] = opt(
        [320],
        "shorter image side after resizing; several values = random shapes: each batch trains at one "
        "(the same on every process), the longer-side cap scaled in proportion; tests at the last",
    )
    size_period: int = opt(1, "random shapes: draw a new training size every N iterations")
    max_size: int = opt(320, "cap on the longer image side after resizing")
    anchor_sizes: list[list[int]] = opt([], "anchor sizes per feature level; [] = the backbone's default")
    aspect_ratios: list[float] = opt([0.5, 1.0, 2.0], "anchor aspect ratios (h/w), the same on every level")


class HeadConfig:
    """What the three head sections share: the IoU labelling of their candidates, a sampler and two
    losses (each section declares its own defaults)."""

    sampler: Sampler
    cls_loss: ClsLoss
    reg_loss: RegLoss
    fg_iou: float
    bg_iou_lo: float | None
    bg_iou_hi: float
    guided_loss: float
    #: The lower background bound where both the section's bg_iou_lo and its sampler leave it open.
    fallback_bg_iou_lo: ClassVar[float] = 0.0

    def resolved_bg_iou_lo(self, sampler: Sampler | None = None) -> float:
        """bg_iou_lo, or where it is null the sampler's paper value (`Sampler.paper_bg_iou_lo`) of
        `sampler` (default: the section's), else `fallback_bg_iou_lo`."""
        sampler = self.sampler if sampler is None else sampler
        for lo in (self.bg_iou_lo, sampler.paper_bg_iou_lo):
            if lo is not None:
                return lo
        return self.fallback_bg_iou_lo

    def thresholds(self, sampler: Sampler | None = None) -> IoUThresholds:
        """How the head labels candidates for `sampler` (default: its own): foreground at IoU >=
        fg_iou, background at `resolved_bg_iou_lo` <= IoU < bg_iou_hi, the rest ignored."""
        return IoUThresholds(fg=self.fg_iou, bg_lo=self.resolved_bg_iou_lo(sampler), bg_hi=self.bg_iou_hi)


@dataclass
class RPNConfig(HeadConfig):
    sampler: Sampler = sampler_opt(
        lambda: RandomSampler(batch_size_per_image=256, fg_fraction=0.5), "anchors"
    )
    fg_iou: float = opt(0.7, "anchor is foreground at IoU >= this (plus each box's best anchor)")
    bg_iou_lo: float | None = opt(
        0.0, "anchor is background at bg_iou_lo <= IoU < bg_iou_hi; null = the sampler's paper value or 0"
    )
    bg_iou_hi: float = opt(0.3, "upper bound of the background IoU range")
    cls_loss: ClsLoss = cls_loss_opt(lambda: BCE(alpha=-1.0), "objectness loss (sigmoid, one class)", SIGMOID)
    reg_loss: RegLoss = reg_loss_opt(SmoothL1)
    pre_nms_top_n_train: int = opt(2000, "proposals per level kept before NMS, training")
    pre_nms_top_n_test: int = opt(1000, "proposals per level kept before NMS, evaluation")
    post_nms_top_n_train: int = opt(2000, "proposals per image kept after NMS, training")
    post_nms_top_n_test: int = opt(1000, "proposals per image kept after NMS, evaluation")
    nms_thresh: float = opt(0.7, "NMS IoU threshold between proposals")
    guided_loss: float = guided_loss_opt()
    bias_init: str = bias_init_opt("torchvision's (0)")


@dataclass
class RoIHeadConfig(HeadConfig):
    sampler: Sampler = sampler_opt(lambda: RandomSampler(batch_size_per_image=512, fg_fraction=0.25), "RoIs")
    fg_iou: float = opt(0.5, "RoI is foreground at IoU >= this")
    bg_iou_lo: float | None = opt(
        None,
        "RoI is background at bg_iou_lo <= IoU < bg_iou_hi; null = the sampler's paper value "
        "(ohem, hard_negative: 0), else Fast R-CNN's 0.1",
    )
    bg_iou_hi: float = opt(0.5, "upper bound of the background IoU range")
    cls_loss: ClsLoss = cls_loss_opt(
        CrossEntropy, "classification loss (softmax over C + 1 classes)", SOFTMAX
    )
    reg_loss: RegLoss = reg_loss_opt(
        SmoothL1, "box regression loss on class-specific deltas (foreground only)"
    )
    guided_loss: float = guided_loss_opt()
    bias_init: str = bias_init_opt("torchvision's (0)")
    class_adaptive_thresh: bool = class_adaptive_thresh_opt()
    representation_size: int = opt(256, "width of the two fully connected layers of the box head")
    roi_output_size: int = opt(7, "RoIAlign output size")
    sampling_ratio: int = opt(2, "RoIAlign sampling ratio")
    add_gt_as_proposals: bool = opt(True, "add the ground-truth boxes to the candidates in training")
    score_chunk_size: int = opt(
        256, "loss-ranking samplers: RoIs per chunk of the read-only scoring pass (memory vs speed)"
    )
    score_thresh: float = opt(0.05, "drop detections scoring below this")
    nms_thresh: float = opt(0.5, "per-class NMS IoU threshold at inference")
    detections_per_img: int = opt(100, "detections kept per image")
    iterative: IterativeRegression = field(default_factory=IterativeRegression)

    fallback_bg_iou_lo: ClassVar[float] = 0.1


@dataclass
class DenseHeadConfig(HeadConfig):
    sampler: Sampler = sampler_opt(NoSampler, "anchors ('none' = all, as RetinaNet)")
    fg_iou: float = opt(0.5, "anchor is foreground at IoU >= this (plus each box's best anchor)")
    bg_iou_lo: float | None = opt(
        0.0, "anchor is background at bg_iou_lo <= IoU < bg_iou_hi; null = the sampler's paper value or 0"
    )
    bg_iou_hi: float = opt(0.4, "upper bound of the background IoU range")
    cls_loss: ClsLoss = cls_loss_opt(
        SigmoidFocal,
        "classification loss (sigmoid; ghm = GHM-C, normalised by its own element count)",
        SIGMOID,
    )
    reg_loss: RegLoss = reg_loss_opt(
        L1, "box regression loss (foreground only; ghm = GHM-R, normalised by its own coordinate count)"
    )
    normalizer_momentum: float = opt(
        0.9,
        "EMA momentum of the foreground-count loss normaliser across iterations (detectron2: 0.9); "
        "0 = each batch's own count, which an image batch without objects turns into a loss spike",
    )
    normalizer_init: float = opt(100.0, "starting value of that EMA (detectron2: 100)")
    prior_prob: float = opt(0.01, "initial foreground probability of the classification bias")
    guided_loss: float = guided_loss_opt()
    bias_init: str = bias_init_opt("from prior_prob")
    class_adaptive_thresh: bool = class_adaptive_thresh_opt()
    num_convs: int = opt(4, "conv layers in each head tower")
    head_norm: str = opt(
        "group",
        "normalisation in the head towers: GroupNorm (trains much faster from scratch) or none",
        HEAD_NORMS,
    )
    score_thresh: float = opt(0.05, "drop detections scoring below this")
    nms_thresh: float = opt(0.5, "per-class NMS IoU threshold at inference")
    detections_per_img: int = opt(100, "detections kept per image")
    topk_candidates: int = opt(1000, "best anchors per level considered at inference")


#: `seg_head.normalizer` choices: what the summed loss of the kept pixels is divided by.
SEG_NORMALIZERS = ("kept", "all")


@dataclass
class SegHeadConfig:
    """The semantic segmentation head (model.arch=fcn or deeplabv3): its pixel loss, the pixel
    sampler that chooses which pixels count (pixel OHEM), and the head's shape."""

    loss: PixelLoss = component(PixelCrossEntropy, "per-pixel loss", PIXEL_LOSSES)
    sampler: PixelSampler = component(
        AllPixels,
        "which pixels count in the loss (none = every pixel not ignored; pixel OHEM)",
        PIXEL_SAMPLERS,
    )
    normalizer: str = opt(
        "kept",
        "the kept pixels' summed loss is divided by their number, or by all pixels of the batch "
        "(mmsegmentation's avg_non_ignore=False: scales the loss by the kept share)",
        SEG_NORMALIZERS,
    )
    feature_level: int = opt(0, "the FPN level the head reads: 0 = the finest (stride 8), 1 = stride 16, ...")
    atrous_rates: list[int] = opt(
        [12, 24, 36], "deeplabv3: the ASPP dilation rates (torchvision's DeepLabHead: 12, 24, 36)"
    )


#: `data.on_invalid` policies and `data.check_images` modes (`hardmine.data.check.IMAGE_CHECKS`).
ON_INVALID = ("stop", "skip")
IMAGE_CHECKS = ("none", "header", "decode")


@dataclass
class DataConfig:
    train: str = opt("", "training set: COCO .json or VOC root; '' = the built-in synthetic dataset")
    val: str = opt("", "validation set (same forms as data.train)")
    image_root: str = opt("", "folder the COCO file_name entries are relative to; '' = the JSON's folder")
    train_split: str = opt("trainval", "VOC: ImageSets/Main split used for training")
    val_split: str = opt("test", "VOC: ImageSets/Main split used for evaluation")
    class_names: list[str] = opt([], "VOC: class names, in label order; [] = the 20 Pascal VOC classes")
    synth_dir: str = opt("data/synth", "where the built-in dataset is generated (once, reused)")
    synth_seed: int = opt(0, "seed of the built-in dataset")
    synth_train: int = opt(300, "training images of the built-in dataset")
    synth_val: int = opt(100, "validation images of the built-in dataset")
    train_proposals: str = opt("", "Fast R-CNN: proposals file for the training set (hardmine proposals)")
    val_proposals: str = opt("", "Fast R-CNN: proposals file for the validation set")
    batch_size: int = opt(
        2, "images per training batch and process (torchrun: global batch = this x processes)"
    )
    num_workers: int = opt(0, "DataLoader worker processes")
    hflip_prob: float = opt(
        0.5, "probability of a horizontal flip in training (step 'hflip' of data.augment)"
    )
    augment: list[str] = opt(
        ["hflip"],
        f"training augmentation steps, any of {', '.join(AUGMENT_STEPS)}; always applied in that order; "
        "[] = none (docs/training-tricks.md)",
    )
    color_jitter: list[float] = opt(
        [0.125, 0.5, 0.5, 0.05],
        "step color_jitter: brightness, contrast, saturation factors drawn in [1 - x, 1 + x], hue "
        "shift in [-x, x] of the colour circle (torchvision ColorJitter; 0 = that part off)",
    )
    scale_jitter: list[float] = opt(
        [0.5, 1.5],
        "step scale_jitter: zoom factor range [lo, hi]; the image keeps its size: > 1 shows a random "
        "window of the enlarged image, < 1 the shrunk image at a random place on black",
    )
    iou_crop_scale: list[float] = opt(
        [0.3, 1.0],
        "step iou_crop (SSD): range [lo, hi] of the crop's sides as fractions of the image's; objects "
        "whose centre falls outside the crop are dropped",
    )
    mixup_prob: float = opt(
        0.0,
        "detection mixup: probability that a training image is blended with a random other one "
        "(both sets of boxes kept, loss-weighted by the blend ratio); 0 = off",
    )
    mixup_alpha: float = opt(1.5, "mixup: blend ratio lambda ~ Beta(alpha, alpha) (paper: 1.5)")
    mixup_off_last_epochs: int = opt(
        0,
        "mixup: none in the last K epochs of training (an epoch = training images // global batch "
        "size iterations; a partial last epoch counts); 0 = mixup to the end",
    )
    on_invalid: str = opt(
        "stop",
        "training checks both splits first (as `hardmine data check`); on errors: stop with the list, "
        "or skip the invalid images and annotations and print what was dropped",
        ON_INVALID,
    )
    check_images: str = opt(
        "header",
        "that check's image files: not at all, by header (exists, readable, annotated size; fast), or "
        "by decoding all pixels (finds truncated files too)",
        IMAGE_CHECKS,
    )


@dataclass
class SolverConfig:
    lr: float = opt(0.02, "peak learning rate (SGD)")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(1e-4, "L2 weight decay (not applied to norm layers and biases)")
    max_iter: int = opt(1000, "training iterations")
    warmup_iters: int = opt(100, "linear warmup iterations")
    warmup_factor: float = opt(0.001, "learning-rate factor at the first warmup iteration")
    schedule: str = opt("cosine", "decay after warmup", ("cosine", "step", "constant"))
    steps: list[int] = opt([], "step schedule: iterations where the learning rate is multiplied by gamma")
    gamma: float = opt(0.1, "step schedule: multiplier at each step")
    clip_grad_norm: float = opt(10.0, "clip the gradient norm to this; 0 = off")
    amp: str = opt("off", "mixed precision: bf16 (CPU/CUDA) or fp16 (CUDA)", ("off", "bf16", "fp16"))
    channels_last: bool = opt(
        True,
        "train with the convolution weights in channels-last (NHWC) memory format: 1.06-1.12x faster "
        "steps on the CPU, measured (docs/BENCHMARKS.md); the same model, other kernels",
    )


@dataclass
class TrainConfig:
    seed: int = opt(
        0,
        "seed of parameter init, sampling and augmentation (torchrun: process r's RNG from seed + r; "
        "data order and augmentation from the seed itself)",
    )
    device: str = opt(
        "auto",
        "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'; torchrun: auto/cuda = cuda:LOCAL_RANK",
    )
    dist_backend: str = opt(
        "auto",
        "torchrun runs: torch.distributed backend; auto = nccl on CUDA, gloo on the CPU (nccl needs CUDA)",
        ("auto", "gloo", "nccl"),
    )
    deterministic: bool = opt(True, "deterministic algorithms (bit-exact resume on CPU)")
    checkpoint_period: int = opt(200, "write a checkpoint every N iterations (and at the end)")
    log_period: int = opt(10, "write a log row every N iterations")
    eval_at_end: bool = opt(True, "evaluate on data.val after training and write metrics.json")
    eval_period: int = opt(
        0,
        "evaluate on data.val every N iterations: AP / AP50 in log.csv and TensorBoard, every metric "
        "(and the final evaluation's) in eval_history.json; does not change the training; 0 = never",
    )
    stop_at: int = opt(
        0,
        "stop after iteration N with a checkpoint, the schedule still that of solver.max_iter; "
        "--resume with a larger value (or 0) continues exactly; 0 = train to solver.max_iter",
    )
    progress: bool = opt(True, "show a progress bar")
    num_threads: int = opt(0, "torch CPU threads; 0 = torch's default")
    max_nonfinite_steps: int = opt(
        5,
        "a step with a NaN/Inf loss or gradient is skipped; after this many in a row training stops "
        "(the last checkpoint kept as it was); 0 = never stop",
    )


@dataclass
class EvalConfig:
    batch_size: int = opt(4, "images per inference batch")
    metric: str = opt(
        "auto",
        "COCO AP, VOC07 11-point + area AP, or both; auto = COCO, plus VOC for VOC data",
        ("auto", "coco", "voc", "both"),
    )
    scales: list[int] = opt(
        [],
        "multi-scale testing: shorter image sides to test at (the longer-side cap scales along); "
        "[] = the model's own size only",
    )
    hflip: bool = opt(False, "also test on the mirrored image, at every scale")
    merge: str = opt(
        "nms",
        "how the detections of the scales / flips merge: per-class NMS, or NMS then box voting",
        MERGE_METHODS,
    )
    merge_iou: float = opt(0.5, "IoU of the per-class NMS that merges the scales / flips")
    vote_iou: float = opt(0.5, "merge=vote: boxes overlapping a kept box at IoU >= this are averaged in")
    max_detections: int = opt(100, "detections kept per image after merging the scales / flips")


MINING_INITS = ("previous", "scratch")


@dataclass
class MiningConfig:
    """Offline hard-negative mining (bootstrapping); see docs/test-time-and-mining.md."""

    file: str = opt(
        "",
        "hard-negative file (hardmine mine): two-stage, its regions join the RoI head's candidates; "
        "one-stage, background anchors on them are up-weighted; '' = none",
    )
    weight: float = opt(2.0, "one-stage: loss-weight factor of background anchors on a mined region")
    anchor_iou: float = opt(0.5, "one-stage: an anchor is on a mined region at IoU >= this")
    rounds: int = opt(
        0, "bootstrapping: after training, mine the training set's false positives and retrain, N times"
    )
    init: str = opt(
        "previous", "rounds >= 1 start from the previous round's weights, or from scratch", MINING_INITS
    )
    round_iters: int = opt(0, "training iterations of rounds >= 1; 0 = solver.max_iter")
    score_thresh: float = opt(0.5, "rounds: a detection scoring at least this ...")
    iou_thresh: float = opt(0.3, "... with IoU below this to every ground-truth box is a false positive")
    start_from: str = opt(
        "",
        "checkpoint whose model weights training starts from (the rounds set it to the previous "
        "round's model_final.pt); '' = fresh initialisation",
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_head: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    dense_head: DenseHeadConfig = field(default_factory=DenseHeadConfig)
    seg_head: SegHeadConfig = field(default_factory=SegHeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    output_dir: str = opt("runs/default", "where checkpoints, logs and metrics go")

    def to_dict(self) -> dict[str, Any]:
        return options.to_dict(self)


HEADS = ("rpn", "roi_head", "dense_head")

#: Keys of a head section that hardmine once had, and where each went (relative to the section).
MOVED_HEAD_KEYS = {
    "batch_size_per_image": "sampler.batch_size_per_image",
    "fg_fraction": "sampler.fg_fraction",
    "ohem": "sampler",
    "iou_balanced": "sampler",
    "hard_negative": "sampler",
    "focal_alpha": "cls_loss.alpha",
    "focal_gamma": "cls_loss.gamma",
    "label_smoothing": "cls_loss.label_smoothing",
    "ghmc_bins": "cls_loss.bins",
    "ghmc_momentum": "cls_loss.momentum",
    "smooth_l1_beta": "reg_loss.beta",
    "balanced_l1_alpha": "reg_loss.alpha",
    "balanced_l1_gamma": "reg_loss.gamma",
    "balanced_l1_beta": "reg_loss.beta",
    "ghmr_mu": "reg_loss.mu",
    "ghmr_bins": "reg_loss.bins",
    "ghmr_momentum": "reg_loss.momentum",
    "ghmr_loss_weight": "reg_loss.loss_weight",
}


def _moved_key(section: Any, prefix: str, part: str, full: str) -> str | None:
    """The error for a head key that was replaced: where it went, and which samplers or losses
    have that option (e.g. roi_head.ohem.nms_thresh -> roi_head.sampler.nms_thresh)."""
    if not isinstance(section, HeadConfig) or part not in MOVED_HEAD_KEYS:
        return None
    new = MOVED_HEAD_KEYS[part]
    below = full[len(prefix) + len(part) + 2 :] if full != f"{prefix}.{part}" else ""
    if new == "sampler" and below:  # e.g. ohem.nms_thresh
        new = "bg_iou_lo" if below == "bg_iou_lo" else f"sampler.{below}"
    head_field, _, option = new.partition(".")
    hint = ""
    if head_field in ("sampler", "cls_loss", "reg_loss"):
        choices = {f.name: f for f in fields(section)}[head_field].metadata["classes"]
        having = [n for n, cls in choices.items() if option in {f.name for f in options.option_fields(cls)}]
        names = part if part in choices else "|".join(having) or "NAME"
        hint = (
            f" (with {prefix}.{head_field}={names})"
            if option
            else f" ({prefix}.{head_field}={names}, or a mapping {{name: {names}, OPTION: VALUE}})"
        )
    return f"config key {full!r} was replaced by {prefix}.{new}{hint}"


def parse_override(text: str) -> tuple[str, Any]:
    """Split `key=value`; the value is parsed as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse the value: {exc}") from None
    return key.strip(), value


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set one dotted key (an option, a section from a mapping, a sampler or loss by name or mapping)."""
    options.assign(cfg, key, value, _moved_key)


def apply_mapping(cfg: Config, mapping: dict[str, Any]) -> None:
    """Apply a nested mapping (a YAML preset) onto `cfg`."""
    for key, value in mapping.items():
        set_key(cfg, str(key), value)


def read_yaml_mapping(path: Path, kind: str, expected: str) -> dict[str, Any]:
    """The YAML mapping in `path`; ConfigError naming the file when it is missing, malformed or not
    a mapping (`kind` names the file's role, `expected` what its top level should be)."""
    if not path.is_file():
        raise ConfigError(f"{kind} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {expected}")
    return data


def preset_chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The mappings of a preset and of the presets it starts from (`base:` at its top level: a
    preset name or a path, relative to the preset's folder), the furthest base first."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    while True:
        mapping = read_yaml_mapping(path, "config file", "a mapping of config sections at the top level")
        base = mapping.pop("base", None)
        chain.append((path, mapping))
        if base is None:
            return chain[::-1]
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{path}: base: expected a preset name or a path, got {base!r}")
        candidate = path.parent / base
        if candidate.suffix not in (".yaml", ".yml"):
            candidate = candidate.with_name(f"{candidate.name}.yaml")
        if not candidate.is_file():
            raise ConfigError(f"{path}: base preset {base!r} not found (no file {candidate})")
        if candidate.resolve() in [p.resolve() for p, _ in chain]:
            cycle = " -> ".join(str(p) for p in [*(p for p, _ in chain), candidate])
            raise ConfigError(f"{path}: base {base!r} makes the presets inherit in a cycle: {cycle}")
        path = candidate


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML preset at `path` (if any; its bases first), then `key=value`
    overrides; validated."""
    cfg = Config()
    if path is not None:
        for file, mapping in preset_chain(Path(path)):
            try:
                apply_mapping(cfg, mapping)
            except ConfigError as exc:
                raise ConfigError(f"{file}: {exc}") from None
    apply_overrides(cfg, overrides or [])
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> None:
    """Apply `key=value` strings onto `cfg`, then validate the result."""
    for text in overrides:
        set_key(cfg, *parse_override(text))
    validate(cfg)


def config_from_dict(mapping: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (as stored in checkpoints)."""
    cfg = Config()
    apply_mapping(cfg, mapping)
    validate(cfg)
    return cfg


def saved_config_with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's `Config.to_dict()` completed with today's defaults for keys added since."""
    return options.with_defaults(Config(), saved)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def validate(cfg: Config) -> None:
    """Check every value before any work starts; errors name the key and what is allowed.

    Samplers, losses and `roi_head.iterative` check their own options (`options.check`)."""
    options.check(cfg)
    for name in HEADS:
        head = getattr(cfg, name)
        lo = head.resolved_bg_iou_lo()
        _require(
            0.0 <= lo <= head.bg_iou_hi <= head.fg_iou <= 1.0,
            f"{name}.fg_iou/bg_iou_lo/bg_iou_hi",
            f"need 0 <= bg_iou_lo <= bg_iou_hi <= fg_iou <= 1, got bg_iou_lo={lo}, "
            f"bg_iou_hi={head.bg_iou_hi}, fg_iou={head.fg_iou}",
        )
        _require(head.guided_loss >= 0, f"{name}.guided_loss", "must be >= 0 (0 = off)")
    _require(
        all(s > 0 for s in cfg.model.min_size) and cfg.model.min_size, "model.min_size", "positive sizes"
    )
    _require(cfg.model.max_size > 0, "model.max_size", "must be > 0")
    _require(cfg.model.size_period >= 1, "model.size_period", "must be >= 1")
    _require(all(r > 0 for r in cfg.model.aspect_ratios), "model.aspect_ratios", "must be > 0")
    _require(cfg.roi_head.score_chunk_size > 0, "roi_head.score_chunk_size", "must be > 0")
    d = cfg.dense_head
    _require(0.0 < d.prior_prob < 1.0, "dense_head.prior_prob", "must be in (0, 1)")
    _require(0.0 <= d.normalizer_momentum < 1.0, "dense_head.normalizer_momentum", "must be in [0, 1)")
    _require(d.normalizer_init > 0, "dense_head.normalizer_init", "must be > 0")
    _require(cfg.data.batch_size > 0, "data.batch_size", "must be > 0")
    _require(cfg.data.num_workers >= 0, "data.num_workers", "must be >= 0")
    _require(0.0 <= cfg.data.hflip_prob <= 1.0, "data.hflip_prob", "must be in [0, 1]")
    _validate_augmentation(cfg)
    _require(cfg.solver.lr > 0, "solver.lr", "must be > 0")
    _require(cfg.solver.max_iter > 0, "solver.max_iter", "must be > 0")
    _require(cfg.solver.warmup_iters >= 0, "solver.warmup_iters", "must be >= 0")
    _require(0.0 < cfg.solver.warmup_factor <= 1.0, "solver.warmup_factor", "must be in (0, 1]")
    _require(cfg.solver.clip_grad_norm >= 0, "solver.clip_grad_norm", "must be >= 0 (0 = off)")
    _require(
        cfg.solver.steps == sorted(cfg.solver.steps) and all(s > 0 for s in cfg.solver.steps),
        "solver.steps",
        "must be increasing positive iterations",
    )
    _require(cfg.train.checkpoint_period > 0, "train.checkpoint_period", "must be > 0")
    _require(cfg.train.log_period > 0, "train.log_period", "must be > 0")
    _require(cfg.train.eval_period >= 0, "train.eval_period", "must be >= 0 (0 = never)")
    _require(cfg.train.stop_at >= 0, "train.stop_at", "must be >= 0 (0 = train to solver.max_iter)")
    _require(
        cfg.train.stop_at == 0 or cfg.mining.rounds == 0,
        "train.stop_at",
        "stops a single run; bootstrapping (mining.rounds > 0) cannot stop part-way",
    )
    _require(cfg.eval.batch_size > 0, "eval.batch_size", "must be > 0")
    _validate_limits(cfg)
    if cfg.model.arch == "fast_rcnn":
        _require(bool(cfg.data.train_proposals), "data.train_proposals", "Fast R-CNN needs a proposals file")
    _validate_test_time_and_mining(cfg)
    if cfg.model.arch in SEGMENTATION_ARCHS:
        _validate_segmentation(cfg)
    elif cfg.model.torchvision_detector:
        check_torchvision_detector(cfg.to_dict(), Config().to_dict())


def _validate_segmentation(cfg: Config) -> None:
    """What a segmentation model (model.arch=fcn or deeplabv3) needs, and the detection options it
    cannot honour: an error rather than an option silently ignored."""
    arch = f"model.arch={cfg.model.arch}"
    s = cfg.seg_head
    _require(s.feature_level >= 0, "seg_head.feature_level", "must be >= 0")
    _require(
        bool(s.atrous_rates) and all(r > 0 for r in s.atrous_rates),
        "seg_head.atrous_rates",
        f"needs positive dilation rates, got {s.atrous_rates}",
    )
    _require(
        cfg.model.arch != "deeplabv3" or cfg.data.batch_size >= 2,
        "data.batch_size",
        f"{arch} needs >= 2 images per process: the image-pooling branch of DeepLab's ASPP has "
        "BatchNorm over 1x1 features, which a batch of one cannot normalise",
    )
    moving = [step for step in cfg.data.augment if step not in SEGMENTATION_AUGMENT_STEPS]
    _require(
        not moving,
        "data.augment",
        f"{arch}: {', '.join(moving)} move(s) boxes only, not the semantic mask; use "
        f"{' and '.join(SEGMENTATION_AUGMENT_STEPS)}",
    )
    unsupported = {
        "data.mixup_prob": cfg.data.mixup_prob > 0,
        "model.torchvision_detector": bool(cfg.model.torchvision_detector),
        "data.train_proposals": bool(cfg.data.train_proposals),
        "mining.file": bool(cfg.mining.file),
        "mining.rounds": cfg.mining.rounds > 0,
        "eval.scales": bool(cfg.eval.scales),
        "eval.hflip": cfg.eval.hflip,
    }
    for key, used in unsupported.items():
        _require(not used, key, f"is a detection option; {arch} (segmentation) has no such step")


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def _validate_limits(cfg: Config) -> None:
    """Counts, sizes, thresholds and the fault-handling options that `validate` does not cover."""
    m = cfg.model
    _require(m.trainable_layers >= 0, "model.trainable_layers", "must be >= 0")
    _require(m.fpn_channels >= 0, "model.fpn_channels", "must be >= 0 (0 = the backbone's default)")
    _require(bool(m.aspect_ratios), "model.aspect_ratios", "needs at least one ratio")
    _require(
        all(level and all(s > 0 for s in level) for level in m.anchor_sizes),
        "model.anchor_sizes",
        "one non-empty list of positive sizes per feature level, or [] for the backbone's default",
    )
    r = cfg.rpn
    for key in ("pre_nms_top_n_train", "pre_nms_top_n_test", "post_nms_top_n_train", "post_nms_top_n_test"):
        _require(getattr(r, key) > 0, f"rpn.{key}", "must be > 0")
    _require(0.0 < r.nms_thresh <= 1.0, "rpn.nms_thresh", "must be in (0, 1]")
    for name in ("roi_head", "dense_head"):
        head = getattr(cfg, name)
        _require(0.0 <= head.score_thresh <= 1.0, f"{name}.score_thresh", "must be in [0, 1]")
        _require(0.0 < head.nms_thresh <= 1.0, f"{name}.nms_thresh", "must be in (0, 1]")
        _require(head.detections_per_img > 0, f"{name}.detections_per_img", "must be > 0")
    h = cfg.roi_head
    _require(h.representation_size > 0, "roi_head.representation_size", "must be > 0")
    _require(h.roi_output_size > 0, "roi_head.roi_output_size", "must be > 0")
    d = cfg.dense_head
    _require(d.num_convs >= 0, "dense_head.num_convs", "must be >= 0")
    _require(d.topk_candidates > 0, "dense_head.topk_candidates", "must be > 0")
    data = cfg.data
    _require(data.synth_train > 0, "data.synth_train", "must be > 0")
    _require(data.synth_val > 0, "data.synth_val", "must be > 0")
    _require(data.synth_seed >= 0, "data.synth_seed", "must be >= 0")
    _require(bool(data.synth_dir), "data.synth_dir", "must not be empty")
    _require(
        all(data.class_names) and len(set(data.class_names)) == len(data.class_names),
        "data.class_names",
        "names must be non-empty and distinct",
    )
    s = cfg.solver
    _require(0.0 <= s.momentum < 1.0, "solver.momentum", "must be in [0, 1)")
    _require(s.weight_decay >= 0, "solver.weight_decay", "must be >= 0")
    _require(s.gamma > 0, "solver.gamma", "must be > 0")
    t = cfg.train
    _require(t.seed >= 0, "train.seed", "must be >= 0")
    _require(t.num_threads >= 0, "train.num_threads", "must be >= 0 (0 = torch's default)")
    _require(t.max_nonfinite_steps >= 0, "train.max_nonfinite_steps", "must be >= 0 (0 = never stop)")
    _require(
        DEVICE_PATTERN.fullmatch(t.device) is not None,
        "train.device",
        f"must be auto, cpu, cuda or cuda:N, got {t.device!r}",
    )
    _require(bool(cfg.output_dir), "output_dir", "must not be empty")


def _validate_test_time_and_mining(cfg: Config) -> None:
    """The `eval` multi-scale options and `mining`."""
    e = cfg.eval
    _require(all(s > 0 for s in e.scales), "eval.scales", "must be positive sizes")
    for key in ("merge_iou", "vote_iou"):
        _require(0.0 < getattr(e, key) <= 1.0, f"eval.{key}", "must be in (0, 1]")
    _require(e.max_detections > 0, "eval.max_detections", "must be > 0")
    m = cfg.mining
    _require(m.weight > 0, "mining.weight", "must be > 0 (1 = no up-weighting)")
    _require(0.0 < m.anchor_iou <= 1.0, "mining.anchor_iou", "must be in (0, 1]")
    _require(m.rounds >= 0, "mining.rounds", "must be >= 0 (0 = no bootstrapping)")
    _require(m.round_iters >= 0, "mining.round_iters", "must be >= 0 (0 = solver.max_iter)")
    _require(0.0 <= m.score_thresh <= 1.0, "mining.score_thresh", "must be in [0, 1]")
    _require(0.0 < m.iou_thresh <= 1.0, "mining.iou_thresh", "must be in (0, 1]")


def _validate_augmentation(cfg: Config) -> None:
    """The training augmentation steps, their parameters and mixup (`data.*`)."""
    d = cfg.data
    for i, step in enumerate(d.augment):
        choices = ", ".join(AUGMENT_STEPS)
        _require(step in AUGMENT_STEPS, "data.augment", f"unknown step {step!r}; choose from {choices}")
        _require(step not in d.augment[:i], "data.augment", f"{step!r} is listed twice")
    _require(
        len(d.color_jitter) == 4 and all(x >= 0 for x in d.color_jitter),
        "data.color_jitter",
        f"needs 4 values >= 0 (brightness, contrast, saturation, hue), got {d.color_jitter}",
    )
    _require(len(d.color_jitter) < 4 or d.color_jitter[3] <= 0.5, "data.color_jitter", "hue must be <= 0.5")
    _require(
        len(d.scale_jitter) == 2 and 0 < d.scale_jitter[0] <= d.scale_jitter[1],
        "data.scale_jitter",
        f"needs [lo, hi] with 0 < lo <= hi, got {d.scale_jitter}",
    )
    _require(
        len(d.iou_crop_scale) == 2 and 0 < d.iou_crop_scale[0] <= d.iou_crop_scale[1] <= 1,
        "data.iou_crop_scale",
        f"needs [lo, hi] with 0 < lo <= hi <= 1, got {d.iou_crop_scale}",
    )
    _require(0.0 <= d.mixup_prob <= 1.0, "data.mixup_prob", "must be in [0, 1] (0 = off)")
    _require(d.mixup_alpha > 0, "data.mixup_alpha", "must be > 0")
    _require(
        d.mixup_off_last_epochs >= 0, "data.mixup_off_last_epochs", "must be >= 0 (0 = mixup to the end)"
    )


def describe_options() -> str:
    """Every config key with its default and help text, then every sampler and loss with its
    options, for `--help`."""
    lines = options.describe(Config())
    lines += options.describe_choices("Samplers (HEAD.sampler=NAME; options HEAD.sampler.OPTION):", SAMPLERS)
    lines += options.describe_choices(
        "Classification losses (HEAD.cls_loss=NAME; options HEAD.cls_loss.OPTION; roi_head: softmax ones):",
        CLS_LOSSES,
    )
    lines += options.describe_choices(
        "Box losses (HEAD.reg_loss=NAME; options HEAD.reg_loss.OPTION):", REG_LOSSES
    )
    lines += options.describe_choices(
        "Pixel losses (seg_head.loss=NAME; options seg_head.loss.OPTION):", PIXEL_LOSSES
    )
    lines += options.describe_choices(
        "Pixel samplers (seg_head.sampler=NAME; options seg_head.sampler.OPTION):", PIXEL_SAMPLERS
    )
    return "\n".join(lines).lstrip("\n")


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
