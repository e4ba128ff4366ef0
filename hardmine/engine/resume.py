"""What `--resume` checks before a run continues from its `checkpoint_last.pt`.

A run resumes only from a checkpoint that holds the whole training state (`RESUME_KEYS`), was
written by as many processes as this run has (the global batch, the data order and the saved
per-process RNG states depend on it), and was written with the same config, apart from the keys
that do not change the result (`RESUME_FREE_KEYS`). Keys added to the config since the checkpoint
was written count as their defaults. Every refusal is a `CheckpointError` naming what differs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hardmine import distributed
from hardmine.config import Config, saved_config_with_defaults
from hardmine.engine.checkpoint import LAST, require_keys
from hardmine.errors import CheckpointError

#: Keys that may change between a run and its resumption (they do not change the weights).
RESUME_FREE_KEYS = {
    ("train", "progress"),
    ("train", "num_threads"),
    ("train", "max_nonfinite_steps"),
    ("train", "eval_period"),
    ("train", "stop_at"),
    ("data", "num_workers"),
    ("train", "dist_backend"),
    ("output_dir",),
}
#: What a checkpoint needs to resume training from it.
RESUME_KEYS = ("iteration", "model", "optimizer", "scheduler", "rng", "config")


def checkpoint_to_resume(out: Path, resume: bool, run: distributed.ProcessContext) -> Path | None:
    """`out/checkpoint_last.pt` when `resume` asks for it and it exists (rank 0 decides for every
    process); None otherwise, saying so when `resume` found no checkpoint (e.g. after a SIGKILL
    before the first one): the run then starts from the beginning."""
    if not resume:
        return None
    path = out / LAST
    if distributed.broadcast_object(path.is_file()):
        return path
    if run.is_main:
        print(f"--resume: no checkpoint in {out} yet; training from the start", file=sys.stderr)
    return None


def check_resumable(ckpt: dict[str, Any], cfg: Config, run: distributed.ProcessContext, path: Path) -> None:
    """Refuse a checkpoint that lacks training state, was written by another number of processes or
    with another config (`RESUME_FREE_KEYS` aside)."""
    require_keys(ckpt, RESUME_KEYS, path)
    _check_world_size(ckpt, run, path)
    saved = saved_config_with_defaults(ckpt["config"])
    diff = config_diff(resume_relevant(saved), resume_relevant(cfg.to_dict()))
    if diff:
        raise CheckpointError(f"--resume: {path} was written with a different config: {diff}")


def kept_checkpoint(path: Path, iteration: int | None) -> str:
    """What a run stopped by a fault leaves to resume from (`iteration`: that of the checkpoint
    this run wrote or resumed from, None if neither)."""
    if iteration is None and not path.is_file():
        return "No checkpoint had been written yet."
    at = f" (iteration {iteration})" if iteration is not None else ""
    return (
        f"The last checkpoint, {path}{at}, is kept as it was; fix the cause (data, solver.lr, "
        "solver.warmup_iters, solver.clip_grad_norm) and train again, or `--resume` it"
    )


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    """`key: checkpoint OLD, now NEW` for every dotted key whose value differs, joined by '; '."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(a, dict) and isinstance(b, dict):
            sub = config_diff(a, b, dotted)
            if sub:
                diffs.append(sub)
        elif a != b:
            diffs.append(f"{dotted}: checkpoint {a!r}, now {b!r}")
    return "; ".join(diffs)


def _check_world_size(ckpt: dict[str, Any], run: distributed.ProcessContext, path: Path) -> None:
    saved = int(ckpt.get("world_size", 1))
    if saved != run.world_size:
        raise CheckpointError(
            f"--resume: {path} was written by a run of {saved} process(es), this run has {run.world_size} "
            f"(WORLD_SIZE); the global batch (data.batch_size x processes) and the saved RNG states "
            f"depend on it: resume with {saved} process(es), or train into a new output_dir"
        )
    if run.distributed:
        require_keys(ckpt, ("rng_per_rank",), path)


def resume_relevant(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without the `RESUME_FREE_KEYS`: what decides a run's weights (`hardmine compare`
    reuses a finished run, or resumes a stopped one, when this part of its config is unchanged)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for key in RESUME_FREE_KEYS:
        node = out
        for part in key[:-1]:
            node = node.get(part, {})
        node.pop(key[-1], None)
    return out
