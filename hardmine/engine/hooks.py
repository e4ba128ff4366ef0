"""The hooks of a training run: what happens around the `Trainer`'s steps.

    Evaluation         every train.eval_period iterations and at the end (metrics.json, pr50.json,
                       eval_history.json, detections/; AP / AP50 in the log)
    MetricLogging      a row of log.csv and TensorBoard scalars every train.log_period iterations
    ProgressBar        tqdm on rank 0
    PeriodicCheckpoint checkpoint_last.pt every train.checkpoint_period iterations
    StopAt             stop after iteration train.stop_at, with a checkpoint
    SignalStop         the first SIGINT / SIGTERM stops after the current iteration, with a checkpoint

`engine.training.training_hooks` puts them in that order: an evaluation's scalars go into the log row
of its iteration, and a stop comes after everything else of its iteration.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hardmine import distributed
from hardmine.engine.checkpoint import LAST
from hardmine.engine.coco_eval import PR_CURVE_FILE, write_metrics_json
from hardmine.engine.evaluation import (
    DETECTIONS_DIR,
    EVAL_HISTORY_FILE,
    detections_file,
    read_eval_history,
    write_eval_history,
)
from hardmine.engine.logging import MetricLogger
from hardmine.engine.trainer import Hook, Stop, Trainer, TrainResult, print_to_stderr

#: Metrics of an evaluation during training that go into log.csv (as eval/KEY) and TensorBoard
#: (detection's; `engine.tasks.Task.logged_metrics` says each task's).
LOGGED_METRICS = ("AP", "AP50")


def head_diagnostics(model: nn.Module) -> dict[str, float]:
    """fg/bg counts and the fg share of the classification loss of every sampling head, plus what
    its sampler reports (`Sampler.last_stats`); a model with its own `diagnostics()` (segmentation:
    kept pixels, fg loss share) reports those instead."""
    own = getattr(model, "diagnostics", None)
    if callable(own):
        return dict(own())
    out: dict[str, float] = {}
    for name, head in getattr(model, "heads", {}).items():
        stats = getattr(head, "last_stats", {})
        if not stats:
            continue
        fg_loss, bg_loss = float(stats["cls_loss_fg"]), float(stats["cls_loss_bg"])
        out[f"{name}/num_fg"] = float(stats["num_fg"])
        out[f"{name}/num_bg"] = float(stats["num_bg"])
        out[f"{name}/num_candidates"] = float(stats["num_candidates"])
        out[f"{name}/fg_loss_share"] = fg_loss / (fg_loss + bg_loss) if fg_loss + bg_loss > 0 else 0.0
        sampler = getattr(head, "sampler", None)
        for key, value in getattr(sampler, "last_stats", {}).items():  # e.g. OHEM's NMS and loss stats
            out[f"{name}/sampler/{key}"] = float(value)
    return out


class MetricLogging(Hook):
    """Every `period` iterations, at the last one and at any iteration a hook adds scalars to
    (`Trainer.scalars`): losses, learning rate, skipped steps, input size, head diagnostics and time
    per iteration, averaged over the processes, as a row of log.csv and TensorBoard scalars (rank 0).

    `resume_from`: the iteration a resumed run continues from (rows after it are dropped), None for
    a new log. `columns`: columns of log.csv besides the first row's (empty where not logged).
    """

    def __init__(
        self, out_dir: Path, period: int, resume_from: int | None, columns: tuple[str, ...] = ()
    ) -> None:
        self.out_dir, self.period, self.resume_from, self.columns = out_dir, period, resume_from, columns
        self.logger: MetricLogger | None = None

    def before_train(self, trainer: Trainer) -> None:
        if trainer.run.is_main:
            self.logger = MetricLogger(self.out_dir, resume_from=self.resume_from, columns=self.columns)

    def after_step(self, trainer: Trainer) -> None:
        it, step = trainer.iteration, trainer.last
        assert step is not None
        if it % self.period and it != trainer.max_iter and not trainer.scalars:
            return
        scalars = {"loss": float(step.loss), "lr": step.lr, "skipped_steps": float(trainer.faults.skipped)}
        if step.input_size is not None:
            scalars["input_size"] = float(step.input_size)
        scalars.update({k: float(v.detach()) for k, v in step.losses.items()})
        scalars.update(head_diagnostics(trainer.model))
        scalars["time_per_iter"] = trainer.training_seconds() / max(it - trainer.start, 1)
        scalars.update(trainer.scalars)
        scalars = distributed.average_scalars(scalars)  # the mean over the processes
        if self.logger is not None:
            self.logger.log(it, scalars)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()


class ProgressBar(Hook):
    """A tqdm bar on stderr (rank 0), with the loss and learning rate; the trainer's messages
    are written above it."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.trainer: Trainer | None = None

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.run.is_main:
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=trainer.max_iter,
            initial=trainer.iteration,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        self.trainer = trainer
        trainer.say = self.say

    def say(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def after_step(self, trainer: Trainer) -> None:
        if self.bar is not None and trainer.last is not None:
            self.bar.set_postfix(
                loss=f"{float(trainer.last.loss):.3f}", lr=f"{trainer.last.lr:.2g}", refresh=False
            )
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.trainer is not None:
            self.trainer.say = print_to_stderr


class PeriodicCheckpoint(Hook):
    """checkpoint_last.pt every `period` iterations before the last (which the trainer writes itself)."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self, trainer: Trainer) -> None:
        if trainer.iteration % self.period == 0 and trainer.iteration < trainer.max_iter:
            trainer.save_checkpoint(LAST)


class StopAt(Hook):
    """Stop after iteration `iteration` (train.stop_at), with a checkpoint: the run is unfinished,
    its schedule still that of solver.max_iter, and `--resume` with a later stop continues exactly.
    A run resumed at or after `iteration` stops before its first step."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def before_train(self, trainer: Trainer) -> None:
        self.after_step(trainer)

    def after_step(self, trainer: Trainer) -> None:
        if trainer.iteration >= self.iteration:
            trainer.request_stop(Stop(f"train.stop_at={self.iteration}"))


class StopRequest(contextlib.AbstractContextManager):
    """Turn the first SIGINT/SIGTERM into a request to stop at the next iteration boundary.

    The loop then writes a checkpoint of a consistent state (whole iterations only) and stops; a
    second signal interrupts at once (the last periodic checkpoint stays intact).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this iteration (again to abort)",
            file=sys.stderr,
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class SignalStop(Hook):
    """A SIGINT / SIGTERM (`StopRequest`) to any process stops every process after the same
    iteration, with a checkpoint; the run then raises TrainingInterrupted."""

    def __init__(self) -> None:
        self.request = StopRequest()

    def before_train(self, trainer: Trainer) -> None:
        self.request.__enter__()

    def after_step(self, trainer: Trainer) -> None:
        received = self.request.signal
        if distributed.any_process(received is not None):  # all processes stop at this iteration
            cause = signal.Signals(received).name if received else "a signal to another process"
            trainer.request_stop(Stop(cause, interrupted=True))

    def close(self) -> None:
        self.request.__exit__()


@contextlib.contextmanager
def rng_kept(device: torch.device) -> Iterator[None]:
    """Restore every RNG the training draws from (torch, CUDA, Python, NumPy) after the block."""
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


class Evaluation(Hook):
    """Evaluate on the validation set every `period` iterations (0 = never) and, with `at_end`,
    after the run (metrics.json with the run's facts, pr50.json); `evaluate(pr_curve_path,
    detections_path)` returns the metrics (every process calls it: the evaluation is sharded in a
    distributed run) and writes the detections to `detections_path` (rank 0).

    Every evaluation keeps its detections in `detections/ITERATION.json` (`detections_file`), which
    `hardmine compare` re-scores on resampled images. Evaluations during training put `eval/AP` and
    `eval/AP50` into the log row of their iteration; with `period` > 0 every evaluation, the final
    one too, is appended to eval_history.json (rank 0, atomically). A resumed run keeps the entries
    and detections up to `resume_from`; a new run drops an earlier run's. An evaluation changes
    nothing of the training: the model's mode and every RNG are restored, its time is not training
    time.
    """

    def __init__(
        self,
        evaluate: Callable[[Path | None, Path | None], dict[str, float]],
        out_dir: Path,
        period: int,
        at_end: bool,
        resume_from: int | None,
        logged: tuple[str, ...] = LOGGED_METRICS,
    ) -> None:
        self.evaluate, self.out_dir, self.period, self.at_end = evaluate, out_dir, period, at_end
        self.resume_from = resume_from
        self.logged = logged
        self.history: list[dict[str, Any]] = []
        self.is_main = True

    @property
    def columns(self) -> tuple[str, ...]:
        """The log columns it fills."""
        return tuple(f"eval/{key}" for key in self.logged) if self.period else ()

    def before_train(self, trainer: Trainer) -> None:
        self.is_main = trainer.run.is_main
        if not self.is_main:
            return
        self._drop_stale_detections()
        path = self.out_dir / EVAL_HISTORY_FILE
        if not path.is_file():
            return
        if self.resume_from is None:
            path.unlink()  # an earlier run's
        else:
            self.history = [e for e in read_eval_history(path) if e["iteration"] <= self.resume_from]

    def _drop_stale_detections(self) -> None:
        """An earlier run's detections, or a resumed run's after the iteration it resumes from."""
        folder = self.out_dir / DETECTIONS_DIR
        if self.resume_from is None:
            shutil.rmtree(folder, ignore_errors=True)
            return
        for path in folder.glob("*.json"):
            if not path.stem.isdigit() or int(path.stem) > self.resume_from:
                path.unlink()

    def after_step(self, trainer: Trainer) -> None:
        it = trainer.iteration
        if not self.period or it % self.period or (self.at_end and it == trainer.max_iter):
            return  # the final evaluation covers the last iteration
        with trainer.paused(), rng_kept(trainer.run.device):
            metrics = self.evaluate(None, detections_file(self.out_dir, it))
        logged = {f"eval/{key}": metrics[key] for key in self.logged if key in metrics}
        trainer.scalars.update(logged)
        if self.is_main:
            shown = ", ".join(f"{key} {100 * metrics[key]:.1f}" for key in self.logged if key in metrics)
            trainer.say(f"iteration {it}: evaluated on data.val: {shown}")
        self._record(it, metrics)

    def after_train(self, trainer: Trainer, result: TrainResult) -> None:
        if not self.at_end:
            return
        pr_curve, detections = self.out_dir / PR_CURVE_FILE, detections_file(self.out_dir, result.iterations)
        metrics = self.evaluate(pr_curve, detections)
        result.metrics = metrics
        facts: dict[str, Any] = {
            "iterations": result.iterations,
            "seconds_per_iter": result.seconds_per_iter,
            "images_per_second": result.images_per_second,
            "peak_memory_mb": result.peak_memory_mb,
            "device": str(trainer.run.device),
            "skipped_steps": result.skipped_steps,
        }
        if trainer.run.distributed:  # images_per_second counts every process; the rest is rank 0's
            facts["world_size"] = trainer.run.world_size
        if self.is_main:
            write_metrics_json(self.out_dir / "metrics.json", metrics, extra=facts)
        if self.period:
            self._record(result.iterations, metrics)

    def _record(self, iteration: int, metrics: dict[str, float]) -> None:
        if self.is_main:
            self.history.append({"iteration": iteration, **metrics})
            write_eval_history(self.out_dir / EVAL_HISTORY_FILE, self.history)
