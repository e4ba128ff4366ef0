"""Gallery of a sampler's choice: which candidates (RoIs, anchors) one head's sampler, OHEM above all,
selects on one training image, drawn on that image.

`record_selection` runs a model's training forward on one image, with the chosen head's sampler
replaced by the requested one inside a `RecordingSampler`, which delegates to it and keeps its
inputs (the candidates and, for loss-ranking samplers, their losses) and its outputs (the
`SampleResult`s and `last_stats`). The model is not changed: no autograd and no optimizer; norm
layers that track running statistics run in eval mode (they normalise with their running statistics
and do not update them); the transform resizes at its evaluation scale, so the run is deterministic;
the caller's RNG is left as it was; and every module's mode, the head's sampler and every head's
`last_stats` are restored afterwards. The returned `Selection` holds the candidates mapped back from
the model's resized coordinates to the original image (as predictions are); `draw_selection` draws
it, and `render_selection` does both for one image of a dataset, as `hardmine gallery` does.
For samplers that select nothing (`none`: every candidate trains, as in RetinaNet with focal loss),
`highest_loss` draws instead the candidates that the head's own loss weights most: the recorder
then asks the head for every candidate's loss although the sampler does not need it.

The image is a batch of one: OHEM's per-batch budget (B x images) is then B, and the foreground /
background split can differ from a training batch, where images compete for the budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.models.detection.transform import resize_boxes

from hardmine.config import Config
from hardmine.data.dataset import DetectionDataset, Target
from hardmine.data.records import DatasetIndex, ImageRecord
from hardmine.engine.faults import BufferSnapshot
from hardmine.engine.inference import checked_split, load_trained, require_detector
from hardmine.engine.proposals import load_split_proposals
from hardmine.errors import ConfigError, DataError, HardmineError
from hardmine.models.build import build_sampler
from hardmine.report.draw import GT_COLOR, Color, draw_boxes, draw_legend
from hardmine.sampling import (
    SAMPLERS,
    CandidateLosses,
    Candidates,
    Sampler,
    SampleResult,
    ScoreFn,
    assign_labels,
)

#: `model.heads` name -> config section (the names `--head` takes).
HEAD_SECTIONS = {"rpn": "rpn", "roi": "roi_head", "dense": "dense_head"}

FG_COLOR: Color = (0, 230, 64)
BG_COLOR: Color = (255, 0, 200)
CANDIDATE_COLOR: Color = (200, 200, 200)
NOTE_COLOR: Color = (215, 215, 215)
#: Opacity of the eligible candidates drawn under the selection (`show_all`).
CANDIDATE_OPACITY = 0.3


@dataclass
class SamplerCall:
    """One call of a sampler: its inputs and outputs, as the head passed and received them.

    candidates: per image, in the model's resized coordinates. losses: what the head's scoring
    callable returned (loss-ranking samplers only, else None). results: the selection per image.
    stats: a copy of the sampler's `last_stats` after the call.
    """

    candidates: Candidates
    losses: list[CandidateLosses] | None
    results: list[SampleResult]
    stats: dict[str, float]


class RecordingSampler:
    """Stands in for `sampler` in a head: delegates every call and attribute to it and appends each
    call's inputs and outputs to `calls`, so the selection can be shown exactly as made.

    score_all: also record every candidate's losses when `sampler` does not rank by loss (the head
    then passes its scoring callable, which the recorder calls; the sampler still gets none).
    """

    def __init__(self, sampler: Sampler, score_all: bool = False) -> None:
        self.sampler = sampler
        self.score_all = score_all
        self.calls: list[SamplerCall] = []

    @property
    def needs_scores(self) -> bool:
        """Whether the head passes its scoring callable: the sampler's wish, or `score_all`."""
        return self.sampler.needs_scores or self.score_all

    def __getattr__(self, name: str) -> Any:
        """Everything not recorded (thresholds, mode, last_stats, ...) is the sampler's."""
        sampler = self.__dict__.get("sampler")
        if sampler is None:
            raise AttributeError(name)
        return getattr(sampler, name)

    def __call__(self, candidates: Candidates, score_fn: ScoreFn | None = None) -> list[SampleResult]:
        losses: list[CandidateLosses] = []

        def recording_score_fn(labels: list[Tensor]) -> list[CandidateLosses]:
            assert score_fn is not None
            losses[:] = score_fn(labels)
            return losses

        if score_fn is not None and not self.sampler.needs_scores:  # score_all: losses for the record only
            recording_score_fn(assign_labels(candidates, self.sampler.thresholds))
            score_fn = None
        results = self.sampler(candidates, recording_score_fn if score_fn is not None else None)
        self.calls.append(SamplerCall(candidates, losses or None, results, dict(self.sampler.last_stats)))
        return results


@dataclass
class Selection:
    """What a head's sampler selected on one image.

    call: the sampler's inputs and outputs (a batch of one image, resized coordinates).
    boxes: [N, 4] every candidate in original image pixels; assigned: [N] the label the sampler
    assigned to each (>= 1 foreground class, 0 background, -1 ignored: never selected);
    gt_boxes: [G, 4] the ground truth in original image pixels. All on the CPU.
    """

    head: str
    sampler: str
    image_id: int
    call: SamplerCall
    boxes: Tensor
    assigned: Tensor
    gt_boxes: Tensor

    @property
    def result(self) -> SampleResult:
        return self.call.results[0]

    @property
    def fg_indices(self) -> Tensor:
        """Selected foreground candidates (indices into `boxes`)."""
        return self.result.indices[self.result.labels > 0].cpu()

    @property
    def bg_indices(self) -> Tensor:
        """Selected background candidates (indices into `boxes`)."""
        return self.result.indices[self.result.labels == 0].cpu()

    @property
    def eligible(self) -> Tensor:
        """[N] bool: candidates the sampler could select (assigned foreground or background)."""
        return self.assigned >= 0

    def highest_loss(self, k: int) -> Tensor:
        """The `k` eligible candidates with the highest classification loss (indices into `boxes`,
        highest first); needs the losses recorded (`record_selection(..., score_all=True)`)."""
        if self.call.losses is None:
            raise HardmineError("no candidate losses were recorded; use record_selection(score_all=True)")
        loss = self.call.losses[0].cls.detach().float().cpu().masked_fill(~self.eligible, float("-inf"))
        order = loss.argsort(descending=True)
        return order[: min(k, int(self.eligible.sum()))]

    @property
    def counts(self) -> dict[str, int]:
        """Selected fg / bg, eligible and all candidates, ground-truth boxes: the legend's numbers."""
        return {
            "num_fg_selected": self.result.num_fg,
            "num_bg_selected": self.result.num_bg,
            "num_eligible": int(self.eligible.sum()),
            "num_candidates": self.boxes.shape[0],
            "num_gt": self.gt_boxes.shape[0],
        }

    def nms_note(self) -> str | None:
        """How many candidates the sampler's NMS removed, when it reports it (OHEM), else None."""
        removed = self.call.stats.get("num_removed_by_nms")
        if removed is None:
            return None
        examined = self.call.stats.get("num_nms_examined")
        return f"{removed:.0f} removed by NMS" + (f" ({examined:.0f} examined)" if examined else "")

    def describe(self) -> str:
        """One line for the terminal."""
        c = self.counts
        parts = [
            f"{self.head}/{self.sampler} on image {self.image_id}: {c['num_fg_selected']} fg + "
            f"{c['num_bg_selected']} bg selected of {c['num_eligible']} eligible candidates "
            f"({c['num_candidates']} in all)",
            self.nms_note(),
            f"{c['num_gt']} ground-truth boxes",
        ]
        return "; ".join(p for p in parts if p)


def sampling_heads(model: nn.Module) -> dict[str, nn.Module]:
    """The model's sampling heads by config section name, the main head first."""
    return {HEAD_SECTIONS[name]: head for name, head in model.heads.items()}


def check_head(model: nn.Module, head: str) -> nn.Module:
    """The head `head` (a config section name) of `model`; a clear error listing its heads if absent."""
    heads = sampling_heads(model)
    if head not in heads:
        raise HardmineError(
            f"this {type(model).__name__} has no head {head!r}; its heads: {', '.join(heads)}"
        )
    return heads[head]


def find_record(index: DatasetIndex, key: int | str) -> ImageRecord:
    """The image of `index` whose id is `key`, else whose file name (as listed, or its last part) is."""
    text = str(key)
    by_id = [r for r in index.records if str(r.image_id) == text]
    by_name = [r for r in index.records if r.file_name == text] or [
        r for r in index.records if Path(r.file_name).name == text
    ]
    found = by_id or by_name
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(r.file_name for r in found[:5])
        raise DataError(f"{text!r} names {len(found)} images of {index.source} ({names}); give the image id")
    examples = ", ".join(f"{r.image_id} ({r.file_name})" for r in index.records[:3])
    raise DataError(
        f"no image with id or file name {text!r} in {index.source} "
        f"({len(index.records)} images, e.g. {examples or 'none'})"
    )


def build_head_sampler(cfg: Config, head: str, name: str) -> Sampler:
    """Sampler `name` for `cfg`'s `head` section, labelling with the head's IoU thresholds: the
    configured sampler (with its options) when it is that one, else `name` with its defaults."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    section = getattr(cfg, head)
    return build_sampler(section, section.sampler if section.sampler.name == name else SAMPLERS[name]())


def sampler_name(sampler: Sampler) -> str:
    """The config name of `sampler` (its class name if it has none)."""
    return getattr(type(sampler), "name", type(sampler).__name__)


@contextlib.contextmanager
def _read_only_training(model: nn.Module, device: torch.device, seed: int) -> Iterator[None]:
    """Training mode for the heads' losses without changing `model` (see the module docstring).

    RNG draws (e.g. a random sampler's) are seeded by `seed` inside `fork_rng`; buffers that a
    training forward moves (the dense head's foreground-count EMA, GHM's bin counts) are restored.
    """
    modes = {module: module.training for module in model.modules()}
    buffers = BufferSnapshot(model)
    head_stats = {name: head.last_stats for name, head in model.heads.items()}
    model.train()
    for module in model.modules():
        if getattr(module, "track_running_stats", False):  # BatchNorm, InstanceNorm with running stats
            module.eval()
    model.transform.eval()  # resize at the evaluation scale instead of a random training one
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield
    finally:
        buffers.restore()
        for module, training in modes.items():
            module.training = training
        for name, head in model.heads.items():
            head.last_stats = head_stats[name]


@contextlib.contextmanager
def _sampler_replaced(head: nn.Module, sampler: RecordingSampler) -> Iterator[None]:
    original = head.sampler
    head.sampler = sampler
    try:
        yield
    finally:
        head.sampler = original


def record_selection(
    model: nn.Module,
    image: Tensor,
    target: Target,
    head: str,
    sampler: Sampler,
    seed: int = 0,
    score_all: bool = False,
) -> Selection:
    """What `sampler` selects for `head` on one image, `model` left unchanged.

    image: float [3, H, W] in [0, 1]; target: its ground truth in original pixels, as
    `DetectionDataset` gives it ("boxes", "labels", optional "ignore_boxes", "proposals" for
    Fast R-CNN). Runs the model's training forward, its sampler of `head` replaced by a
    `RecordingSampler` around `sampler`, in the read-only mode of the module docstring.
    score_all: record every candidate's losses even if `sampler` does not rank by loss.
    """
    head_module = check_head(model, head)
    device = next(model.parameters()).device
    recorder = RecordingSampler(sampler, score_all=score_all)
    resized_sizes: list[tuple[int, int]] = []

    def keep_resized_size(module: nn.Module, inputs: Any, output: Any) -> None:
        resized_sizes.extend(output[0].image_sizes)

    hook = model.transform.register_forward_hook(keep_resized_size)
    try:
        with _read_only_training(model, device, seed), _sampler_replaced(head_module, recorder):
            model([image.to(device)], [{k: v.to(device) for k, v in target.items()}])
    finally:
        hook.remove()
    (call,) = recorder.calls  # one forward, one sampling call per head
    (resized_size,) = resized_sizes
    original_size = [int(image.shape[-2]), int(image.shape[-1])]
    boxes = resize_boxes(call.candidates.boxes[0].detach().float(), list(resized_size), original_size)
    return Selection(
        head=head,
        sampler=sampler_name(sampler),
        image_id=int(target["image_id"]),
        call=call,
        boxes=boxes.cpu(),
        assigned=assign_labels(call.candidates, sampler.thresholds)[0].cpu(),
        gt_boxes=target["boxes"].detach().float().cpu(),
    )


def legend_lines(selection: Selection, show_all: bool = False) -> list[tuple[str, Color]]:
    """The legend: head and sampler, then each drawn box set with its count, in its colour."""
    c = selection.counts
    faint = " (faint)" if show_all else ""
    lines = [
        (f"{selection.head}, sampler {selection.sampler}", NOTE_COLOR),
        (f"{c['num_fg_selected']} fg selected", FG_COLOR),
        (f"{c['num_bg_selected']} bg selected", BG_COLOR),
        (f"{c['num_gt']} ground truth", GT_COLOR),
        (
            f"{c['num_eligible']} eligible{faint} of {c['num_candidates']} candidates",
            CANDIDATE_COLOR if show_all else NOTE_COLOR,
        ),
    ]
    note = selection.nms_note()
    if note:
        lines.append((note, NOTE_COLOR))
    return lines


def draw_selection(image: Tensor | str | Path, selection: Selection, show_all: bool = False) -> Image.Image:
    """`image` (original size) with, bottom to top: all eligible candidates faintly (`show_all`),
    the ground truth (white, 3 px), the selected background and then foreground candidates (1 px),
    and the legend in the top-left corner."""
    canvas = image
    if show_all:
        canvas = draw_boxes(
            canvas, selection.boxes[selection.eligible], CANDIDATE_COLOR, opacity=CANDIDATE_OPACITY
        )
    canvas = draw_boxes(canvas, selection.gt_boxes, GT_COLOR, width=3)
    canvas = draw_boxes(canvas, selection.boxes[selection.bg_indices], BG_COLOR)
    canvas = draw_boxes(canvas, selection.boxes[selection.fg_indices], FG_COLOR)
    return draw_legend(canvas, legend_lines(selection, show_all))


def highest_loss_legend(selection: Selection, k: int) -> list[tuple[str, Color]]:
    """The legend of `draw_highest_loss`: what the sampler trains on, then the drawn sets."""
    top = selection.highest_loss(k)
    fg = int((selection.assigned[top] > 0).sum())
    c = selection.counts
    trained = c["num_fg_selected"] + c["num_bg_selected"]
    return [
        (f"{selection.head}, sampler {selection.sampler}", NOTE_COLOR),
        (f"{trained} of {c['num_candidates']} candidates train", NOTE_COLOR),
        (f"top {len(top)} by cls loss:", NOTE_COLOR),
        (f"{fg} fg", FG_COLOR),
        (f"{len(top) - fg} bg", BG_COLOR),
        (f"{c['num_gt']} ground truth", GT_COLOR),
    ]


def draw_highest_loss(image: Tensor | str | Path, selection: Selection, k: int) -> Image.Image:
    """`image` with the ground truth (white, 3 px) and the `k` eligible candidates with the highest
    classification loss, background (magenta) then foreground (green), and the legend."""
    top = selection.highest_loss(k)
    fg = top[selection.assigned[top] > 0]
    bg = top[selection.assigned[top] == 0]
    canvas = draw_boxes(image, selection.gt_boxes, GT_COLOR, width=3)
    canvas = draw_boxes(canvas, selection.boxes[bg], BG_COLOR)
    canvas = draw_boxes(canvas, selection.boxes[fg], FG_COLOR)
    return draw_legend(canvas, highest_loss_legend(selection, k))


def render_selection(
    model: nn.Module,
    cfg: Config,
    index: DatasetIndex,
    record: ImageRecord,
    head: str | None = None,
    sampler: str = "ohem",
    show_all: bool = False,
    highest_loss: int = 0,
) -> tuple[Image.Image, Selection]:
    """Record and draw what `sampler` selects for `head` on `record`, an image of `index`.

    head: a config section name ("roi_head", "rpn", "dense_head"); None for the model's main head
    (roi_head for Fast/Faster R-CNN, dense_head for RetinaNet). sampler: a sampler name, built by
    `build_head_sampler` (the head's own options when it is the configured sampler, e.g.
    roi_head.sampler.nms_thresh, else that sampler's defaults). Fast R-CNN reads the candidates of
    `index` from its configured training proposals file (data.train_proposals). highest_loss > 0:
    draw instead that many eligible candidates with the highest classification loss under the
    head's own loss (`draw_highest_loss`), for samplers that keep every candidate (`none`).
    """
    head = head or next(iter(sampling_heads(model)))
    check_head(model, head)
    chosen = build_head_sampler(cfg, head, sampler)
    proposals = load_split_proposals(cfg, "train", index)  # Fast R-CNN's candidates, else None
    if proposals is not None:
        proposals = {record.image_id: proposals[record.image_id]}
    one_image = dataclasses.replace(index, records=[record])
    image, target = DetectionDataset(one_image, train=False, proposals=proposals)[0]
    selection = record_selection(
        model, image, target, head, chosen, seed=cfg.train.seed, score_all=highest_loss > 0
    )
    if highest_loss > 0:
        return draw_highest_loss(image, selection, highest_loss), selection
    return draw_selection(image, selection, show_all), selection


def draw_checkpoint_selection(
    checkpoint: str | Path,
    overrides: list[str],
    image: int | str,
    head: str | None = None,
    sampler: str = "ohem",
    show_all: bool = False,
    out: str | Path | None = None,
) -> tuple[Path, Selection]:
    """`render_selection` with a checkpoint's model (its config with `overrides`) on the image of
    its data.train with id or file name `image`, drawn to `out` (default:
    CHECKPOINT_FOLDER/gallery/IMAGE_HEAD_SAMPLER.png). Returns the PNG's path and the selection."""
    cfg, model, payload, _ = load_trained(checkpoint, overrides)
    require_detector(cfg, checkpoint, "gallery")
    index = checked_split(cfg, payload, "train", checkpoint)
    record = find_record(index, image)
    drawing, selection = render_selection(
        model, cfg, index, record, head=head, sampler=sampler, show_all=show_all
    )
    name = f"{Path(record.file_name).stem}_{selection.head}_{selection.sampler}.png"
    path = Path(out) if out else Path(checkpoint).parent / "gallery" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    drawing.save(path, format="PNG")
    return path, selection
