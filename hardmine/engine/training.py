"""One training run as a `Config` says: `train(cfg, resume)`.

It validates the config, checks and loads the data (`train_data`), builds the model (dataset
priors, `mining.start_from`, synchronized BatchNorm), the optimizer and schedule, resumes the
training state when asked (`resume`), writes config.yaml, and runs the `Trainer` with the hooks
of `training_hooks`. Its outputs in `output_dir`: config.yaml, log.csv, tensorboard/,
checkpoint_last.pt, model_final.pt, metrics.json, pr50.json, eval_history.json (train.eval_period),
detections/ (the detections of every evaluation), dataset_priors.json (sampling-free runs).

Started by torchrun (WORLD_SIZE > 1), this process is one of a distributed run: it trains on its
slice of every global batch in a DistributedDataParallel model, and rank 0 writes the run's files
(docs/distributed.md). A single process never touches torch.distributed. Bootstrapping
(`mining.rounds`) is `engine.bootstrap.train_rounds`, which calls `train` once per round.
"""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hardmine import distributed
from hardmine.config import Config, dump_yaml, validate
from hardmine.engine.checkpoint import (
    FINAL,
    LAST,
    atomic_write,
    load_checkpoint,
    load_model_state,
    remove_stale_temporaries,
)
from hardmine.engine.evaluation import EVAL_HISTORY_FILE
from hardmine.engine.hooks import (
    Evaluation,
    MetricLogging,
    PeriodicCheckpoint,
    ProgressBar,
    SignalStop,
    StopAt,
)
from hardmine.engine.inference import resolve_device
from hardmine.engine.proposals import load_split_proposals
from hardmine.engine.resume import check_resumable, checkpoint_to_resume
from hardmine.engine.schedule import build_optimizer, build_scheduler
from hardmine.engine.shapes import RandomShapes
from hardmine.engine.sync_bn import convert_sync_batchnorm
from hardmine.engine.tasks import task_of
from hardmine.engine.train_data import TrainingData, load_training_data, training_loader
from hardmine.engine.trainer import Hook, Trainer, TrainResult
from hardmine.errors import ConfigError
from hardmine.models.build import build_model


def train(cfg: Config, resume: bool = False) -> TrainResult:
    """Train as `cfg` says; write checkpoints, logs and (at the end) metrics under `cfg.output_dir`.

    `resume` continues from `checkpoint_last.pt` there (or starts from scratch when there is none
    yet, e.g. after a SIGKILL before the first checkpoint); docs/fault-handling.md says what else
    is detected and recovered. The process group of a torchrun run lives as long as this call.
    """
    validate(cfg)
    if cfg.mining.rounds > 0:
        raise ConfigError(
            f"mining.rounds={cfg.mining.rounds}: bootstrapping rounds are engine.bootstrap.train_rounds "
            "(hardmine train chooses it); train() is one run"
        )
    with distributed.process_group(cfg.train.dist_backend, resolve_device(cfg.train.device)) as run:
        return _train_process(cfg, resume, run)


def _train_process(cfg: Config, resume: bool, run: distributed.ProcessContext) -> TrainResult:
    """`train` in this process: all of it in a single-process run, one rank's part of a distributed one."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if run.is_main:  # left by a SIGKILL mid-write
        remove_stale_temporaries(out, (LAST, FINAL, "config.yaml", EVAL_HISTORY_FILE))
    checkpoint = checkpoint_to_resume(out, resume, run)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    # Rank r draws from seed + r (rank 0, and a single process, from the seed itself); DDP gives every
    # process rank 0's initial weights.
    seed_everything(cfg.train.seed + run.rank, cfg.train.deterministic)
    data = load_training_data(cfg, run)
    model = _build_model(cfg, data, run, fresh=checkpoint is None)
    optimizer = build_optimizer(model, cfg.solver)
    trainer = Trainer(
        model,
        optimizer,
        build_scheduler(optimizer, cfg.solver),
        run=run,
        out_dir=out,
        max_iter=cfg.solver.max_iter,
        batch_size=cfg.data.batch_size,
        amp=cfg.solver.amp,
        clip_grad_norm=cfg.solver.clip_grad_norm,
        shapes=RandomShapes(tuple(cfg.model.min_size), cfg.model.size_period, cfg.train.seed),
        max_nonfinite_steps=cfg.train.max_nonfinite_steps,
        checkpoint_extras={
            "config": cfg.to_dict(),
            "categories": [{"id": c.id, "name": c.name, "label": c.label} for c in data.train.categories],
        },
    )
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint, map_location=run.device)
        check_resumable(ckpt, cfg, run, checkpoint)
        trainer.load_state_dict(ckpt, checkpoint)
    if run.is_main:
        with atomic_write(out / "config.yaml") as fh:
            fh.write(dump_yaml(cfg).encode())
    loader = training_loader(cfg, data, trainer.iteration, run)
    # logs and the evaluation history continue after the resumed iteration (0 without a checkpoint)
    return trainer.train(loader, training_hooks(cfg, trainer, data, trainer.iteration if resume else None))


def training_hooks(cfg: Config, trainer: Trainer, data: TrainingData, resume_from: int | None) -> list[Hook]:
    """The hooks of a run, in the order they run after each step (`engine.hooks`)."""

    @functools.cache
    def val_proposals() -> dict[int, Tensor] | None:  # Fast R-CNN's; read when first evaluating
        return load_split_proposals(cfg, "val", data.val)

    task = task_of(cfg)

    def evaluate(pr_curve_path: Path | None, detections_path: Path | None) -> dict[str, float]:
        return task.evaluate(
            trainer.model, cfg, data.val, trainer.run.device, val_proposals(), pr_curve_path, detections_path
        )

    evaluation = Evaluation(
        evaluate,
        trainer.out_dir,
        cfg.train.eval_period,
        cfg.train.eval_at_end,
        resume_from,
        logged=task.logged_metrics,
    )
    hooks: list[Hook] = [
        evaluation,
        MetricLogging(trainer.out_dir, cfg.train.log_period, resume_from, evaluation.columns),
    ]
    if cfg.train.progress:
        hooks.append(ProgressBar())
    hooks.append(PeriodicCheckpoint(cfg.train.checkpoint_period))
    if 0 < cfg.train.stop_at < cfg.solver.max_iter:
        hooks.append(StopAt(cfg.train.stop_at))
    hooks.append(SignalStop())
    return hooks


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _build_model(cfg: Config, data: TrainingData, run: distributed.ProcessContext, fresh: bool) -> nn.Module:
    """The model on this process's device; a `fresh` one (not resumed) with the sampling-free
    priors and the `mining.start_from` weights; synchronized BatchNorm if asked for; channels-last
    weights unless `solver.channels_last` is off."""
    model = build_model(cfg, data.train.num_classes).to(run.device)
    if cfg.solver.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fresh:  # a resumed run has these in its checkpoint
        # sampling-free bias and thresholds (segmentation: class weights); rank 0 first: it fills
        # the cache of dataset statistics
        with distributed.main_process_first("the dataset priors"):
            run_dir = Path(cfg.output_dir) if run.is_main else None
            task_of(cfg).prepare(model, cfg, data.train, data.proposals, run_dir)
        if cfg.mining.start_from:  # e.g. a bootstrapping round: the previous round's weights
            weights_from = cfg.mining.start_from
            load_model_state(
                model, load_checkpoint(weights_from, map_location=run.device)["model"], weights_from
            )
    return _with_sync_batchnorm(model, cfg, run)


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
