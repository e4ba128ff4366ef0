"""What OHEM costs: time per iteration and peak memory of OHEM in the RoI head against biased random
sampling at the same B, and the two-pass form's speed-up over the naive loss_mask form.

Three Faster R-CNN models with the same weights (same seed), backbone, RPN and data; only the RoI
head's sampler differs:

* ``random``: biased random sampling of B RoIs per image (25 % foreground, bg IoU in [0, 0.5));
* ``ohem``: the paper's OHEM, two passes (read-only pass over all RoIs, then B per image trained);
* ``ohem_loss_mask``: the same selection, one pass with autograd over all RoIs, others zeroed.

Time: the three models train on the same batches in rotating order within one process (round r
starts with a different model), and each ratio is taken round by round; the median is reported.
Memory: each model trains in a fresh child process. On CUDA it is the peak of
`torch.cuda.max_memory_allocated` during the timed iterations minus the memory allocated before
them. On the CPU it is the process's peak resident memory (VmHWM) minus its resident memory just
before the first iteration, with glibc told to serve every allocation of 64 KiB or more by mmap
(MALLOC_MMAP_THRESHOLD_) so that freed tensors leave the resident set at once and the peak
follows the live tensors rather than the heap's history.

With ``--score-pass bf16|coarse|bf16_coarse`` a fourth model, ``ohem_cheap``, runs OHEM with that
cheaper read-only pass (``roi_head.sampler.score_pass``) in the same rotation, and after the timing
the exact OHEM model scores each batch both ways: the selection agreement is the share of the
exactly selected RoIs that the cheaper pass selects too (pooled over the batches). Agreement
means most on a trained model: ``--weights CHECKPOINT`` (a Faster R-CNN run's
``checkpoint_last.pt`` with the same overrides) starts every model from those weights.

    python -m benchmarks.ohem_cost [--quick] [--device cpu|cuda] [--rounds N] [--iters N]
                                   [--batch-size 2] [--pooler torchvision|hardmine]
                                   [--score-pass PASS] [--weights CHECKPOINT] [KEY=VALUE ...]

KEY=VALUE overrides apply to all three models (for example ``model.backbone=resnet18_fpn
model.min_size=[512] model.max_size=512``). Last printed line:
``ohem_time_ratio=T ohem_mem_ratio=M twopass_speedup=S`` (OHEM time and memory over random
sampling's; loss_mask time over two-pass time), then, with ``--score-pass``,
``cheap_time_ratio=T selection_agreement=A``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
from typing import Any

import torch
from torch import nn

from benchmarks.common import make_batches, train_steps
from benchmarks.roi_align import torchvision_pooler
from hardmine.config import Config, load_config
from hardmine.data.sources import resolve_split
from hardmine.engine.checkpoint import load_checkpoint, load_model_state
from hardmine.engine.inference import resolve_device
from hardmine.engine.schedule import build_optimizer
from hardmine.models.build import build_model

VARIANTS: dict[str, list[str]] = {
    "random": ["roi_head.sampler=random", "roi_head.sampler.fg_fraction=0.25", "roi_head.bg_iou_lo=0.0"],
    "ohem": ["roi_head.sampler=ohem", "roi_head.sampler.mode=two_pass"],
    "ohem_loss_mask": ["roi_head.sampler=ohem", "roi_head.sampler.mode=loss_mask"],
}
#: glibc serves allocations at or above this size by mmap and unmaps them on free (CPU memory).
MMAP_THRESHOLD = 64 * 1024


def variant_config(
    name: str, batch_per_image: int, overrides: list[str], score_pass: str = "exact"
) -> Config:
    """The config of one variant: the OHEM preset's RPN budget, the same B for every sampler;
    `ohem_cheap` is OHEM with the `score_pass` read-only pass."""
    own = (
        VARIANTS["ohem"] + [f"roi_head.sampler.score_pass={score_pass}"]
        if name == "ohem_cheap"
        else VARIANTS[name]
    )
    return load_config(
        None,
        [
            "rpn.pre_nms_top_n_train=1000",
            "rpn.post_nms_top_n_train=1000",
            *own,
            f"roi_head.sampler.batch_size_per_image={batch_per_image}",
            *overrides,
        ],
    )


def build(
    name: str, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer]:
    cfg = variant_config(name, args.batch_per_image, args.overrides, args.score_pass)
    num_classes = resolve_split(cfg.data, "train").num_classes
    torch.manual_seed(0)  # the same initial weights for every variant
    model = build_model(cfg, num_classes)
    if args.weights:
        load_model_state(model, load_checkpoint(args.weights)["model"], args.weights)
    model = model.to(device).train()
    if args.pooler == "torchvision":  # the models pool with hardmine.ops (docs/BENCHMARKS.md)
        head = model.heads["roi"]
        head.box_roi_pool = torchvision_pooler(head.box_roi_pool)
    return model, build_optimizer(model, cfg.solver)


@torch.no_grad()
def selection_agreement(model: nn.Module, batches: list, score_pass: str) -> float:
    """The share of the RoIs OHEM selects with the exact read-only pass that it also selects with
    `score_pass`, over `batches` (the same model, proposals and labels; BatchNorm statistics kept)."""
    sampler = model.heads["roi"].sampler
    select = sampler.select
    chosen: list[list[set[int]]] = []

    def recording(labels: list, candidates: Any, score_fn: Any) -> list:
        results = select(labels, candidates, score_fn)
        chosen.append([set(r.indices.tolist()) for r in results])
        return results

    buffers = {name: b.clone() for name, b in model.named_buffers()}
    sampler.select = recording
    shared = total = 0
    try:
        for images, targets in batches:
            for scoring in ("exact", score_pass):
                sampler.score_pass = scoring
                model(images, targets)
            exact, cheap = chosen[-2], chosen[-1]
            shared += sum(len(a & b) for a, b in zip(exact, cheap))
            total += sum(len(a) for a in exact)
    finally:
        del sampler.select
        sampler.score_pass = "exact"
        model.load_state_dict({**model.state_dict(), **buffers})
    return shared / max(total, 1)


def _resident_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now, VmHWM: peak resident)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(name: str, args: argparse.Namespace, queue: Any) -> None:
    """Child process: peak memory (MiB) of training `name` on `args.iters` batches, put on `queue`."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, optimizer = build(name, args, device)
    batches = make_batches(
        variant_config(name, args.batch_per_image, args.overrides), args.iters, args.batch_size, device
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_steps(model, optimizer, batches, device)
        queue.put((name, (torch.cuda.max_memory_allocated(device) - before) / 2**20))
    else:
        before = _resident_kib("VmRSS")
        train_steps(model, optimizer, batches, device)
        queue.put((name, (_resident_kib("VmHWM") - before) / 1024))


def peak_memory(args: argparse.Namespace, names: list[str]) -> dict[str, float]:
    """Each variant's peak training memory in MiB, measured in a fresh process of its own."""
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)  # inherited by the spawned children
    context = mp.get_context("spawn")
    queue = context.Queue()
    memory = {}
    for name in names:
        child = context.Process(target=measure_memory, args=(name, args, queue))
        child.start()
        child_name, mib = queue.get()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"memory measurement of {name!r} failed (exit code {child.exitcode})")
        memory[child_name] = mib
    return memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 rounds of 3 iterations (under a minute on 2 CPU cores)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=9, help="timing rounds (each runs every variant)")
    parser.add_argument("--iters", type=int, default=6, help="training iterations per variant and round")
    parser.add_argument("--batch-size", type=int, default=2, help="images per batch")
    parser.add_argument(
        "--batch-per-image", type=int, default=64, help="B, RoIs trained per image (paper: 64)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument(
        "--pooler",
        choices=["torchvision", "hardmine"],
        default="hardmine",
        help="the RoI head's MultiScaleRoIAlign: hardmine.ops' (as the models build it) or torchvision's",
    )
    parser.add_argument(
        "--score-pass",
        choices=["bf16", "coarse", "bf16_coarse"],
        default=None,
        help="also time OHEM with this cheaper read-only pass and measure its selection agreement",
    )
    parser.add_argument("--weights", default=None, help="start every model from this checkpoint's weights")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for all variants")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.iters = 3, 3
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    names = [*VARIANTS, *(["ohem_cheap"] if args.score_pass else [])]
    memory = peak_memory(args, names)
    models = {name: build(name, args, device) for name in names}
    batches = make_batches(
        variant_config("random", args.batch_per_image, args.overrides), args.iters, args.batch_size, device
    )
    for model, optimizer in models.values():  # warm-up
        train_steps(model, optimizer, batches[:1], device)
    per_iter: dict[str, list[float]] = {name: [] for name in names}
    time_ratios, speedups = [], []
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        seconds = {name: train_steps(*models[name], batches, device) for name in order}
        for name in names:
            per_iter[name].append(seconds[name] / len(batches))
        time_ratios.append(seconds["ohem"] / seconds["random"])
        speedups.append(seconds["ohem_loss_mask"] / seconds["ohem"])
        print(
            f"round {r}: "
            + ", ".join(f"{name} {seconds[name] / len(batches):.3f} s/iter" for name in names)
            + f"; ohem/random {time_ratios[-1]:.3f}, loss_mask/two_pass {speedups[-1]:.2f}",
            flush=True,
        )
    cfg = variant_config("random", args.batch_per_image, args.overrides)
    print(
        f"device={device} threads={args.threads} pooler={args.pooler} backbone={cfg.model.backbone} "
        f"size={cfg.model.min_size}/{cfg.model.max_size} batch={args.batch_size} "
        f"B/img={args.batch_per_image} "
        f"proposals/img={cfg.rpn.post_nms_top_n_train} rounds={args.rounds} iters/round={args.iters}"
    )
    for name in names:
        print(
            f"{name}: median {statistics.median(per_iter[name]):.3f} s/iter, "
            f"peak memory {memory[name]:.1f} MiB"
        )
    time_ratio = statistics.median(time_ratios)
    mem_ratio = memory["ohem"] / memory["random"]
    speedup = statistics.median(speedups)
    print(f"ohem_time_ratio={time_ratio:.3f} ohem_mem_ratio={mem_ratio:.3f} twopass_speedup={speedup:.2f}")
    if args.score_pass:
        cheap = statistics.median(a / b for a, b in zip(per_iter["ohem_cheap"], per_iter["random"]))
        agreement = selection_agreement(models["ohem"][0], batches, args.score_pass)
        print(
            f"score_pass={args.score_pass} cheap_time_ratio={cheap:.3f} selection_agreement={agreement:.3f}"
        )


if __name__ == "__main__":
    main()
