"""The training loop: seeded, resumable, logged, and evaluated at the end.

Data order is a pure function of (seed, iteration): epoch e visits the images in the order of a
permutation seeded by (seed, e), and augmentation of image i in epoch e is seeded by
(seed, e, i). Together with the RNG state stored in checkpoints this makes `--resume` continue
exactly where the run stopped (bit-exact on CPU in deterministic mode).

Under torchrun every process trains on its slice of each global batch in a DistributedDataParallel
wrapper of the model, and rank 0 writes the run's files (`hardmine.distributed`,
docs/distributed.md). A single process never touches torch.distributed.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from hardmine import distributed
from hardmine.config import Config, dump_yaml, saved_config_with_defaults, validate
from hardmine.data.dataset import DetectionDataset, collate_detection
from hardmine.data.mixup import MixupOptions
from hardmine.data.records import DatasetIndex
from hardmine.data.sources import load_checked_splits
from hardmine.data.transforms import AugmentOptions
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
from hardmine.engine.shapes import RandomShapes
from hardmine.engine.sync_bn import convert_sync_batchnorm
from hardmine.engine.tta import TestTimeAugmentation
from hardmine.engine.voc_eval import voc_metrics
from hardmine.errors import (
    CheckpointError,
    ConfigError,
    HardmineError,
    TrainingDiverged,
    TrainingInterrupted,
)
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
    """Batches for iterations `start`..`stop - 1`; iteration t's batch depends only on (seed, t).

    In a distributed run (`world_size` processes) the global batch of iteration t holds
    `batch_size` x `world_size` images, exactly the batch one process with that batch size would
    draw, and process `rank` takes the `rank`-th slice of `batch_size` images of it. This plays the
    role of torch's `DistributedSampler`, which is epoch-based (it cannot start mid-epoch at an
    exact iteration) and does not make the processes' batches add up to the single-process batch.
    """

    def __init__(
        self,
        num_images: int,
        batch_size: int,
        seed: int,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_images == 0:
            raise HardmineError("the training set has no images")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.start, self.stop = start, stop
        self.rank, self.world_size = rank, world_size
        self.global_batch_size = batch_size * world_size
        self.per_epoch = max(num_images // self.global_batch_size, 1)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def _order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_images, generator=gen).tolist()
        while len(order) < self.global_batch_size:  # tiny datasets: repeat to fill one batch
            order += order
        return order

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, order = -1, []
        size = self.global_batch_size
        for it in range(self.start, self.stop):
            e, pos = divmod(it, self.per_epoch)
            if e != epoch:
                epoch, order = e, self._order(e)
            batch = order[pos * size : (pos + 1) * size]
            yield [(e, i) for i in batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]]


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
    with the multi-scale / flip testing of `cfg.eval` if it asks for any.

    In a distributed run every process predicts its shard of the images (every world_size-th one,
    starting at its rank) with `model` (the plain model, not its DDP wrapper); rank 0 gathers the
    predictions, computes the metrics (and writes `pr_curve_path`), and every process returns them.
    """
    shard = index
    if distributed.is_distributed():
        rank, world = distributed.rank(), distributed.world_size()
        shard = dataclasses.replace(index, records=index.records[rank::world])
    predictions = predict_dataset(
        model,
        shard,
        device,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
        proposals=proposals,
        tta=TestTimeAugmentation.from_config(cfg.eval),
    )
    if not distributed.is_distributed():
        return compute_metrics(cfg, index, predictions, pr_curve_path)
    shards = distributed.gather_objects(predictions)
    metrics = None
    if shards is not None:  # rank 0
        merged = {image_id: p for part in shards for image_id, p in part.items()}
        metrics = compute_metrics(cfg, index, merged, pr_curve_path)
    return distributed.broadcast_object(metrics)


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

    Started by torchrun (WORLD_SIZE > 1), this process is one of a distributed run: it trains on
    its slice of every global batch in a DistributedDataParallel model, and rank 0 writes the run's
    files (docs/distributed.md). The process group lives as long as this call.
    """
    validate(cfg)
    if cfg.mining.rounds > 0:  # bootstrapping: train, mine, retrain (one subfolder per round)
        processes = distributed.launch_env()[2]
        if processes > 1:
            raise ConfigError(
                f"mining.rounds={cfg.mining.rounds} (bootstrapping) runs in a single process, not under "
                f"torchrun (WORLD_SIZE={processes}); train each round with mining.file instead"
            )
        from hardmine.engine.bootstrap import train_rounds

        return train_rounds(cfg, resume)
    with distributed.process_group(cfg.train.dist_backend, resolve_device(cfg.train.device)) as run:
        return _train_process(cfg, resume, run)


def _train_process(cfg: Config, resume: bool, run: distributed.ProcessContext) -> TrainResult:
    """`train` in this process: all of it in a single-process run, one rank's part of a distributed one."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if run.is_main:
        remove_stale_temporaries(out, (LAST, FINAL, "config.yaml"))  # left by a SIGKILL mid-write
    resume_logs = resume
    if resume and not distributed.broadcast_object((out / LAST).is_file()):  # rank 0 decides
        if run.is_main:
            print(f"--resume: no checkpoint in {out} yet; training from the start", file=sys.stderr)
        resume = False
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    # Rank r draws from seed + r (rank 0, and a single process, from the seed itself); DDP gives every
    # process rank 0's initial weights.
    seed_everything(cfg.train.seed + run.rank, cfg.train.deterministic)
    device = run.device

    # Rank 0 first: it may generate the built-in dataset, which the others then read.
    with distributed.main_process_first("the data check"):
        if run.is_main:
            train_index, val_index = load_checked_splits(cfg.data)
        else:  # rank 0 has printed the warnings
            train_index, val_index = load_checked_splits(cfg.data, say=_silent)
    train_proposals = load_split_proposals(cfg, "train", train_index)
    hard_negatives = load_hard_negatives(cfg.mining.file, train_index) if cfg.mining.file else None

    model = build_model(cfg, train_index.num_classes).to(device)
    if not resume:  # sampling-free bias and thresholds; a resumed run has them in its checkpoint
        # rank 0 first: it fills the cache of dataset statistics, the others read it
        with distributed.main_process_first("the dataset priors"):
            apply_dataset_priors(
                model, cfg, train_index, train_proposals, run_dir=out if run.is_main else None
            )
    if cfg.mining.start_from and not resume:  # e.g. a bootstrapping round: the previous round's weights
        weights_from = cfg.mining.start_from
        load_model_state(model, load_checkpoint(weights_from, map_location=device)["model"], weights_from)
    model = _with_sync_batchnorm(model, cfg, run)
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
        _check_world_size(ckpt, run, ckpt_path)
        saved_config = saved_config_with_defaults(ckpt["config"])
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
        rng = ckpt["rng_per_rank"][run.rank] if run.distributed else ckpt["rng"]  # this process's
        torch.set_rng_state(rng["torch"].cpu())
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
        start = last_saved = int(ckpt["iteration"])
    if run.is_main:
        with atomic_write(out / "config.yaml") as fh:
            fh.write(dump_yaml(cfg).encode())

    # This process's slice of each global batch (data.batch_size x processes images)
    batches = IterationBatchSampler(
        len(train_index.records),
        cfg.data.batch_size,
        cfg.train.seed,
        start,
        cfg.solver.max_iter,
        rank=run.rank,
        world_size=run.world_size,
    )
    dataset = DetectionDataset(
        train_index,
        train=True,
        hflip_prob=cfg.data.hflip_prob,
        seed=cfg.train.seed,
        proposals=train_proposals,
        hard_negatives=hard_negatives,
        augment=AugmentOptions.from_config(cfg.data),
        # mixup stops for the last data.mixup_off_last_epochs epochs of the batch sampler's epochs
        mixup=MixupOptions.from_config(cfg.data, cfg.solver.max_iter, batches.per_epoch),
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
    logger = MetricLogger(out, resume_from=start if resume_logs else None) if run.is_main else None
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
        payload = {
            "iteration": iteration,
            "model": state,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "faults": faults.state_dict(),
            "rng": rng,
            "config": cfg.to_dict(),
            "categories": categories,
        }
        if run.distributed:  # every rank's RNG state, so that --resume restores each one's
            payload.update(world_size=run.world_size, rng_per_rank=distributed.gather_objects(rng))
        if run.is_main:  # the weights and optimizer state are the same on every rank
            save_checkpoint(path, payload)
        distributed.barrier()  # the others go on once the file is there
        if path.name == LAST:
            last_saved = iteration

    progress = None
    if cfg.train.progress and run.is_main:
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
        if logger is not None:
            logger.close()

    shapes = RandomShapes(tuple(cfg.model.min_size), cfg.model.size_period, cfg.train.seed)
    model.train()
    train_model = _data_parallel(model, run)  # `model` itself in a single process
    iteration = start
    t_start = time.perf_counter()
    with StopRequest() as stop:
        for images, targets in loader:
            images = [img.to(device, non_blocking=True) for img in images]
            targets = _to_device(targets, device)
            input_size = shapes.apply(model, iteration)  # random shapes: this batch's size
            buffers = BufferSnapshot(model)  # a skipped step must not keep what its forward wrote
            with _autocast(cfg.solver.amp, device):
                loss_dict = train_model(images, targets)
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
                if input_size is not None:
                    scalars["input_size"] = float(input_size)
                scalars.update({k: float(v.detach()) for k, v in loss_dict.items()})
                scalars.update(head_diagnostics(model))
                scalars["time_per_iter"] = (time.perf_counter() - t_start) / max(iteration - start, 1)
                scalars = distributed.average_scalars(scalars)  # the mean over the processes
                if logger is not None:
                    logger.log(iteration, scalars)
            if progress is not None:
                progress.set_postfix(loss=f"{float(loss):.3f}", lr=f"{lr:.2g}", refresh=False)
                progress.update(1)
            if iteration % cfg.train.checkpoint_period == 0 and iteration < cfg.solver.max_iter:
                checkpoint(iteration, out / LAST)
            if distributed.any_process(stop.signal is not None):  # all processes stop at this iteration
                checkpoint(iteration, out / LAST)
                close_outputs()
                cause = signal.Signals(stop.signal).name if stop.signal else "a signal to another process"
                raise TrainingInterrupted(
                    f"stopped by {cause} after iteration {iteration}: checkpoint "
                    f"{out / LAST}; continue with: hardmine train ... --resume"
                )
    elapsed = time.perf_counter() - t_start
    close_outputs()
    checkpoint(iteration, out / LAST)
    checkpoint(iteration, out / FINAL)
    done = max(iteration - start, 1)
    result = TrainResult(
        output_dir=out,
        iterations=iteration,
        seconds_per_iter=elapsed / done,
        images_per_second=done * cfg.data.batch_size * run.world_size / max(elapsed, 1e-9),
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
        facts: dict[str, Any] = {
            "iterations": iteration,
            "seconds_per_iter": result.seconds_per_iter,
            "images_per_second": result.images_per_second,
            "peak_memory_mb": result.peak_memory_mb,
            "device": str(device),
            "skipped_steps": faults.skipped,
        }
        if run.distributed:  # images_per_second counts every process; the rest is rank 0's
            facts["world_size"] = run.world_size
        if run.is_main:
            write_metrics_json(out / "metrics.json", metrics, extra=facts)
    return result


#: Keys that may change between a run and its resumption (they do not change the result).
RESUME_FREE_KEYS = {
    ("train", "progress"),
    ("train", "num_threads"),
    ("train", "max_nonfinite_steps"),
    ("data", "num_workers"),
    ("train", "dist_backend"),
    ("output_dir",),
}
#: What a checkpoint needs to resume training from it.
RESUME_KEYS = ("iteration", "model", "optimizer", "scheduler", "rng", "config")


def _silent(text: str) -> None:
    """Swallows messages that another process prints already."""


def _with_sync_batchnorm(model: nn.Module, cfg: Config, run: distributed.ProcessContext) -> nn.Module:
    """`model` with synchronized BatchNorm when `model.sync_bn` asks for it in a distributed run."""
    if not cfg.model.sync_bn:
        return model
    if not run.distributed:
        print("model.sync_bn: one process has nothing to synchronise; BatchNorm unchanged", file=sys.stderr)
        return model
    model, synced = convert_sync_batchnorm(model, run.device)
    if synced == 0 and run.is_main:
        print(
            "model.sync_bn: the model has no trainable BatchNorm layer (pretrained backbones use frozen "
            "BatchNorm); nothing to synchronise",
            file=sys.stderr,
        )
    return model


def _data_parallel(model: nn.Module, run: distributed.ProcessContext) -> nn.Module:
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


def _check_world_size(ckpt: dict[str, Any], run: distributed.ProcessContext, path: Path) -> None:
    """--resume needs as many processes as wrote the checkpoint: the global batch, and with it the
    data order, and the saved per-process RNG states depend on it."""
    saved = int(ckpt.get("world_size", 1))
    if saved != run.world_size:
        raise CheckpointError(
            f"--resume: {path} was written by a run of {saved} process(es), this run has {run.world_size} "
            f"(WORLD_SIZE); the global batch (data.batch_size x processes) and the saved RNG states "
            f"depend on it: resume with {saved} process(es), or train into a new output_dir"
        )
    if run.distributed:
        require_keys(ckpt, ("rng_per_rank",), path)


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
