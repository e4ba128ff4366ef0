"""Mixed precision and memory format: training-step time of one preset in float32, with channels-last
weights, under bfloat16 autocast, and both, against plain float32.

The variants are copies of one model (the same weights) trained on the same batches, in rotating
order within one process (round r starts with another variant); each ratio is taken round by
round against float32 and the median is reported. This decides `solver.channels_last` (on by
default) and tells whether `solver.amp=bf16` pays on a machine (docs/BENCHMARKS.md).

    python -m benchmarks.precision [--quick] [--device cpu|cuda] [--rounds N] [--iters N]
                                   [--config configs/faster_rcnn.yaml] [KEY=VALUE ...]

Last printed line: `channels_last_speedup=A bf16_speedup=B bf16_channels_last_speedup=C` (float32
time over each variant's; above 1 is faster).
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from benchmarks.common import make_batches, train_steps
from hardmine.config import load_config
from hardmine.data.sources import resolve_split
from hardmine.engine.inference import resolve_device
from hardmine.engine.schedule import build_optimizer
from hardmine.models.build import build_model

#: variant -> (channels-last weights, bfloat16 autocast)
VARIANTS: dict[str, tuple[bool, bool]] = {
    "float32": (False, False),
    "channels_last": (True, False),
    "bf16": (False, True),
    "bf16_channels_last": (True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 iterations")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=8, help="timing rounds (each runs every variant)")
    parser.add_argument("--iters", type=int, default=4, help="training iterations per variant and round")
    parser.add_argument("--batch-size", type=int, default=2, help="images per batch")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--config", default="configs/faster_rcnn.yaml", help="the preset to time")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.iters = 3, 2
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(0)
    base = build_model(cfg, resolve_split(cfg.data, "train").num_classes).to(device)
    models = {}
    for name, (channels_last, _) in VARIANTS.items():
        model = copy.deepcopy(base)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[name] = (model, build_optimizer(model, cfg.solver))
    batches = make_batches(cfg, args.iters, args.batch_size, device)
    for name, (model, optimizer) in models.items():  # warm-up
        train_steps(model, optimizer, batches[:1], device, VARIANTS[name][1])
    names = list(VARIANTS)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(train_steps(*models[name], batches, device, VARIANTS[name][1]))
        print(f"round {r}: " + ", ".join(f"{n} {seconds[n][-1] / len(batches):.3f} s/iter" for n in names))
    print(
        f"device={device} threads={args.threads} config={args.config} backbone={cfg.model.backbone} "
        f"size={cfg.model.min_size}/{cfg.model.max_size} batch={args.batch_size} "
        f"rounds={args.rounds} iters/round={args.iters}"
    )
    speedups = {
        name: statistics.median(f / s for f, s in zip(seconds["float32"], seconds[name]))
        for name in names[1:]
    }
    for name in names:
        print(f"{name}: median {statistics.median(seconds[name]) / len(batches):.3f} s/iter")
    print(" ".join(f"{name}_speedup={value:.3f}" for name, value in speedups.items()))


if __name__ == "__main__":
    main()
