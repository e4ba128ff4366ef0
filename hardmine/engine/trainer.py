"""The `Trainer`: the loop of one training run in this process, its state and its hooks.

A step is forward, guarded optimizer step (`faults.guarded_step`: a step with a non-finite loss or
gradient is skipped and counted), learning-rate step. Everything around the steps is a `Hook`
(`engine.hooks`): logging, the progress bar, periodic checkpoints, evaluation, stopping on a signal
or at `train.stop_at`. The training state (weights, optimizer, schedule, loss scaler, fault counts,
every process's RNG state) goes into `checkpoint_last.pt` / `model_final.pt` through
`save_checkpoint` and comes back through `load_state_dict`, so that a resumed run continues
exactly where the run stopped (bit-exact on the CPU in deterministic mode).

Under torchrun the model trains in a DistributedDataParallel wrapper, rank 0 writes the files,
and every hook that takes a collective decision takes it on every process (docs/distributed.md).
`engine.training.train` builds a Trainer from a `Config`.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from hardmine import distributed
from hardmine.engine.checkpoint import FINAL, LAST, load_model_state, save_checkpoint
from hardmine.engine.coco_eval import format_metrics_table
from hardmine.engine.faults import BufferSnapshot, NonFiniteSteps, StepOutcome, all_finite, guarded_step
from hardmine.engine.resume import kept_checkpoint
from hardmine.engine.schedule import current_lr
from hardmine.engine.shapes import RandomShapes
from hardmine.errors import CheckpointError, HardmineError, TrainingDiverged, TrainingInterrupted

Batch = tuple[list[Tensor], list[dict[str, Tensor]]]


@dataclass
class TrainResult:
    """What a run did: where its files are, how far it got, how fast, its skipped steps and (with an
    evaluation at the end) its metrics."""

    output_dir: Path
    iterations: int
    seconds_per_iter: float
    images_per_second: float
    peak_memory_mb: float
    skipped_steps: int
    metrics: dict[str, float] | None
    #: Why the run stopped before solver.max_iter (e.g. "train.stop_at=100"); "" when it finished.
    stopped: str = ""


@dataclass(frozen=True)
class StepRecord:
    """What the last step did, for the hooks: its losses, the learning rate it used, the input size
    (random shapes; None without), whether the weights were updated, the images it trained on."""

    losses: dict[str, Tensor]
    loss: Tensor
    lr: float
    input_size: int | None
    outcome: StepOutcome
    image_ids: list[int]


@dataclass(frozen=True)
class Stop:
    """A hook's request to end the loop after this iteration, with a checkpoint. `interrupted`: the
    run then raises TrainingInterrupted (a signal), else it returns its (unfinished) result."""

    reason: str
    interrupted: bool = False


class Hook:
    """Something the Trainer calls around its steps; override what you need.

    Hooks run in the order given, on every process of a distributed run (write files on rank 0
    only, and take collective decisions on every process alike).
    """

    def before_train(self, trainer: Trainer) -> None:
        """Before the first step (after a resumed run's state is loaded)."""

    def after_step(self, trainer: Trainer) -> None:
        """After every step; `trainer.iteration` counts it, `trainer.last` describes it."""

    def after_train(self, trainer: Trainer, result: TrainResult) -> None:
        """After a run that reached its last iteration and wrote model_final.pt; may set `result.metrics`."""

    def close(self) -> None:
        """At the end of the loop, always: after errors and stops too."""


def print_to_stderr(text: str) -> None:
    """A line on stderr: what `Trainer.say` does unless a hook (the progress bar) replaces it."""
    print(text, file=sys.stderr)


class Trainer:
    """Trains `model` for iterations `iteration`..`max_iter` - 1 of the batches it is given
    (`batch_size` images per process).

    `amp`: solver.amp; `clip_grad_norm`: solver.clip_grad_norm (0 = no clipping); `shapes`: the
    input size of each iteration (random shapes; None: the model's own); `max_nonfinite_steps`:
    stop after this many skipped steps in a row (0 = never). `checkpoint_extras` go into every
    checkpoint as they are (the run's config and categories). Checkpoints are written to `out_dir`
    by rank 0.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        scheduler: LRScheduler,
        *,
        run: distributed.ProcessContext,
        out_dir: Path,
        max_iter: int,
        batch_size: int,
        amp: str = "off",
        clip_grad_norm: float = 0.0,
        shapes: RandomShapes | None = None,
        max_nonfinite_steps: int = 0,
        checkpoint_extras: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.run, self.out_dir, self.max_iter, self.batch_size = run, out_dir, max_iter, batch_size
        self.amp, self.clip_grad_norm = amp, clip_grad_norm
        self.shapes = shapes
        self.checkpoint_extras = checkpoint_extras or {}
        # fp16 needs loss scaling; its overflow steps are skipped by `guarded_step` (engine/faults.py)
        self.scaler = torch.amp.GradScaler(run.device.type) if amp == "fp16" else None
        self.faults = NonFiniteSteps(
            max_nonfinite_steps,
            report=lambda text: self.say(text),
            stop_message=lambda: kept_checkpoint(out_dir / LAST, self.last_saved),
        )
        self.say: Callable[[str], None] = print_to_stderr
        self.iteration = 0  #: steps done (the next step is iteration + 1, 1-based)
        self.start = 0  #: the iteration this process started (or resumed) at
        self.last_saved: int | None = None  #: iteration of the checkpoint_last.pt on disk, as far as we know
        self.last: StepRecord | None = None
        self.scalars: dict[str, float] = {}  #: hooks' extra scalars for this iteration's log row
        self.stop: Stop | None = None
        self._train_model: nn.Module = model
        self._started = self._paused = 0.0

    # -- the loop -------------------------------------------------------------------------------

    def train(self, batches: Iterable[Batch], hooks: Sequence[Hook] = ()) -> TrainResult:
        """Run the steps of `batches` (those of iterations `iteration`..`max_iter` - 1) with `hooks`.

        At the end model_final.pt and checkpoint_last.pt are written and the hooks' `after_train`
        runs. A hook's `Stop` ends the loop early with a checkpoint: a signal raises
        TrainingInterrupted, other stops return the result so far (`TrainResult.stopped`)."""
        self.model.train()
        self._train_model = data_parallel(self.model, self.run)  # `model` itself in a single process
        try:
            for hook in hooks:
                hook.before_train(self)
            self._started, self._paused = time.perf_counter(), 0.0
            if self.stop is None:
                for images, targets in batches:
                    self.step(images, targets)
                    for hook in hooks:
                        hook.after_step(self)
                    if self.stop is not None:
                        break
            elapsed = self.training_seconds()
        finally:
            for hook in hooks:
                hook.close()
        if self.stop is not None:
            return self._stopped(elapsed)
        self.save_checkpoint(LAST)
        self.save_checkpoint(FINAL)
        result = self._result(elapsed)
        for hook in hooks:
            hook.after_train(self, result)
        return result

    def step(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> None:
        """One training iteration on this process's batch."""
        device = self.run.device
        images = [img.to(device, non_blocking=True) for img in images]
        targets = to_device(targets, device)
        # random shapes: this batch's size
        input_size = self.shapes.apply(self.model, self.iteration) if self.shapes is not None else None
        buffers = BufferSnapshot(self.model)  # a skipped step must not keep what its forward wrote
        with autocast(self.amp, device):
            losses = self._train_model(images, targets)
        loss = sum(losses.values()).detach()
        outcome = guarded_step(self.model, self.optimizer, losses, self.clip_grad_norm, self.scaler)
        if not outcome.ok:
            buffers.restore()
        lr = current_lr(self.optimizer)
        self.scheduler.step()
        self.iteration += 1
        self.scalars = {}
        image_ids = [int(t["image_id"]) for t in targets]
        detached = {k: v.detach() for k, v in losses.items()}  # a skipped step's graph is not kept
        self.last = StepRecord(detached, loss, lr, input_size, outcome, image_ids)
        self.faults.update(self.iteration, outcome, image_ids)

    def request_stop(self, stop: Stop) -> None:
        """End the loop after this iteration (a signal's stop wins over another)."""
        if self.stop is None or stop.interrupted:
            self.stop = stop

    # -- time -----------------------------------------------------------------------------------

    def training_seconds(self) -> float:
        """Seconds since the first step, without the time spent `paused` (e.g. evaluating)."""
        return time.perf_counter() - self._started - self._paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Work inside this block (e.g. an evaluation) does not count as training time."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - begin

    # -- state ----------------------------------------------------------------------------------

    def save_checkpoint(self, name: str) -> Path:
        """Write the training state to `out_dir/name` (rank 0; the others wait for the file).

        Non-finite weights are never written: TrainingDiverged, the last checkpoint kept as it was.
        """
        path = self.out_dir / name
        state = self.model.state_dict()
        if not all_finite(state.values()):
            raise TrainingDiverged(
                f"iteration {self.iteration}: the model holds non-finite weights; {path} not written. "
                + kept_checkpoint(self.out_dir / LAST, self.last_saved)
            )
        rng: dict[str, Tensor] = {"torch": torch.get_rng_state()}
        if self.run.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.run.device)
        payload = {
            "iteration": self.iteration,
            "model": state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "faults": self.faults.state_dict(),
            "rng": rng,
            **self.checkpoint_extras,
        }
        if self.run.distributed:  # every rank's RNG state, so that --resume restores each one's
            payload.update(world_size=self.run.world_size, rng_per_rank=distributed.gather_objects(rng))
        if self.run.is_main:  # the weights and optimizer state are the same on every rank
            save_checkpoint(path, payload)
        distributed.barrier()  # the others go on once the file is there
        if name == LAST:
            self.last_saved = self.iteration
        return path

    def load_state_dict(self, ckpt: dict[str, Any], source: Path) -> None:
        """Continue from a checkpoint's training state (checked by `engine.resume.check_resumable`)."""
        load_model_state(self.model, ckpt["model"], source)
        for name, part in (
            ("optimizer", self.optimizer),
            ("scheduler", self.scheduler),
            ("scaler", self.scaler),
        ):
            if part is not None and ckpt.get(name):
                try:
                    part.load_state_dict(ckpt[name])
                except (ValueError, KeyError, RuntimeError) as exc:
                    raise CheckpointError(f"{source}: the {name} state does not fit: {exc}") from None
        self.faults.load_state_dict(ckpt.get("faults", {}))
        rng = ckpt["rng_per_rank"][self.run.rank] if self.run.distributed else ckpt["rng"]  # this process's
        torch.set_rng_state(rng["torch"].cpu())
        if self.run.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.run.device)
        self.iteration = self.start = self.last_saved = int(ckpt["iteration"])

    # -- the end --------------------------------------------------------------------------------

    def _stopped(self, elapsed: float) -> TrainResult:
        assert self.stop is not None
        if self.last_saved != self.iteration:
            self.save_checkpoint(LAST)
        if self.stop.interrupted:
            raise TrainingInterrupted(
                f"stopped by {self.stop.reason} after iteration {self.iteration}: checkpoint "
                f"{self.out_dir / LAST}; continue with: hardmine train ... --resume"
            )
        return self._result(elapsed, stopped=self.stop.reason)

    def _result(self, elapsed: float, stopped: str = "") -> TrainResult:
        done = max(self.iteration - self.start, 1)
        return TrainResult(
            output_dir=self.out_dir,
            iterations=self.iteration,
            seconds_per_iter=elapsed / done,
            images_per_second=done * self.batch_size * self.run.world_size / max(elapsed, 1e-9),
            peak_memory_mb=peak_memory_mb(self.run.device),
            skipped_steps=self.faults.skipped,
            metrics=None,
            stopped=stopped,
        )


def format_result(result: TrainResult) -> str:
    """What `hardmine train` prints at the end."""
    if result.stopped:
        lines = [
            f"stopped after iteration {result.iterations} ({result.stopped}): "
            f"{result.seconds_per_iter:.3f} s/iter; continue with: hardmine train ... --resume"
        ]
    else:
        lines = [
            f"trained {result.iterations} iterations: {result.seconds_per_iter:.3f} s/iter, "
            f"{result.images_per_second:.1f} images/s, peak memory {result.peak_memory_mb:.0f} MB"
            + (f", {result.skipped_steps} non-finite steps skipped" if result.skipped_steps else ""),
        ]
    if result.metrics:
        lines.append(format_metrics_table(result.metrics))
    lines.append(f"outputs in {result.output_dir}")
    return "\n".join(lines)


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision as `solver.amp` says: off, bf16 (CPU and CUDA) or fp16 (CUDA only)."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise HardmineError("solver.amp=fp16 needs a CUDA device; use solver.amp=bf16 on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(targets: list[dict[str, Tensor]], device: torch.device) -> list[dict[str, Tensor]]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def data_parallel(model: nn.Module, run: distributed.ProcessContext) -> nn.Module:
    """`model` in DistributedDataParallel for a distributed run (gradients averaged over the
    processes in the backward pass), else `model` itself.

    `find_unused_parameters`: a parameter may get no gradient on one process in one iteration,
    e.g. the RoI head's box regressor when none of that process's sampled RoIs is foreground.
    DDP then counts its gradient as zero there, so the average stays the combined batch's (and a
    parameter unused on every process keeps no gradient, as in a single process); without it DDP
    would wait forever for that gradient.
    """
    if not run.distributed:
        return model
    device_ids = [run.device.index] if run.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
