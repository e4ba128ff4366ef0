"""Speed and memory of hardmine's sigmoid focal loss and GHM-C against the usual implementations.

Inputs are RetinaNet-sized: 2 images x 100k anchors x 80 classes, float32 logits requiring grad,
one-hot targets (1 % of the anchors foreground). One measurement is forward + backward.

- Focal: `hardmine.losses.sigmoid_focal_loss` vs `torchvision.ops.sigmoid_focal_loss`, both with
  reduction "none" followed by `.sum()` (how the dense head uses it). Timed in alternating rounds
  (A B, then B A) in one process so machine drift hits both alike; the ratio is taken round by
  round and the median reported.
- Peak memory of the focal variants, i.e. the extra memory one forward + backward allocates with
  the inputs already in place. CPU: each variant runs in a fresh child process (multiprocessing
  spawn) that builds the inputs, warms up on a small batch, resets the kernel's peak-RSS counter
  (`/proc/self/clear_refs` = 5), reads VmRSS, runs forward + backward and reports VmHWM minus that
  VmRSS. CUDA: `torch.cuda.max_memory_allocated()` minus the allocated bytes before the call.
- GHM-C: the vectorised `hardmine.losses.GHMC` vs a straightforward loop over the bins (a host
  sync per bin), both bins=30, momentum=0.75, same alternating rounds (with --quick on the anchors
  of one image only, to stay under a minute).

    python -m benchmarks.loss_speed [--quick] [--device cpu|cuda] [--rounds N] [--anchors N]

Last printed line: `focal_speedup=X focal_mem_ratio=Y ghm_speedup=Z` (speedup = the other
implementation's time / hardmine's; mem ratio = hardmine's peak / torchvision's; CPU targets:
focal_speedup >= 1.5 and focal_mem_ratio <= 0.6).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import re
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss as torchvision_focal

from hardmine.engine.inference import resolve_device
from hardmine.losses import GHMC, sigmoid_focal_loss

NUM_CLASSES = 80
FOCAL = {"hardmine": sigmoid_focal_loss, "torchvision": torchvision_focal}


def make_inputs(num_anchors: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Logits [num_anchors, 80] requiring grad and one-hot targets (1 % foreground anchors)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_anchors, NUM_CLASSES, generator=g).to(device).requires_grad_()
    fg = torch.nonzero(torch.rand(num_anchors, generator=g) < 0.01).flatten()
    targets = torch.zeros(num_anchors, NUM_CLASSES)
    targets[fg, torch.randint(0, NUM_CLASSES, (fg.numel(),), generator=g)] = 1.0
    return logits, targets.to(device)


def ghmc_loop(
    pred: Tensor, target: Tensor, acc_sum: Tensor, bins: int = 30, momentum: float = 0.75
) -> Tensor:
    """GHM-C written the straightforward way: one masked pass and one host sync per bin."""
    edges = torch.arange(bins + 1, dtype=torch.float32, device=pred.device) / bins
    edges[-1] += 1e-6
    g = (pred.detach().sigmoid() - target).abs()
    tot = float(pred.numel())
    weights = torch.zeros_like(pred)
    non_empty = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1])
        num = inds.sum().item()
        if num > 0:
            acc_sum[i] = momentum * acc_sum[i] + (1 - momentum) * num
            weights[inds] = tot / acc_sum[i]
            non_empty += 1
    weights /= max(non_empty, 1)
    return F.binary_cross_entropy_with_logits(pred, target, weights, reduction="sum") / tot


def forward_backward(loss_fn: Callable[[], Tensor], logits: Tensor) -> tuple[float, float]:
    """Seconds for one forward + backward, and the loss; clears the gradient afterwards."""
    if logits.device.type == "cuda":
        torch.cuda.synchronize(logits.device)
    start = time.perf_counter()
    loss = loss_fn()
    loss.backward()
    if logits.device.type == "cuda":
        torch.cuda.synchronize(logits.device)
    seconds = time.perf_counter() - start
    logits.grad = None
    return seconds, loss.item()


def alternating_rounds(
    ours: Callable[[], Tensor], theirs: Callable[[], Tensor], logits: Tensor, rounds: int
) -> tuple[list[float], list[float], float]:
    """Per-round seconds of both variants (A B in even rounds, B A in odd ones) and the largest
    relative difference of their losses in a round."""
    ours_s, theirs_s, rel_diff = [], [], 0.0
    for r in range(rounds):
        order = (ours, theirs) if r % 2 == 0 else (theirs, ours)
        results = {fn: forward_backward(fn, logits) for fn in order}
        ours_s.append(results[ours][0])
        theirs_s.append(results[theirs][0])
        rel_diff = max(rel_diff, abs(results[ours][1] - results[theirs][1]) / abs(results[theirs][1]))
    return ours_s, theirs_s, rel_diff


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def _cpu_peak_child(variant: str, num_anchors: int, result: mp.Queue) -> None:
    """Runs in a fresh process: extra peak RSS (bytes) of one focal forward + backward."""
    loss_fn = FOCAL[variant]
    small = make_inputs(1000, torch.device("cpu"))
    loss_fn(*small).sum().backward()  # warm-up: lazy initialisation is not the loss's memory
    logits, targets = make_inputs(num_anchors, torch.device("cpu"))
    del small
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _status_bytes("VmRSS")
    loss_fn(logits, targets).sum().backward()
    result.put(_status_bytes("VmHWM") - before)


def focal_peak_bytes(num_anchors: int, device: torch.device) -> dict[str, int]:
    """Extra memory one forward + backward of each focal variant allocates (see the module docstring)."""
    if device.type == "cuda":
        logits, targets = make_inputs(num_anchors, device)
        peaks = {}
        for name, loss_fn in FOCAL.items():
            loss_fn(logits, targets).sum().backward()  # warm-up
            logits.grad = None
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            loss_fn(logits, targets).sum().backward()
            torch.cuda.synchronize(device)
            peaks[name] = torch.cuda.max_memory_allocated(device) - before
            logits.grad = None
        return peaks
    # One child per variant, run side by side: each measures only its own process.
    ctx = mp.get_context("spawn")
    queues = {name: ctx.Queue() for name in FOCAL}
    children = [
        ctx.Process(target=_cpu_peak_child, args=(name, num_anchors, queue)) for name, queue in queues.items()
    ]
    for child in children:
        child.start()
    peaks = {name: queue.get() for name, queue in queues.items()}
    for child in children:
        child.join()
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds (under a minute on 2 CPU cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=9, help="alternating focal timing rounds")
    parser.add_argument("--ghm-rounds", type=int, default=3, help="alternating GHM-C timing rounds")
    parser.add_argument("--anchors", type=int, default=2 * 100_000, help="anchors of all images together")
    args = parser.parse_args()
    rounds, ghm_rounds = (3, 1) if args.quick else (args.rounds, args.ghm_rounds)
    device = resolve_device(args.device)

    logits, targets = make_inputs(args.anchors, device)
    ours = sigmoid_focal_loss(logits, targets).detach()
    theirs = torchvision_focal(logits, targets).detach()
    print(f"focal max |hardmine - torchvision| = {(ours - theirs).abs().max().item():.2e} (also warms up)")
    del ours, theirs

    def hardmine_focal() -> Tensor:
        return sigmoid_focal_loss(logits, targets, reduction="none").sum()

    def torchvision_focal_sum() -> Tensor:
        return torchvision_focal(logits, targets, reduction="none").sum()

    ours_s, theirs_s, focal_diff = alternating_rounds(hardmine_focal, torchvision_focal_sum, logits, rounds)
    print(f"focal largest relative difference of the summed losses: {focal_diff:.2e}")
    for r, (a, b) in enumerate(zip(ours_s, theirs_s)):
        print(f"focal round {r}: hardmine {a:.3f} s, torchvision {b:.3f} s, ratio {b / a:.2f}")
    focal_speedup = statistics.median(b / a for a, b in zip(ours_s, theirs_s))

    peaks = focal_peak_bytes(args.anchors, device)
    for name, peak in peaks.items():
        print(f"focal peak extra memory, {name}: {peak / 2**20:.1f} MiB")
    mem_ratio = peaks["hardmine"] / peaks["torchvision"]

    ghm = GHMC(bins=30, momentum=0.75).to(device)
    acc_sum = torch.zeros(30, device=device)  # the loop's EMA, updated in step with the module's
    ghm_anchors = args.anchors // 2 if args.quick else args.anchors
    ghm_logits, ghm_targets = make_inputs(ghm_anchors, device)
    ghm_s, loop_s, ghm_diff = alternating_rounds(
        lambda: ghm(ghm_logits, ghm_targets),
        lambda: ghmc_loop(ghm_logits, ghm_targets, acc_sum),
        ghm_logits,
        ghm_rounds,
    )
    print(f"GHM-C largest relative difference vectorised vs loop: {ghm_diff:.2e}")
    for r, (a, b) in enumerate(zip(ghm_s, loop_s)):
        print(f"GHM-C round {r}: vectorised {a:.3f} s, per-bin loop {b:.3f} s, ratio {b / a:.2f}")
    ghm_speedup = statistics.median(b / a for a, b in zip(ghm_s, loop_s))

    print(
        f"device={device} anchors={args.anchors} classes={NUM_CLASSES} rounds={rounds} "
        f"ghm_anchors={ghm_anchors} ghm_rounds={ghm_rounds} threads={torch.get_num_threads()}"
    )
    print(f"focal_speedup={focal_speedup:.2f} focal_mem_ratio={mem_ratio:.3f} ghm_speedup={ghm_speedup:.2f}")


if __name__ == "__main__":
    main()
