"""Accuracy on the built-in dataset under a fixed training budget: AP, AP50 and wall time per row.

Each row is a preset plus overrides, trained with the same data, budget and seeds; results are
mean +- std over seeds. Later work adds rows (samplers, losses, tricks) to `ROWS`.

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

from hardmine.config import load_config
from hardmine.engine.trainer import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

#: Row name -> (preset, overrides). Every row trains on the same data with the same budget.
ROWS: dict[str, tuple[str, list[str]]] = {
    "faster_rcnn_tiny random (default)": ("faster_rcnn_tiny.yaml", []),
    "faster_rcnn_tiny random B=64": ("faster_rcnn_tiny.yaml", ["roi_head.batch_size_per_image=64"]),
    "faster_rcnn_tiny ohem": ("faster_rcnn_ohem.yaml", []),
    "faster_rcnn_tiny iou_balanced": ("faster_rcnn_iou_balanced.yaml", []),
    "retinanet_tiny focal": ("retinanet_tiny.yaml", []),
    "retinanet_tiny hard_negative": ("retinanet_hard_negative.yaml", []),
    "retinanet_tiny ohem": ("retinanet_ohem.yaml", []),
}


def run_row(name: str, seeds: list[int], iters: int, out: Path, extra: list[str]) -> dict:
    preset, overrides = ROWS[name]
    runs = []
    for seed in seeds:
        run_dir = out / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-seed{seed}"
        cfg = load_config(
            CONFIGS / preset,
            [
                *overrides,
                *extra,
                f"train.seed={seed}",
                f"solver.max_iter={iters}",
                f"solver.warmup_iters={min(50, iters // 10)}",
                "train.progress=false",
                f"output_dir={run_dir}",
            ],
        )
        start = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - start
        assert result.metrics is not None
        runs.append({"seed": seed, "wall_s": wall, "s_per_iter": result.seconds_per_iter, **result.metrics})
        print(
            f"  {name} seed {seed}: AP {result.metrics['AP']:.3f} AP50 {result.metrics['AP50']:.3f} "
            f"({wall:.0f} s)",
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
    print("| row | AP | AP50 | wall time per run (s) | s/iter |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        runs = row["runs"]
        ap, ap50 = _mean_std([r["AP"] for r in runs]), _mean_std([r["AP50"] for r in runs])
        wall = statistics.mean(r["wall_s"] for r in runs)
        per_iter = statistics.mean(r["s_per_iter"] for r in runs)
        print(f"| {row['name']} | {ap} | {ap50} | {wall:.0f} | {per_iter:.3f} |")


if __name__ == "__main__":
    main()
