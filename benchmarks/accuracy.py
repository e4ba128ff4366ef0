"""Accuracy on the built-in dataset under a fixed training budget: AP, AP50, training and test time per row.

Each row is a preset plus overrides, trained with the same data, budget and seeds; results are
mean +- std over seeds. Later work adds rows (samplers, losses, tricks) to `ROWS`. A row whose
config differs from an earlier row of the same invocation only in test-time options (`eval.*`,
`roi_head.iterative.*`) evaluates that row's trained models instead of training them again; its
training time is theirs. Test time is the evaluation of the validation set, metrics included.

    python -m benchmarks.accuracy [--rows NAME ...] [--seeds 3] [--iters 600] [--quick] [--out DIR]

Prints a markdown table (ready for docs/BENCHMARKS.md) and writes DIR/accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

from hardmine.config import Config, load_config
from hardmine.data.sources import resolve_split
from hardmine.engine.bootstrap import train_rounds
from hardmine.engine.checkpoint import FINAL, load_checkpoint, load_model_state
from hardmine.engine.evaluation import evaluate_model
from hardmine.engine.inference import resolve_device
from hardmine.engine.mining import FILE_NAME as MINED_FILE
from hardmine.engine.proposals import load_split_proposals
from hardmine.engine.schedule import steps_for_budget
from hardmine.engine.training import train
from hardmine.models.build import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: Multi-scale testing of the test-time rows: shorter sides around the presets' 320.
TEST_SCALES = "eval.scales=[256,320,416]"

#: The training tricks' overrides (the paper's values where it gives them): mixup Beta(1.5, 1.5)
#: on every image, off for the last epoch (of 4 at 600 iterations); smoothing 0.1; sizes 256-384
#: around the test size 320 (the last entry), a new one every 10 iterations; flips and
#: photometric distortion without hue jitter.
TRICKS: dict[str, list[str]] = {
    "mixup": ["data.mixup_prob=1.0", "data.mixup_alpha=1.5", "data.mixup_off_last_epochs=1"],
    "label smoothing": ["roi_head.cls_loss.label_smoothing=0.1"],
    "random shapes": ["model.min_size=[256,288,352,384,320]", "model.size_period=10"],
    # flips and photometric distortion, no hue jitter: the built-in dataset's classes are colours
    # (docs/training-tricks.md#augmentation); no crop or zoom (the paper's two-stage recipe)
    "augmentation": ["data.augment=[hflip,color_jitter]", "data.color_jitter=[0.125,0.5,0.5,0]"],
    # the paper's schedule: cosine from the end of warmup to 0, instead of the presets' step decay
    "warmup + cosine": ["solver.schedule=cosine", "solver.steps=[]"],
}

#: Row name -> (preset, overrides). Every row trains on the same data with the same budget.
#: Overrides may name the budget: {iters}, {two_thirds} and {eight_ninths} of it (step schedules).
ROWS: dict[str, tuple[str, list[str]]] = {
    "faster_rcnn random (default)": ("faster_rcnn.yaml", []),
    "faster_rcnn random B=64": ("faster_rcnn.yaml", ["roi_head.sampler.batch_size_per_image=64"]),
    "faster_rcnn ohem": ("faster_rcnn_ohem.yaml", []),
    "faster_rcnn iou_balanced": ("faster_rcnn_iou_balanced.yaml", []),
    "retinanet focal": ("retinanet.yaml", []),
    "retinanet hard_negative": ("retinanet_hard_negative.yaml", []),
    "retinanet ohem": ("retinanet_ohem.yaml", []),
    "retinanet alpha-balanced CE": (
        "retinanet.yaml",
        ["dense_head.cls_loss=bce", "dense_head.cls_loss.alpha=0.25"],
    ),
    "retinanet GHM-C + GHM-R": ("retinanet_ghm.yaml", []),
    "retinanet sampling-free": ("retinanet_sampling_free.yaml", []),
    "faster_rcnn sampling-free": ("faster_rcnn_sampling_free.yaml", []),
    # Test-time options (docs/test-time-and-mining.md). These rows differ from an earlier row only at
    # test time, so they evaluate its trained models (run them together with it).
    "faster_rcnn random, test 3 scales": ("faster_rcnn.yaml", [TEST_SCALES]),
    "faster_rcnn random, test 3 scales + flip": (
        "faster_rcnn.yaml",
        [TEST_SCALES, "eval.hflip=true"],
    ),
    "faster_rcnn random, iterative bbox reg": ("faster_rcnn.yaml", ["roi_head.iterative.rounds=1"]),
    "faster_rcnn ohem, 3 scales + flip + iterative bbox reg (OHEM paper's test)": (
        "faster_rcnn_ohem.yaml",
        [TEST_SCALES, "eval.hflip=true", "roi_head.iterative.rounds=1"],
    ),
    "retinanet focal, test 3 scales + flip": ("retinanet.yaml", [TEST_SCALES, "eval.hflip=true"]),
    # Offline bootstrapping: one round = train, mine data.train's false positives (score >= 0.5,
    # IoU < 0.3), retrain from those weights for another full budget with them among the RoI
    # candidates. The restart controls retrain the same way with nothing mined (no detection
    # scores 1.0), so they separate the mined regions from the extra training. The random sampler's
    # background range starts at 0 here, as OHEM's does, or mined regions with IoU < 0.1 to every
    # object would never be sampled.
    "faster_rcnn random bg_lo=0": ("faster_rcnn.yaml", ["roi_head.bg_iou_lo=0.0"]),
    "faster_rcnn random bg_lo=0, restart (control)": (
        "faster_rcnn.yaml",
        ["roi_head.bg_iou_lo=0.0", "mining.rounds=1", "mining.score_thresh=1.0"],
    ),
    "faster_rcnn random bg_lo=0, bootstrap 1 round": (
        "faster_rcnn.yaml",
        ["roi_head.bg_iou_lo=0.0", "mining.rounds=1"],
    ),
    "faster_rcnn ohem, restart (control)": (
        "faster_rcnn_ohem.yaml",
        ["mining.rounds=1", "mining.score_thresh=1.0"],
    ),
    "faster_rcnn ohem, bootstrap 1 round": ("faster_rcnn_ohem.yaml", ["mining.rounds=1"]),
    # Training tricks (docs/training-tricks.md), each alone on top of the default recipe (warmup +
    # one step decay at 5/6 of the budget), then all together (with cosine, as the paper).
    "faster_rcnn + warmup + cosine": ("faster_rcnn.yaml", TRICKS["warmup + cosine"]),
    "faster_rcnn step decay, no warmup": ("faster_rcnn.yaml", ["solver.warmup_iters=0"]),
    "faster_rcnn + mixup": ("faster_rcnn.yaml", TRICKS["mixup"]),
    "faster_rcnn + label smoothing": ("faster_rcnn.yaml", TRICKS["label smoothing"]),
    "faster_rcnn + random shapes": ("faster_rcnn.yaml", TRICKS["random shapes"]),
    "faster_rcnn + augmentation": ("faster_rcnn.yaml", TRICKS["augmentation"]),
    # SSD's geometric augmentation (zoom, IoU crop) on top, without and with SSD's +-18 degrees of hue
    "faster_rcnn + SSD augmentation": (
        "faster_rcnn.yaml",
        ["data.augment=[hflip,color_jitter,scale_jitter,iou_crop]", "data.color_jitter=[0.125,0.5,0.5,0]"],
    ),
    "faster_rcnn + SSD augmentation with hue jitter": (
        "faster_rcnn.yaml",
        ["data.augment=[hflip,color_jitter,scale_jitter,iou_crop]"],
    ),
    "faster_rcnn + all tricks": ("faster_rcnn_freebies.yaml", []),  # = every TRICKS override
}

#: Config entries that change only inference; a row differing only there reuses trained models.
TEST_TIME_KEYS = (("eval",), ("roi_head", "iterative"), ("output_dir",))
#: (training config, seed) -> the run that trained it: checkpoint, training time, s/iter, row name.
_TRAINED: dict[str, dict] = {}


def training_key(cfg: Config) -> str:
    """The config without its test-time entries: runs with equal keys train the same model."""
    config = cfg.to_dict()
    for path in TEST_TIME_KEYS:
        node = config
        for part in path[:-1]:
            node = node[part]
        node.pop(path[-1])
    return json.dumps(config, sort_keys=True)


def evaluate_checkpoint(cfg: Config, checkpoint: Path) -> tuple[dict[str, float], float]:
    """Metrics of `checkpoint`'s weights in the model `cfg` describes, and the seconds it took."""
    device = resolve_device(cfg.train.device)
    index = resolve_split(cfg.data, "val")
    model = build_model(cfg, index.num_classes)
    load_model_state(model, load_checkpoint(checkpoint)["model"], str(checkpoint))
    model.to(device).eval()
    proposals = load_split_proposals(cfg, "val", index)
    start = time.perf_counter()
    metrics = evaluate_model(model, cfg, index, device, proposals=proposals)
    return metrics, time.perf_counter() - start


def row_overrides(name: str, iters: int) -> list[str]:
    """Row `name`'s overrides for a budget of `iters`, after its preset: the warmup (at most 50
    iterations), the preset's step schedule moved with the budget, then the row's own."""
    preset, overrides = ROWS[name]
    budget = {"iters": iters, "two_thirds": 2 * iters // 3, "eight_ninths": 8 * iters // 9}
    solver = load_config(CONFIGS / preset).solver
    steps = steps_for_budget(solver, iters) if solver.schedule == "step" else []
    return [
        f"solver.warmup_iters={min(50, iters // 10)}",
        *([f"solver.steps=[{','.join(map(str, steps))}]"] if steps else []),
        *(o.format(**budget) for o in overrides),
    ]


def run_row(name: str, seeds: list[int], iters: int, out: Path, extra: list[str]) -> dict:
    preset = ROWS[name][0]
    runs = []
    for seed in seeds:
        run_dir = out / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-seed{seed}"
        cfg = load_config(
            CONFIGS / preset,
            [
                *row_overrides(name, iters),
                *extra,
                f"train.seed={seed}",
                f"solver.max_iter={iters}",
                "train.progress=false",
                "train.eval_at_end=false",
                f"output_dir={run_dir}",
            ],
        )
        key = training_key(cfg)
        if key not in _TRAINED:
            start = time.perf_counter()
            result = (train_rounds if cfg.mining.rounds > 0 else train)(cfg)
            wall = time.perf_counter() - start
            out_dir = Path(result.output_dir)
            mined = out_dir / f"round{cfg.mining.rounds}" / MINED_FILE
            _TRAINED[key] = {
                "checkpoint": out_dir / FINAL,
                "train_s": wall,
                "s_per_iter": result.seconds_per_iter,
                "trained_by": name,
                "mined_regions": json.loads(mined.read_text())["num_regions"] if mined.is_file() else None,
            }
        trained = _TRAINED[key]
        metrics, eval_s = evaluate_checkpoint(cfg, trained["checkpoint"])
        runs.append(
            {
                "seed": seed,
                "wall_s": trained["train_s"],
                "eval_s": eval_s,
                "s_per_iter": trained["s_per_iter"],
                "trained_by": trained["trained_by"],
                "mined_regions": trained["mined_regions"],
                **metrics,
            }
        )
        shared = f", model of '{trained['trained_by']}'" if trained["trained_by"] != name else ""
        mined_note = (
            f", {trained['mined_regions']} mined regions" if trained["mined_regions"] is not None else ""
        )
        print(
            f"  {name} seed {seed}: AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f} "
            f"(train {trained['train_s']:.0f} s, test {eval_s:.1f} s{shared}{mined_note})",
            flush=True,
        )
    return {"name": name, "runs": runs}


def _mean_std(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help="rows to run (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=600, help="training iterations per run")
    parser.add_argument("--quick", action="store_true", help="1 seed, 30 iterations, small dataset")
    parser.add_argument("--out", default="runs/bench-accuracy")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every run")
    args = parser.parse_args()
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    seeds, iters, extra = list(range(args.seeds)), args.iters, list(args.overrides)
    if args.quick:
        seeds, iters = [0], 30
        extra += ["data.synth_dir=data/synth-quick", "data.synth_train=40", "data.synth_val=20"]
    out = Path(args.out)
    rows = [run_row(name, seeds, iters, out, extra) for name in args.rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps({"iters": iters, "seeds": seeds, "rows": rows}, indent=2))
    print(f"\n{iters} iterations, seeds {seeds}, batch 2, built-in dataset\n")
    print("| row | AP | AP50 | training time per run (s) | test time per run (s) | s/iter |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        runs = row["runs"]
        ap, ap50 = _mean_std([r["AP"] for r in runs]), _mean_std([r["AP50"] for r in runs])
        wall = statistics.mean(r["wall_s"] for r in runs)
        test = statistics.mean(r["eval_s"] for r in runs)
        per_iter = statistics.mean(r["s_per_iter"] for r in runs)
        print(f"| {row['name']} | {ap} | {ap50} | {wall:.0f} | {test:.1f} | {per_iter:.3f} |")


if __name__ == "__main__":
    main()
