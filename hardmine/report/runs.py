"""The runs of a comparison and what their folders say about them.

A run is a method (`RunSpec`) with one seed, trained into `OUT/runs/SLUG-seedN/`: an ordinary run
folder of `hardmine train` (config.yaml, log.csv, metrics.json, pr50.json, eval_history.json,
detections/, checkpoints) plus `train.log` (the process's output) and `run.json` (command, exit
status, wall time, where it ran, library versions). A run is the same run as before when the part
of its config that decides its weights (`engine.resume.resume_relevant`: everything but the
thread count, the evaluation period, train.stop_at, ...) is unchanged; then a finished run is
reused and a stopped one resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from hardmine.config import Config, saved_config_with_defaults
from hardmine.engine.checkpoint import FINAL, LAST
from hardmine.engine.coco_eval import PR_CURVE_FILE
from hardmine.engine.evaluation import DETECTIONS_DIR, EVAL_HISTORY_FILE, read_eval_history
from hardmine.engine.resume import resume_relevant
from hardmine.report.launch import JOB_FILE
from hardmine.report.spec import CompareSpec, RunSpec, display_path

#: Packages whose versions are recorded with every run.
VERSIONED = ("hardmine", "torch", "torchvision", "numpy", "faster-coco-eval", "pillow", "matplotlib")
#: What a run folder keeps from an earlier attempt that must not outlive a fresh start: stale
#: results would make a crashed run look finished, a stale checkpoint would be resumed.
STALE = (
    "metrics.json",
    PR_CURVE_FILE,
    EVAL_HISTORY_FILE,
    DETECTIONS_DIR,
    "log.csv",
    LAST,
    FINAL,
    "tensorboard",
    "run.json",
    JOB_FILE,
)


@dataclass
class PlannedRun:
    """One run of the comparison: a method (`run`) with one seed, its overrides and config."""

    run: RunSpec
    seed: int
    run_dir: Path
    overrides: list[str]
    cfg: Config

    @property
    def label(self) -> str:
        return f"{self.run.name} (seed {self.seed})"

    @property
    def budget(self) -> int:
        return self.cfg.solver.max_iter

    def command(self, extra: list[str] | tuple[str, ...] = ()) -> str:
        """The shell command that reproduces this run on its own (`extra`: the launch's own
        overrides, e.g. its thread count)."""
        return shlex.join(["hardmine", "train", display_path(self.run.preset), *self.overrides, *extra])

    def saved_config(self) -> dict[str, Any] | None:
        """The config.yaml the run's folder holds, None if there is none (or it is unreadable)."""
        path = self.run_dir / "config.yaml"
        if not path.is_file():
            return None
        try:
            saved = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            return None
        return saved if isinstance(saved, dict) else None

    def same_run(self) -> bool:
        """The folder holds this run: its saved config decides the weights as this config does (keys
        added to hardmine since it was saved count with their defaults, as --resume counts them)."""
        saved = self.saved_config()
        if saved is None:
            return False
        return resume_relevant(saved_config_with_defaults(saved)) == resume_relevant(self.cfg.to_dict())

    def finished(self) -> bool:
        """Trained and evaluated before as this run: nothing to do."""
        return (self.run_dir / "metrics.json").is_file() and self.same_run()

    def resumable(self) -> bool:
        """Stopped half-way as this run: `--resume` continues from the last checkpoint."""
        return (self.run_dir / LAST).is_file() and self.same_run()

    def evaluations(self) -> dict[int, dict[str, Any]]:
        """The run's evaluations so far (eval_history.json) by iteration; {} without one."""
        with contextlib.suppress(OSError, json.JSONDecodeError, KeyError, TypeError):
            return {int(e["iteration"]): e for e in read_eval_history(self.run_dir / EVAL_HISTORY_FILE)}
        return {}

    def reached(self, iteration: int) -> bool:
        """Trained to `iteration` as this run and evaluated there (or finished)."""
        return self.finished() or (iteration in self.evaluations() and self.same_run())

    def trained_iterations(self) -> int:
        """Iterations done so far: the last row of log.csv of a run that can go on, else 0."""
        return last_logged_iteration(self.run_dir / "log.csv") if self.resumable() else 0


def plan_runs(spec: CompareSpec, out: Path) -> list[PlannedRun]:
    """Every (run, seed) of `spec`, method by method, with its config (validated) and folder."""
    planned = []
    for run in spec.runs:
        for seed in spec.seeds:
            run_dir = out / "runs" / f"{run.slug}-seed{seed}"
            overrides = spec.run_overrides(run, seed, run_dir)
            planned.append(PlannedRun(run, seed, run_dir, overrides, spec.run_config(run, seed, run_dir)))
    return planned


def last_logged_iteration(log_csv: Path) -> int:
    """The iteration of the last row of a run's log.csv (0 if none yet)."""
    with contextlib.suppress(OSError):
        lines = log_csv.read_text().strip().splitlines()
        if len(lines) > 1:
            first = lines[-1].split(",", 1)[0]
            if first.isdigit():
                return int(first)
    return 0


def clear_stale(run_dir: Path) -> None:
    """Remove what an earlier attempt left (`STALE`) before a run starts from scratch."""
    for name in STALE:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def library_versions() -> dict[str, str]:
    """Python, the platform and the installed versions of the packages that decide a result."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def machine_description() -> str:
    """CPU model and core count, plus the GPU when CUDA is available: where the timings come from."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def read_record(run_dir: Path) -> dict[str, Any]:
    """RUN_DIR/run.json ({} if absent or unreadable)."""
    with contextlib.suppress(OSError, json.JSONDecodeError):
        record = json.loads((run_dir / "run.json").read_text())
        if isinstance(record, dict):
            return record
    return {}


def write_record(planned: PlannedRun, facts: dict[str, Any], wall: float) -> None:
    """RUN_DIR/run.json: how the run was trained (`facts`: command, argv, exit status, start, where
    it ran). `wall` adds up over the attempts of a run that resumed (a fresh start clears run.json)."""
    earlier = read_record(planned.run_dir).get("wall_s")
    if isinstance(earlier, int | float):
        wall += float(earlier)
    record = {
        "name": planned.run.name,
        "family": planned.run.family,
        "seed": planned.seed,
        **facts,
        "wall_s": round(wall, 1),
        "versions": library_versions(),
        "machine": machine_description(),
    }
    (planned.run_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
