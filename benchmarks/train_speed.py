"""Training throughput of hardmine's Faster R-CNN against a plain loop around torchvision's FasterRCNN.

Same backbone architecture (hardmine's `tiny` by default), same anchors, same RPN settings, same box
head width, same number of RoIs per image (512, 25 % foreground) and the same batches of the
built-in dataset; only the detector implementation differs. The two models are timed in
alternating rounds (A B A B ...) in one process so machine drift hits both alike, and the ratio
is taken round by round (median reported).

    python -m benchmarks.train_speed [--quick] [--device cpu|cuda] [--rounds N] [--iters N]

Last printed line: `train_speed_ratio=R` (hardmine images/s divided by torchvision's; >= 0.97 is
the target).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from benchmarks.common import make_batches, train_steps
from hardmine.config import load_config
from hardmine.data.sources import resolve_split
from hardmine.engine.inference import resolve_device
from hardmine.engine.schedule import build_optimizer
from hardmine.models.backbones import build_backbone
from hardmine.models.build import _anchor_generator, build_model


def torchvision_model(cfg, num_classes: int) -> nn.Module:
    """torchvision's own FasterRCNN with the same blocks and budgets as hardmine's model."""
    backbone = build_backbone(cfg.model.backbone)
    anchors = _anchor_generator(cfg, backbone)
    r, p = cfg.roi_head, cfg.rpn
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=tuple(cfg.model.min_size),
        max_size=cfg.model.max_size,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=p.pre_nms_top_n_train,
        rpn_post_nms_top_n_train=p.post_nms_top_n_train,
        rpn_batch_size_per_image=p.sampler.batch_size_per_image,
        rpn_positive_fraction=p.sampler.fg_fraction,
        box_roi_pool=MultiScaleRoIAlign(backbone.feature_names, r.roi_output_size, r.sampling_ratio),
        box_head=TwoMLPHead(backbone.out_channels * r.roi_output_size**2, r.representation_size),
        box_predictor=FastRCNNPredictor(r.representation_size, num_classes + 1),
        box_batch_size_per_image=r.sampler.batch_size_per_image,
        box_positive_fraction=r.sampler.fg_fraction,
    )


def time_iterations(model: nn.Module, batches: list, device: torch.device) -> float:
    """Seconds for one training step on each batch, with a fresh SGD optimizer."""
    return train_steps(model, build_optimizer(model, load_config().solver), batches, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (under a minute on 2 CPU cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=15, help="alternating timing rounds")
    parser.add_argument("--iters", type=int, default=6, help="training iterations per round")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both models")
    args = parser.parse_args()
    rounds, iters = (3, 4) if args.quick else (args.rounds, args.iters)

    cfg = load_config(None, ["roi_head.bg_iou_lo=0.0", *args.overrides])  # torchvision samples bg in [0, 0.5)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    index = resolve_split(cfg.data, "train")
    batches = make_batches(cfg, iters, args.batch_size, device)
    ours = build_model(cfg, index.num_classes).to(device)
    theirs = torchvision_model(cfg, index.num_classes).to(device)
    time_iterations(ours, batches[:2], device)  # warm-up
    time_iterations(theirs, batches[:2], device)
    ratios, ours_ips, theirs_ips = [], [], []
    images_per_round = iters * args.batch_size
    for r in range(rounds):
        # A B, then B A: whichever runs first in a round does not bias the ratio.
        order = (("ours", ours), ("theirs", theirs)) if r % 2 == 0 else (("theirs", theirs), ("ours", ours))
        seconds = {}
        for name, model in order:
            torch.manual_seed(r)
            seconds[name] = time_iterations(model, batches, device)
        t_ours, t_theirs = seconds["ours"], seconds["theirs"]
        ours_ips.append(images_per_round / t_ours)
        theirs_ips.append(images_per_round / t_theirs)
        ratios.append(t_theirs / t_ours)
        print(
            f"round {r}: hardmine {ours_ips[-1]:.2f} img/s, torchvision {theirs_ips[-1]:.2f} img/s, "
            f"ratio {ratios[-1]:.3f}"
        )
    print(
        f"device={device} backbone={cfg.model.backbone} batch={args.batch_size} "
        f"rois/img={cfg.roi_head.sampler.batch_size_per_image} rounds={rounds} iters/round={iters}"
    )
    print(
        f"hardmine median {statistics.median(ours_ips):.2f} img/s, "
        f"torchvision median {statistics.median(theirs_ips):.2f} img/s"
    )
    print(f"train_speed_ratio={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
