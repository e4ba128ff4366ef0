"""Speed of hardmine's CPU RoIAlign against torchvision's, on the shapes of hardmine's presets.

Both sides pool through `MultiScaleRoIAlign` (torchvision's, and hardmine's drop-in subclass) with
the tiny preset's pyramid: a batch of 2 images at 320 px, FPN levels at strides 8 / 16 / 32
(40x40, 20x20, 10x10 maps), 64 channels (and 256 with --channels), output 7x7, sampling ratio 2.
The RoIs are proposal-like: random boxes split over the 2 images, centres uniform in the image,
sizes log-uniform in [8, 320] px, aspect ratios log-uniform in [1/2, 2], clipped to the image;
torchvision's level mapping puts most of them on the 40x40 level. RoI counts:

* 2000: OHEM's read-only pass (1000 proposals per image + ground truth), forward only in practice;
  also timed as hardmine's RoI head runs it, 256 RoIs of one image per call (`score_chunk_size`);
* 1024: random sampling at B = 512 per image; 128: OHEM's trainable pass (B = 64 per image).

Per case three timings: forward (no autograd), backward (the forward's graph built outside the
timer), forward + backward. Each round times torchvision then hardmine, the next round hardmine
then torchvision, so load from other processes hits both alike; each timing is the median of
`--repeats` calls, the reported time the median over rounds, and the ratio (torchvision's time /
hardmine's, > 1: hardmine faster) the median of the per-round ratios.

With --steps, whole training steps instead: the presets `faster_rcnn_tiny.yaml` (random sampling,
B = 512) and `faster_rcnn_ohem.yaml`, each built twice from the same seed, once as configured
(hardmine's `MultiScaleRoIAlign`) and once with torchvision's swapped into the RoI head; the
four models train on the same batches of the built-in dataset in an order that rotates every round.

    python -m benchmarks.roi_align [--quick] [--threads 1 2] [--channels 64 256] [--rounds N]
    python -m benchmarks.roi_align --steps [--threads 1 2] [--rounds N] [--iters N]

Last printed line: `roi_align_speedup_fwd=X roi_align_speedup_fwd_bwd=Y` (medians over all cases),
or with --steps `step_speedup_random=X step_speedup_ohem=Y ohem_time_ratio_torchvision=A
ohem_time_ratio_hardmine=B` (OHEM's time per step over random sampling's, per pooler).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign as TorchvisionMultiScaleRoIAlign

from benchmarks.accuracy import CONFIGS
from benchmarks.common import make_batches, train_steps
from hardmine.config import load_config
from hardmine.data.sources import resolve_split
from hardmine.engine.schedule import build_optimizer
from hardmine.models.build import build_model
from hardmine.ops import MultiScaleRoIAlign

IMAGE_SIZE = 320
STRIDES = (8, 16, 32)
BATCH = 2
#: (name, RoIs per batch, RoIs per call or None for all at once, timings)
CASES = (
    ("OHEM read-only pass", 2000, None, ("forward", "backward", "forward+backward")),
    ("OHEM read-only pass, 256-RoI chunks", 2000, 256, ("forward",)),
    ("random sampling B=512", 1024, None, ("forward", "backward", "forward+backward")),
    ("OHEM trainable pass B=64", 128, None, ("forward", "backward", "forward+backward")),
)


def make_features(channels: int, generator: torch.Generator) -> OrderedDict[str, Tensor]:
    return OrderedDict(
        (str(level), torch.randn(BATCH, channels, IMAGE_SIZE // s, IMAGE_SIZE // s, generator=generator))
        for level, s in enumerate(STRIDES)
    )


def make_boxes(num_rois: int, generator: torch.Generator) -> list[Tensor]:
    """Proposal-like boxes (see the module docstring), split evenly over the batch."""
    boxes = []
    for image in range(BATCH):
        n = num_rois // BATCH + (image < num_rois % BATCH)
        centre = torch.rand(n, 2, generator=generator) * IMAGE_SIZE
        size = 8.0 * torch.exp(torch.rand(n, generator=generator) * torch.log(torch.tensor(IMAGE_SIZE / 8.0)))
        aspect = torch.exp((torch.rand(n, generator=generator) * 2 - 1) * torch.log(torch.tensor(2.0)))
        half = torch.stack([size * aspect.sqrt(), size / aspect.sqrt()], dim=1) / 2
        boxes.append(torch.cat([centre - half, centre + half], dim=1).clamp(0, IMAGE_SIZE))
    return boxes


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def case_timings(
    pooler: torch.nn.Module,
    features: OrderedDict[str, Tensor],
    boxes: list[Tensor],
    chunk: int | None,
    kinds: tuple[str, ...],
    repeats: int,
) -> dict[str, float]:
    shapes = [(IMAGE_SIZE, IMAGE_SIZE)] * BATCH
    leaves = OrderedDict((k, v.detach().requires_grad_()) for k, v in features.items())
    grad = torch.ones(sum(len(b) for b in boxes), next(iter(features.values())).shape[1], 7, 7)

    def forward() -> None:
        with torch.no_grad():
            if chunk is None:
                pooler(features, boxes, shapes)
                return
            for i, image_boxes in enumerate(boxes):  # as RoIHead.predict_in_chunks
                for part in image_boxes.split(chunk):
                    pooler(features, [part if j == i else part[:0] for j in range(BATCH)], shapes)

    def forward_backward() -> None:
        pooler(leaves, boxes, shapes).backward(grad)

    def backward_only() -> float:
        out = pooler(leaves, boxes, shapes)
        start = time.perf_counter()
        out.backward(grad)
        return time.perf_counter() - start

    result = {}
    if "forward" in kinds:
        result["forward"] = timed(forward, repeats)
    if "backward" in kinds:
        result["backward"] = statistics.median(backward_only() for _ in range(repeats))
    if "forward+backward" in kinds:
        result["forward+backward"] = timed(forward_backward, repeats)
    return result


def run(threads: int, channels: int, rounds: int, repeats: int) -> list[tuple[str, str, float, float, float]]:
    """Rows (case, timing, torchvision ms, hardmine ms, median per-round ratio) at these settings."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    features = make_features(channels, generator)
    poolers = {
        "torchvision": TorchvisionMultiScaleRoIAlign(list(features), 7, 2),
        "hardmine": MultiScaleRoIAlign(list(features), 7, 2),
    }
    rows = []
    for name, num_rois, chunk, kinds in CASES:
        boxes = make_boxes(num_rois, generator)
        for pooler in poolers.values():  # warm-up, and the level mapping's lazy set-up
            case_timings(pooler, features, boxes, chunk, kinds, 1)
        per_round: dict[str, list[dict[str, float]]] = {p: [] for p in poolers}
        for r in range(rounds):
            order = list(poolers) if r % 2 == 0 else list(reversed(poolers))
            for p in order:
                per_round[p].append(case_timings(poolers[p], features, boxes, chunk, kinds, repeats))
        for kind in kinds:
            tv = [t[kind] for t in per_round["torchvision"]]
            hm = [t[kind] for t in per_round["hardmine"]]
            ratio = statistics.median(a / b for a, b in zip(tv, hm))
            rows.append(
                (
                    f"{name} ({num_rois} RoIs)",
                    kind,
                    1000 * statistics.median(tv),
                    1000 * statistics.median(hm),
                    ratio,
                )
            )
            spread = [a / b for a, b in zip(tv, hm)]
            print(
                f"threads={threads} channels={channels} {rows[-1][0]} {kind}: torchvision "
                f"{rows[-1][2]:.1f} ms, hardmine {rows[-1][3]:.1f} ms, speedup {ratio:.2f} "
                f"(per round {min(spread):.2f}-{max(spread):.2f})",
                flush=True,
            )
    return rows


#: training-step presets: name -> config file
PRESETS = {"random": "faster_rcnn_tiny.yaml", "ohem": "faster_rcnn_ohem.yaml"}


def torchvision_pooler(pooler: TorchvisionMultiScaleRoIAlign) -> TorchvisionMultiScaleRoIAlign:
    """torchvision's own `MultiScaleRoIAlign` with the settings of `pooler` (e.g. hardmine's)."""
    return TorchvisionMultiScaleRoIAlign(
        pooler.featmap_names,
        pooler.output_size,
        pooler.sampling_ratio,
        canonical_scale=pooler.canonical_scale,
        canonical_level=pooler.canonical_level,
    )


def step_models(threads: int) -> dict[tuple[str, str], tuple[torch.nn.Module, torch.optim.Optimizer]]:
    """(preset, pooler) -> model and optimizer; both poolers of a preset start from the same weights."""
    torch.set_num_threads(threads)
    models = {}
    for preset, file in PRESETS.items():
        cfg = load_config(CONFIGS / file)
        num_classes = resolve_split(cfg.data, "train").num_classes
        for pooler in ("torchvision", "hardmine"):
            torch.manual_seed(0)
            model = build_model(cfg, num_classes).train()
            if pooler == "torchvision":
                head = model.heads["roi"]
                head.box_roi_pool = torchvision_pooler(head.box_roi_pool)
            models[preset, pooler] = (model, build_optimizer(model, cfg.solver))
    return models


def run_steps(threads: int, rounds: int, iters: int) -> dict[str, float]:
    """Seconds per training step of the four models (see the module docstring) and the ratios."""
    models = step_models(threads)
    batches = make_batches(load_config(CONFIGS / PRESETS["random"]), iters, BATCH, torch.device("cpu"))
    for model, optimizer in models.values():  # warm-up
        train_steps(model, optimizer, batches[:1], torch.device("cpu"))
    names = list(models)
    seconds: dict[tuple[str, str], list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(train_steps(*models[name], batches, torch.device("cpu")) / iters)
        print(
            f"threads={threads} round {r}: "
            + ", ".join(f"{p}/{q} {seconds[p, q][-1]:.3f} s/iter" for p, q in names),
            flush=True,
        )

    def median_ratio(a: tuple[str, str], b: tuple[str, str]) -> float:
        return statistics.median(x / y for x, y in zip(seconds[a], seconds[b]))

    result = {f"{p}/{q}": statistics.median(seconds[p, q]) for p, q in names}
    for preset in PRESETS:
        result[f"step_speedup_{preset}"] = median_ratio((preset, "torchvision"), (preset, "hardmine"))
    for pooler in ("torchvision", "hardmine"):
        result[f"ohem_time_ratio_{pooler}"] = median_ratio(("ohem", pooler), ("random", pooler))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 calls, 64 channels, 1 thread")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU threads")
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 256], help="FPN channels")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per case")
    parser.add_argument("--repeats", type=int, default=3, help="calls per timing (median)")
    parser.add_argument("--steps", action="store_true", help="time training steps of the presets instead")
    parser.add_argument(
        "--iters", type=int, default=4, help="with --steps: training steps per model and round"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.repeats, args.threads, args.channels = 3, 3, [1], [64]
    if args.steps:
        results = {threads: run_steps(threads, args.rounds, args.iters) for threads in args.threads}
        print(f"\nrounds={args.rounds} iters={args.iters} batch={BATCH} presets={PRESETS}")
        print(
            "| threads | preset | torchvision s/iter | hardmine s/iter | step speedup | OHEM / random time |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for threads, r in results.items():
            for preset in PRESETS:
                theirs, ours, speedup = (
                    r[preset + "/torchvision"],
                    r[preset + "/hardmine"],
                    r["step_speedup_" + preset],
                )
                print(f"| {threads} | {preset} | {theirs:.3f} | {ours:.3f} | {speedup:.2f} | |")
            print(
                f"| {threads} | OHEM / random | | | | torchvision {r['ohem_time_ratio_torchvision']:.2f}, "
                f"hardmine {r['ohem_time_ratio_hardmine']:.2f} |"
            )
        last = results[args.threads[-1]]
        print(" ".join(f"{key}={last[key]:.2f}" for key in last if "/" not in key))
        return

    table = []
    for threads in args.threads:
        for channels in args.channels:
            table += [(threads, channels, *row) for row in run(threads, channels, args.rounds, args.repeats)]
    print(f"\nrounds={args.rounds} repeats={args.repeats} batch={BATCH} size={IMAGE_SIZE} strides={STRIDES}")
    print("| threads | channels | case | timing | torchvision ms | hardmine ms | speedup |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for threads, channels, case, kind, tv, hm, ratio in table:
        print(f"| {threads} | {channels} | {case} | {kind} | {tv:.1f} | {hm:.1f} | {ratio:.2f} |")
    forward = [r[-1] for r in table if r[3] == "forward"]
    both = [r[-1] for r in table if r[3] == "forward+backward"]
    print(
        f"roi_align_speedup_fwd={statistics.median(forward):.2f} "
        f"roi_align_speedup_fwd_bwd={statistics.median(both):.2f}"
    )


if __name__ == "__main__":
    main()
