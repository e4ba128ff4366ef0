"""Where `hardmine compare` trains its runs: child processes on this machine, several at once, or
jobs on a Slurm cluster through submitit.

* `local` (default): `--jobs N` child processes at once. On the CPU each gets cores / N threads
  (`train.num_threads`, unless the run's config sets its own); on GPUs each gets its own device(s)
  (`CUDA_VISIBLE_DEVICES`), `--gpus-per-run K` of them, and a run with K > 1 is a torchrun run of K
  processes (DDP). `--devices` names the GPUs to use (default: every visible one).
* `slurm`: every run is a Slurm job, submitted by submitit (the launcher of DETR, DINOv2 and other
  FAIR codebases: a small pure-Python package, no daemon), with `--partition`, `--gpus-per-run`,
  `--time` and any other submitit Slurm parameter (`--slurm KEY=VALUE`). A job that reaches its
  time limit (or is preempted) stops its run with a checkpoint and is requeued to resume it.
* `submitit-local`: the same jobs through submitit's local executor, on this machine (what the
  tests run, since there is no Slurm here), `--jobs` at once.

A `Launcher` turns a `Launch` (the argv of `hardmine train`, extra environment, the log file) into
a `Handle` that the comparison polls; `make_launcher` checks every option before any training.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from hardmine.config import Config
from hardmine.errors import ConfigError

LAUNCHERS = ("local", "slurm", "submitit-local")
#: Seconds a run gets to stop with a checkpoint after it was asked to (then it is killed).
STOP_WAIT_S = 120
#: Default time limit of a cluster job, in minutes.
DEFAULT_TIME_MIN = 24 * 60
#: Exit status reported for a cluster job that ended without running its run to completion.
JOB_FAILED = 255
#: File of a run folder that names its cluster job (so that a re-run waits for it).
JOB_FILE = "job.json"


@dataclass(frozen=True)
class LaunchOptions:
    """The command line's choices of where runs train (`hardmine compare --help`)."""

    launcher: str = "local"
    jobs: int | None = None
    devices: tuple[int, ...] | None = None
    gpus_per_run: int | None = None
    partition: str | None = None
    time_min: int = DEFAULT_TIME_MIN
    cpus_per_run: int | None = None
    slurm: tuple[str, ...] = ()


@dataclass(frozen=True)
class Slot:
    """What one running run gets: `threads` CPU threads per process (None: the cluster's allocation
    decides) and `gpus` (CUDA_VISIBLE_DEVICES entries on this machine; on a cluster only their
    number counts; a run with several is a torchrun run of one process per GPU)."""

    index: int
    threads: int | None
    gpus: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.gpus and self.gpus[0]:
            return f"GPU {','.join(self.gpus)}"
        if self.gpus:
            return f"{len(self.gpus)} GPU(s)"
        return (
            f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else "its allocation"
        )


@dataclass
class Launch:
    """One child to start: the argv of `hardmine train` (under torchrun for several GPUs), the file
    its output goes to (appended when it resumes) and its run folder."""

    argv: list[str]
    log: Path
    run_dir: Path
    append: bool = False


class Handle(Protocol):
    """A started run: poll it, ask it to stop (with a checkpoint), wait for it."""

    description: str

    def poll(self) -> int | None: ...

    def interrupt(self) -> None: ...

    def wait(self, timeout: float) -> int | None: ...


def train_argv(preset: Path, overrides: Sequence[str], resume: bool, gpus: int) -> list[str]:
    """`python -m hardmine train PRESET OVERRIDES [--resume]`, under torchrun for more than one GPU."""
    head = [sys.executable, "-m", "hardmine"]
    if gpus > 1:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
        head += ["-m", "hardmine"]
    return [*head, "train", str(preset), *overrides, *(["--resume"] if resume else [])]


def visible_gpus() -> list[str]:
    """The CUDA_VISIBLE_DEVICES entries of the GPUs this process sees (their indices when unset)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if "CUDA_VISIBLE_DEVICES" in os.environ else [str(i) for i in range(count)]


def uses_gpu(configs: Sequence[Config], gpus: Sequence[str]) -> bool:
    """Whether the runs train on GPUs here: train.device is cuda, or auto with a GPU visible."""
    return any(c.train.device.startswith("cuda") or (c.train.device == "auto" and gpus) for c in configs)


def local_slots(
    options: LaunchOptions, configs: Sequence[Config], cores: int, gpus: Sequence[str]
) -> list[Slot]:
    """The slots of `--jobs` runs at once on this machine (checked: errors name the option)."""
    if options.jobs is not None and options.jobs < 1:
        raise ConfigError(f"--jobs {options.jobs}: the number of runs at once must be >= 1")
    if not uses_gpu(configs, gpus):
        for flag, value in (("--devices", options.devices), ("--gpus-per-run", options.gpus_per_run)):
            if value is not None:
                reason = "no GPU is visible" if not gpus else "the runs train on the CPU (train.device=cpu)"
                raise ConfigError(f"{flag}: {reason}")
        jobs = options.jobs or 1
        return [Slot(i, max(1, cores // jobs)) for i in range(jobs)]
    pinned = sorted({c.train.device for c in configs if c.train.device.startswith("cuda:")})
    if pinned:
        raise ConfigError(
            f"train.device={pinned[0]} pins a GPU, but the comparison gives each run its own "
            "(--devices); use train.device=auto or cuda"
        )
    devices = list(range(len(gpus))) if options.devices is None else list(options.devices)
    if not devices:
        raise ConfigError("--devices: name at least one GPU")
    bad = [d for d in devices if not 0 <= d < len(gpus)]
    if bad or len(set(devices)) != len(devices):
        raise ConfigError(
            f"--devices {','.join(map(str, devices))}: {len(gpus)} GPU(s) are visible "
            f"(0..{len(gpus) - 1}), each may be named once"
        )
    per_run = options.gpus_per_run or 1
    if per_run < 1:
        raise ConfigError(f"--gpus-per-run {per_run}: must be >= 1")
    if per_run > len(devices):
        raise ConfigError(f"--gpus-per-run {per_run}: only {len(devices)} GPU(s) to use (--devices)")
    groups = len(devices) // per_run
    jobs = options.jobs or groups
    if jobs > groups:
        raise ConfigError(
            f"--jobs {jobs} with --gpus-per-run {per_run} needs {jobs * per_run} GPUs; "
            f"{len(devices)} to use (--devices)"
        )
    threads = max(1, cores // (jobs * per_run))  # per process: a run has one per GPU
    return [
        Slot(i, threads, tuple(gpus[d] for d in devices[i * per_run : (i + 1) * per_run]))
        for i in range(jobs)
    ]


class LocalHandle:
    """A child process in its own session: a Ctrl-C reaches the comparison only, which then asks
    the child once to stop (SIGTERM: it checkpoints after its current iteration; unlike SIGINT it
    is not ignored by a child of a shell's background job)."""

    def __init__(self, launch: Launch, slot: Slot) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if slot.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(slot.gpus)
        self.log = launch.log.open("a" if launch.append else "w")
        self.process = subprocess.Popen(
            launch.argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.description = f"pid {self.process.pid}"

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None:
            self.log.close()
        return code

    def interrupt(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        return self.process.returncode


class Launcher:
    """Starts runs; `capacity` of them at once (None: no limit, a cluster queues them)."""

    name = "local"
    capacity: int | None

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots
        self.capacity = len(slots)

    def slot(self, index: int) -> Slot:
        return self.slots[index]

    def start(self, launch: Launch, slot: Slot) -> Handle:
        return LocalHandle(launch, slot)

    def attach(self, run_dir: Path) -> Handle | None:
        """A job of an earlier invocation that is still running for `run_dir` (clusters only)."""
        return None

    def describe(self) -> str:
        first = self.slots[0]
        return f"{self.capacity} run{'s' if self.capacity != 1 else ''} at once, each on {first.describe()}"


# --- submitit ------------------------------------------------------------------------------------


def _ignore_usr2() -> None:
    """In the training child: ignore SIGUSR2, Slurm's (submitit's) warning before a time limit,
    whose default action would kill it without a checkpoint; the job stops it with SIGTERM."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


@dataclass
class RunJob:
    """What a cluster job runs: one `hardmine train` child (its output appended to `log`), and on a
    time limit or preemption (submitit calls `checkpoint`) a stop with a checkpoint and a resubmission
    that resumes it."""

    argv: list[str]
    log: str
    cwd: str
    process: Any = field(default=None, repr=False, compare=False)

    def __call__(self) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                preexec_fn=_ignore_usr2,
            )
            try:
                return self.process.wait()
            except KeyboardInterrupt:  # the job was cancelled: stop the run with a checkpoint
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout=STOP_WAIT_S)
                raise

    def checkpoint(self) -> Any:
        """Stop the running child with a checkpoint; the resubmitted job resumes it."""
        from submitit.helpers import DelayedSubmission

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_WAIT_S)
        argv = self.argv if "--resume" in self.argv else [*self.argv, "--resume"]
        return DelayedSubmission(RunJob(argv, self.log, self.cwd))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "process": None}


class SubmititHandle:
    """A submitit job: done when its state says so; its result is the run's exit status."""

    def __init__(self, job: Any, log: Path, cancel_on_interrupt: bool) -> None:
        self.job, self.log, self.cancel_on_interrupt = job, log, cancel_on_interrupt
        self.description = f"job {job.job_id}"

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception as exc:  # the job itself failed (killed, time limit, ...): say why in the log
            with contextlib.suppress(OSError), self.log.open("a") as fh:
                fh.write(
                    f"\n{self.description} ended without finishing the run: {type(exc).__name__}: {exc}\n"
                )
            return JOB_FAILED

    def interrupt(self) -> None:
        if self.cancel_on_interrupt:
            with contextlib.suppress(Exception):
                self.job.cancel()

    def wait(self, timeout: float) -> int | None:
        return None  # a cluster job goes on (or is cancelled) without the comparison waiting for it


class SubmititLauncher(Launcher):
    """Runs as submitit jobs: on Slurm (`slurm`) or with submitit's local executor (`submitit-local`)."""

    def __init__(self, options: LaunchOptions, folder: Path, local_slots: list[Slot] | None) -> None:
        import submitit

        self.name = options.launcher
        self.options = options
        self.folder = folder
        per_run = options.gpus_per_run or 0
        if local_slots is not None:  # submitit-local: --jobs at once on this machine
            super().__init__(local_slots)
            self.executor = submitit.LocalExecutor(folder=folder)
            self.executor.update_parameters(timeout_min=options.time_min, tasks_per_node=1)
        else:
            self.slots, self.capacity = [], None
            try:
                self.executor = submitit.SlurmExecutor(folder=folder)
            except RuntimeError as exc:  # no srun: not a Slurm machine
                raise ConfigError(f"--launcher slurm: {exc}") from None
            params: dict[str, Any] = {
                "time": options.time_min,
                "gpus_per_node": per_run,
                "ntasks_per_node": 1,
                "job_name": "hardmine",
            }
            if options.partition:
                params["partition"] = options.partition
            if options.cpus_per_run:
                params["cpus_per_task"] = options.cpus_per_run
            params.update(_slurm_parameters(options.slurm))
            try:
                self.executor.update_parameters(**params)
            except (ValueError, NameError, TypeError) as exc:
                raise ConfigError(f"--slurm: {exc}") from None

    def slot(self, index: int) -> Slot:
        if self.capacity is not None:
            return self.slots[index]
        per_run = self.options.gpus_per_run or 0
        threads = self.options.cpus_per_run // max(per_run, 1) if self.options.cpus_per_run else None
        return Slot(index, threads, ("",) * per_run)

    def start(self, launch: Launch, slot: Slot) -> Handle:
        if self.capacity is not None:  # local executor: this slot's GPUs
            gpus = [int(g) for g in slot.gpus if g.isdigit()]
            self.executor.update_parameters(gpus_per_node=len(slot.gpus), visible_gpus=tuple(gpus))
        if not launch.append:
            launch.log.write_text("")
        job = self.executor.submit(RunJob(launch.argv, str(launch.log), os.getcwd()))
        (launch.run_dir / JOB_FILE).write_text(
            json.dumps({"launcher": self.name, "job_id": str(job.job_id), "folder": str(self.folder)}) + "\n"
        )
        return SubmititHandle(job, launch.log, cancel_on_interrupt=self.name == "submitit-local")

    def attach(self, run_dir: Path) -> Handle | None:
        if self.name != "slurm":
            return None
        try:
            record = json.loads((run_dir / JOB_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if record.get("launcher") != "slurm":
            return None
        import submitit

        job = submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"])
        if job.done():
            return None
        return SubmititHandle(job, run_dir / "train.log", cancel_on_interrupt=False)

    def describe(self) -> str:
        if self.name == "slurm":
            where = (
                f"partition {self.options.partition}" if self.options.partition else "the default partition"
            )
            gpus = self.options.gpus_per_run or 0
            return f"one Slurm job per run on {where} ({gpus} GPU(s) each), logs in {self.folder}"
        return f"submitit's local executor, {super().describe()}"


def _slurm_parameters(items: Sequence[str]) -> dict[str, Any]:
    """`--slurm KEY=VALUE` items as submitit SlurmExecutor parameters (numbers as numbers)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm {item!r}: expected KEY=VALUE, e.g. account=myproject")
        params[key] = int(value) if value.isdigit() else value
    return params


def check_slurm(partition: str | None) -> None:
    """Fail early when no Slurm cluster can be reached from here, or the partition does not exist."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        raise ConfigError(
            "--launcher slurm: sinfo / sbatch are not on PATH; run the comparison on a machine that "
            "submits to your Slurm cluster (a login node)"
        )
    try:
        done = subprocess.run(
            ["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"--launcher slurm: cannot reach the cluster: sinfo: {exc}") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise ConfigError(f"--launcher slurm: cannot reach the cluster: sinfo says: {said}")
    partitions = [p.strip().rstrip("*") for p in done.stdout.split() if p.strip()]
    if partition and partition not in partitions:
        raise ConfigError(f"--partition {partition}: no such partition; partitions: {', '.join(partitions)}")


def make_launcher(options: LaunchOptions, configs: Sequence[Config], out: Path) -> Launcher:
    """The launcher the options ask for, with every option checked before any training."""
    if options.launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {options.launcher!r}: choose from {', '.join(LAUNCHERS)}")
    if options.launcher != "slurm":
        for flag, value in (("--partition", options.partition), ("--slurm", options.slurm or None)):
            if value is not None:
                raise ConfigError(f"{flag}: only with --launcher slurm")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if options.launcher == "local":
        return Launcher(local_slots(options, configs, cores, visible_gpus()))
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--launcher {options.launcher} needs submitit: pip install 'hardmine[cluster]'"
        ) from None
    if options.launcher == "submitit-local":
        return SubmititLauncher(
            options, out / "cluster", local_slots(options, configs, cores, visible_gpus())
        )
    if options.jobs is not None or options.devices is not None:
        raise ConfigError(
            "--jobs / --devices: with --launcher slurm every run is a job; Slurm decides when and where"
        )
    if options.gpus_per_run is not None and options.gpus_per_run < 0:
        raise ConfigError(f"--gpus-per-run {options.gpus_per_run}: must be >= 0")
    check_slurm(options.partition)
    return SubmititLauncher(options, out / "cluster", None)
