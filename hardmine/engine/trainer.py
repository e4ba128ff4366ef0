"""The training loop: seeded, resumable, logged, and evaluated at the end.

Data order is a pure function of (seed, iteration): epoch e visits the images in the order of a
permutation seeded by (seed, e), and augmentation of image i in epoch e is seeded by
(seed, e, i). Together with the RNG state stored in checkpoints this makes `--resume` continue
exactly where the run stopped (bit-exact on CPU in deterministic mode).
"""

from __future__ import annotations

import contextlib
import random
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from hardmine.config import Config, dump_yaml, validate
from hardmine.data.dataset import DetectionDataset, collate_detection
from hardmine.data.records import DatasetIndex
from hardmine.data.sources import load_checked_splits
from hardmine.engine.checkpoint import (
    FINAL,
    LAST,
    atomic_write,
    load_checkpoint,
    load_model_state,
    remove_stale_temporaries,
    require_keys,
    save_checkpoint,
)
from hardmine.engine.dataset_priors import apply_dataset_priors
from hardmine.engine.evaluate import (
    PR_CURVE_FILE,
    coco_evaluation,
    format_metrics_table,
    write_metrics_json,
    write_pr_curve_json,
)
from hardmine.engine.faults import BufferSnapshot, NonFiniteSteps, all_finite, guarded_step
from hardmine.engine.inference import predict_dataset, resolve_device
from hardmine.engine.logging import MetricLogger
from hardmine.engine.mining import load_hard_negatives
from hardmine.engine.proposals import load_proposals
from hardmine.engine.schedule import build_optimizer, build_scheduler, current_lr
from hardmine.engine.tta import TestTimeAugmentation
from hardmine.engine.voc_eval import voc_metrics
from hardmine.errors import CheckpointError, HardmineError, TrainingDiverged, TrainingInterrupted
from hardmine.models.build import build_model


@dataclass
class TrainResult:
    output_dir: Path
    iterations: int
    seconds_per_iter: float
    images_per_second: float
    peak_memory_mb: float
    skipped_steps: int
    metrics: dict[str, float] | None


class _EpochIndexed(Dataset):
    """Wraps a DetectionDataset so each sample index carries its epoch (seeds its augmentation)."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


class IterationBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches for iterations `start`..`stop - 1`; iteration t's batch depends only on (seed, t)."""

    def __init__(self, num_images: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        if num_images == 0:
            raise HardmineError("the training set has no images")
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.start, self.stop = start, stop
        self.per_epoch = max(num_images // batch_size, 1)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def _order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_images, generator=gen).tolist()
        while len(order) < self.batch_size:  # tiny datasets: repeat to fill one batch
            order += order
        return order

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, []
        for it in range(self.start, self.stop):
            e, pos = divmod(it, self.per_epoch)
            if e != epoch:
                epoch, order = e, self._order(e)
            yield [(e, i) for i in order[pos * self.batch_size : (pos + 1) * self.batch_size]]


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


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise HardmineError("solver.amp=fp16 needs a CUDA device; use solver.amp=bf16 on the CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(targets: list[dict[str, Tensor]], device: torch.device) -> list[dict[str, Tensor]]:
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def head_diagnostics(model: nn.Module) -> dict[str, float]:
    """fg/bg counts and the fg share of the classification loss of every sampling head, plus what
    its sampler reports (`Sampler.last_stats`)."""
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


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate_model(
    model: nn.Module,
    cfg: Config,
    index: DatasetIndex,
    device: torch.device,
    proposals: dict[int, Tensor] | None = None,
    pr_curve_path: Path | None = None,
) -> dict[str, float]:
    """COCO (and/or VOC) metrics of `model` on `index` (see `compute_metrics` for `pr_curve_path`),
    with the multi-scale / flip testing of `cfg.eval` if it asks for any."""
    predictions = predict_dataset(
        model,
        index,
        device,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
        proposals=proposals,
        tta=TestTimeAugmentation.from_config(cfg.eval),
    )
    return compute_metrics(cfg, index, predictions, pr_curve_path)


def compute_metrics(
    cfg: Config,
    index: DatasetIndex,
    predictions: dict[int, dict[str, Tensor]],
    pr_curve_path: Path | None = None,
) -> dict[str, float]:
    """The metric set `cfg.eval.metric` asks for (auto: COCO, plus VOC metrics for VOC data).

    With COCO metrics and a `pr_curve_path`, the precision-recall curve at IoU 0.5 is written there
    too (`write_pr_curve_json`), for reports that plot it.
    """
    metric = cfg.eval.metric
    if metric == "auto":
        metric = "coco" if index.source.suffix == ".json" else "both"  # VOC: the split file
    metrics: dict[str, float] = {}
    if metric in ("coco", "both"):
        coco, pr_curve = coco_evaluation(index, predictions)
        metrics.update(coco)
        if pr_curve_path is not None:
            write_pr_curve_json(pr_curve_path, pr_curve)
    if metric in ("voc", "both"):
        metrics.update(voc_metrics(index, predictions))
    return metrics


def load_split_proposals(cfg: Config, split: str, index: DatasetIndex) -> dict[int, Tensor] | None:
    """Fast R-CNN's proposals for a split (None for other detectors)."""
    if cfg.model.arch != "fast_rcnn":
        return None
    path = cfg.data.train_proposals if split == "train" else (cfg.data.val_proposals or "")
    if not path:
        raise HardmineError(
            f"model.arch=fast_rcnn needs data.{split}_proposals (write one with hardmine proposals)"
        )
    return load_proposals(path, index)


def train(cfg: Config, resume: bool = False) -> TrainResult:
    """Train as `cfg` says; write checkpoints, logs and (at the end) metrics under `cfg.output_dir`.

    `resume` continues from `checkpoint_last.pt` there (or starts from scratch when there is none
    yet, e.g. after a SIGKILL before the first checkpoint); docs/fault-handling.md says what else
    is detected and recovered.
    """
    validate(cfg)
    if cfg.mining.rounds > 0:  # bootstrapping: train, mine, retrain (one subfolder per round)
        from hardmine.engine.bootstrap import train_rounds

        return train_rounds(cfg, resume)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, (LAST, FINAL, "config.yaml"))  # left by a SIGKILL mid-write
    resume_logs = resume
    if resume and not (out / LAST).is_file():
        print(f"--resume: no checkpoint in {out} yet; training from the start", file=sys.stderr)
        resume = False
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    device = resolve_device(cfg.train.device)

    train_index, val_index = load_checked_splits(cfg.data)
    train_proposals = load_split_proposals(cfg, "train", train_index)
    hard_negatives = load_hard_negatives(cfg.mining.file, train_index) if cfg.mining.file else None

    model = build_model(cfg, train_index.num_classes).to(device)
    if not resume:  # sampling-free bias and thresholds; a resumed run has them in its checkpoint
        apply_dataset_priors(model, cfg, train_index, train_proposals, run_dir=out)
    if cfg.mining.start_from and not resume:  # e.g. a bootstrapping round: the previous round's weights
        weights_from = cfg.mining.start_from
        load_model_state(model, load_checkpoint(weights_from, map_location=device)["model"], weights_from)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_scheduler(optimizer, cfg.solver)

    # fp16 needs loss scaling; its overflow steps are skipped by `guarded_step` (see engine/faults.py)
    scaler = torch.amp.GradScaler(device.type) if cfg.solver.amp == "fp16" else None
    last_saved: int | None = None  # iteration of the checkpoint_last.pt on disk, as far as we know
    faults = NonFiniteSteps(
        cfg.train.max_nonfinite_steps,
        report=lambda text: _say(text, progress),
        stop_message=lambda: _kept_checkpoint(out / LAST, last_saved),
    )

    start = 0
    if resume:
        ckpt_path = out / LAST
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        require_keys(ckpt, RESUME_KEYS, ckpt_path)
        saved_config = _with_defaults(Config().to_dict(), ckpt["config"])
        diff = _config_diff(_resume_relevant(saved_config), _resume_relevant(cfg.to_dict()))
        if diff:
            raise CheckpointError(f"--resume: {ckpt_path} was written with a different config: {diff}")
        load_model_state(model, ckpt["model"], ckpt_path)
        for name, part in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            if part is not None and ckpt.get(name):
                try:
                    part.load_state_dict(ckpt[name])
                except (ValueError, KeyError, RuntimeError) as exc:
                    raise CheckpointError(f"{ckpt_path}: the {name} state does not fit: {exc}") from None
        faults.load_state_dict(ckpt.get("faults", {}))
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
        start = last_saved = int(ckpt["iteration"])
    with atomic_write(out / "config.yaml") as fh:
        fh.write(dump_yaml(cfg).encode())

    dataset = DetectionDataset(
        train_index,
        train=True,
        hflip_prob=cfg.data.hflip_prob,
        seed=cfg.train.seed,
        proposals=train_proposals,
        hard_negatives=hard_negatives,
    )
    batches = IterationBatchSampler(
        len(dataset), cfg.data.batch_size, cfg.train.seed, start, cfg.solver.max_iter
    )
    loader = DataLoader(
        _EpochIndexed(dataset),
        batch_sampler=batches,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_detection,
        persistent_workers=False,
        # Its own generator: creating the iterator must not draw from the global RNG, which the
        # checkpoint restores (else a resumed run would sample differently).
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    logger = MetricLogger(out, resume_from=start if resume_logs else None)
    categories = [{"id": c.id, "name": c.name, "label": c.label} for c in train_index.categories]

    def checkpoint(iteration: int, path: Path) -> None:
        nonlocal last_saved
        state = model.state_dict()
        if not all_finite(state.values()):  # never replace a good checkpoint by a broken one
            close_outputs()
            raise TrainingDiverged(
                f"iteration {iteration}: the model holds non-finite weights; {path} not written. "
                + _kept_checkpoint(out / LAST, last_saved)
            )
        rng: dict[str, Tensor] = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(
            path,
            {
                "iteration": iteration,
                "model": state,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "faults": faults.state_dict(),
                "rng": rng,
                "config": cfg.to_dict(),
                "categories": categories,
            },
        )
        if path.name == LAST:
            last_saved = iteration

    progress = None
    if cfg.train.progress:
        from tqdm import tqdm

        progress = tqdm(
            total=cfg.solver.max_iter,
            initial=start,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def close_outputs() -> None:
        if progress is not None:
            progress.close()
        logger.close()

    model.train()
    iteration = start
    t_start = time.perf_counter()
    with StopRequest() as stop:
        for images, targets in loader:
            images = [img.to(device, non_blocking=True) for img in images]
            targets = _to_device(targets, device)
            buffers = BufferSnapshot(model)  # a skipped step must not keep what its forward wrote
            with _autocast(cfg.solver.amp, device):
                loss_dict = model(images, targets)
            loss = sum(loss_dict.values()).detach()
            outcome = guarded_step(model, optimizer, loss_dict, cfg.solver.clip_grad_norm, scaler)
            if not outcome.ok:
                buffers.restore()
            lr = current_lr(optimizer)
            scheduler.step()
            iteration += 1
            try:
                faults.update(iteration, outcome, [int(t["image_id"]) for t in targets])
            except TrainingDiverged:
                close_outputs()
                raise
            if iteration % cfg.train.log_period == 0 or iteration == cfg.solver.max_iter:
                scalars = {"loss": float(loss), "lr": lr, "skipped_steps": float(faults.skipped)}
                scalars.update({k: float(v.detach()) for k, v in loss_dict.items()})
                scalars.update(head_diagnostics(model))
                scalars["time_per_iter"] = (time.perf_counter() - t_start) / max(iteration - start, 1)
                logger.log(iteration, scalars)
            if progress is not None:
                progress.set_postfix(loss=f"{float(loss):.3f}", lr=f"{lr:.2g}", refresh=False)
                progress.update(1)
            if iteration % cfg.train.checkpoint_period == 0 and iteration < cfg.solver.max_iter:
                checkpoint(iteration, out / LAST)
            if stop.signal is not None:
                checkpoint(iteration, out / LAST)
                if progress is not None:
                    progress.close()
                logger.close()
                raise TrainingInterrupted(
                    f"stopped by {signal.Signals(stop.signal).name} after iteration {iteration}: checkpoint "
                    f"{out / LAST}; continue with: hardmine train ... --resume"
                )
    elapsed = time.perf_counter() - t_start
    if progress is not None:
        progress.close()
    logger.close()
    checkpoint(iteration, out / LAST)
    checkpoint(iteration, out / FINAL)
    done = max(iteration - start, 1)
    result = TrainResult(
        output_dir=out,
        iterations=iteration,
        seconds_per_iter=elapsed / done,
        images_per_second=done * cfg.data.batch_size / max(elapsed, 1e-9),
        peak_memory_mb=peak_memory_mb(device),
        skipped_steps=faults.skipped,
        metrics=None,
    )
    if cfg.train.eval_at_end:
        val_proposals = load_split_proposals(cfg, "val", val_index)
        metrics = evaluate_model(
            model, cfg, val_index, device, proposals=val_proposals, pr_curve_path=out / PR_CURVE_FILE
        )
        result.metrics = metrics
        write_metrics_json(
            out / "metrics.json",
            metrics,
            extra={
                "iterations": iteration,
                "seconds_per_iter": result.seconds_per_iter,
                "images_per_second": result.images_per_second,
                "peak_memory_mb": result.peak_memory_mb,
                "device": str(device),
                "skipped_steps": faults.skipped,
            },
        )
    return result


#: Keys that may change between a run and its resumption (they do not change the result).
RESUME_FREE_KEYS = {
    ("train", "progress"),
    ("train", "num_threads"),
    ("train", "max_nonfinite_steps"),
    ("data", "num_workers"),
    ("output_dir",),
}
#: What a checkpoint needs to resume training from it.
RESUME_KEYS = ("iteration", "model", "optimizer", "scheduler", "rng", "config")


def _with_defaults(defaults: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` (a checkpoint's config) completed with `defaults` for keys added since it was written."""
    out = dict(defaults)
    for key, value in saved.items():
        base = defaults.get(key)
        both_sections = isinstance(base, dict) and isinstance(value, dict)
        out[key] = _with_defaults(base, value) if both_sections else value
    return out


def _say(text: str, progress: Any | None) -> None:
    """A line on stderr, above the progress bar when there is one."""
    if progress is not None:
        progress.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def _kept_checkpoint(path: Path, iteration: int | None) -> str:
    """What a stopped run leaves to resume from."""
    if iteration is None and not path.is_file():
        return "No checkpoint had been written yet."
    at = f" (iteration {iteration})" if iteration is not None else ""
    return (
        f"The last checkpoint, {path}{at}, is kept as it was; fix the cause (data, solver.lr, "
        "solver.warmup_iters, solver.clip_grad_norm) and train again, or `--resume` it"
    )


def _resume_relevant(config: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for key in RESUME_FREE_KEYS:
        node = out
        for part in key[:-1]:
            node = node.get(part, {})
        node.pop(key[-1], None)
    return out


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(a, dict) and isinstance(b, dict):
            sub = _config_diff(a, b, dotted)
            if sub:
                diffs.append(sub)
        elif a != b:
            diffs.append(f"{dotted}: checkpoint {a!r}, now {b!r}")
    return "; ".join(diffs)


def format_result(result: TrainResult) -> str:
    lines = [
        f"trained {result.iterations} iterations: {result.seconds_per_iter:.3f} s/iter, "
        f"{result.images_per_second:.1f} images/s, peak memory {result.peak_memory_mb:.0f} MB"
        + (f", {result.skipped_steps} non-finite steps skipped" if result.skipped_steps else ""),
    ]
    if result.metrics:
        lines.append(format_metrics_table(result.metrics))
    lines.append(f"outputs in {result.output_dir}")
    return "\n".join(lines)
