"""Where the runs of a comparison train: the slots of --jobs on CPUs and GPUs, every bad option
refused before any training, the torchrun command of a multi-GPU run, the Slurm checks (with fake
sinfo / sbatch commands) and the cluster job that stops its run with a checkpoint on a time limit."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from hardmine.config import load_config
from hardmine.errors import ConfigError
from hardmine.report.launch import (
    LaunchOptions,
    RunJob,
    check_slurm,
    local_slots,
    make_launcher,
    train_argv,
)

CPU = [load_config(None, ["train.device=auto"])]


def test_jobs_share_the_cpu_cores():
    assert [(s.threads, s.gpus) for s in local_slots(LaunchOptions(), CPU, cores=2, gpus=[])] == [(2, ())]
    two = local_slots(LaunchOptions(jobs=2), CPU, cores=2, gpus=[])
    assert [(s.index, s.threads) for s in two] == [(0, 1), (1, 1)]
    assert two[0].describe() == "1 thread"
    assert [s.threads for s in local_slots(LaunchOptions(jobs=4), CPU, cores=2, gpus=[])] == [1] * 4
    with pytest.raises(ConfigError, match="--jobs 0: the number of runs at once must be >= 1"):
        local_slots(LaunchOptions(jobs=0), CPU, cores=2, gpus=[])
    with pytest.raises(ConfigError, match="--gpus-per-run: no GPU is visible"):
        local_slots(LaunchOptions(gpus_per_run=1), CPU, cores=2, gpus=[])
    on_cpu = [load_config(None, ["train.device=cpu"])]
    with pytest.raises(ConfigError, match=r"--devices: the runs train on the CPU \(train.device=cpu\)"):
        local_slots(LaunchOptions(devices=(0,)), on_cpu, cores=2, gpus=["0"])


def test_gpu_runs_get_their_own_devices():
    gpus = ["4", "5", "6", "7"]  # CUDA_VISIBLE_DEVICES=4,5,6,7: indices 0..3
    slots = local_slots(LaunchOptions(), CPU, cores=16, gpus=gpus)
    assert [s.gpus for s in slots] == [("4",), ("5",), ("6",), ("7",)] and slots[0].threads == 4
    pairs = local_slots(LaunchOptions(gpus_per_run=2), CPU, cores=16, gpus=gpus)
    assert [s.gpus for s in pairs] == [("4", "5"), ("6", "7")] and pairs[1].describe() == "GPU 6,7"
    assert pairs[0].threads == 4  # 16 cores for 2 runs of 2 processes
    chosen = local_slots(LaunchOptions(devices=(3, 1), jobs=1), CPU, cores=16, gpus=gpus)
    assert [s.gpus for s in chosen] == [("7",)]
    for options, message in (
        (LaunchOptions(gpus_per_run=8), "--gpus-per-run 8: only 4 GPU"),
        (LaunchOptions(jobs=3, gpus_per_run=2), "--jobs 3 with --gpus-per-run 2 needs 6 GPUs; 4 to use"),
        (LaunchOptions(devices=(0, 4)), r"--devices 0,4: 4 GPU\(s\) are visible \(0..3\)"),
        (LaunchOptions(devices=(1, 1)), "each may be named once"),
    ):
        with pytest.raises(ConfigError, match=message):
            local_slots(options, CPU, cores=16, gpus=gpus)
    pinned = [load_config(None, ["train.device=cuda:1"])]
    with pytest.raises(ConfigError, match="train.device=cuda:1 pins a GPU"):
        local_slots(LaunchOptions(), pinned, cores=16, gpus=gpus)


def test_a_multi_gpu_run_is_a_torchrun_run():
    assert train_argv(Path("p.yaml"), ["a=1"], False, gpus=1) == [
        sys.executable,
        "-m",
        "hardmine",
        "train",
        "p.yaml",
        "a=1",
    ]
    argv = train_argv(Path("p.yaml"), ["a=1"], True, gpus=4)
    assert argv[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "hardmine",
        "train",
        "p.yaml",
        "a=1",
        "--resume",
    ]


def fake_commands(folder: Path, sinfo: str) -> str:
    """A PATH with fake `sinfo` (running `sinfo`, a shell snippet) and `sbatch` before the real one."""
    folder.mkdir()
    for name, body in (("sinfo", sinfo), ("sbatch", "exit 1")):
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_an_unreachable_cluster_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo, no sbatch
    with pytest.raises(ConfigError, match="sinfo / sbatch are not on PATH"):
        check_slurm(None)
    down = 'echo "slurm_load_partitions: Unable to contact slurm controller (connect failure)" >&2; exit 1'
    monkeypatch.setenv("PATH", fake_commands(tmp_path / "down", down))
    with pytest.raises(
        ConfigError, match="cannot reach the cluster: sinfo says: slurm_load_partitions: Unable"
    ):
        check_slurm("gpu")
    monkeypatch.setenv("PATH", fake_commands(tmp_path / "up", 'printf "debug*\\ngpu\\n"'))
    check_slurm("gpu")
    with pytest.raises(ConfigError, match="--partition a100: no such partition; partitions: debug, gpu"):
        check_slurm("a100")
    # sinfo answers, but this machine has no srun to run jobs with: submitit says so, before any training
    with pytest.raises(ConfigError, match='--launcher slurm: Could not detect "srun"'):
        make_launcher(LaunchOptions(launcher="slurm", partition="gpu"), CPU, tmp_path / "out")


def test_slurm_options_need_the_slurm_launcher(tmp_path):
    for options, message in (
        (LaunchOptions(partition="gpu"), "--partition: only with --launcher slurm"),
        (LaunchOptions(slurm=("account=a",)), "--slurm: only with --launcher slurm"),
        (LaunchOptions(launcher="pbs"), "--launcher 'pbs': choose from local, slurm, submitit-local"),
        (LaunchOptions(launcher="slurm", jobs=2), "--jobs / --devices: with --launcher slurm"),
    ):
        with pytest.raises(ConfigError, match=message):
            make_launcher(options, CPU, tmp_path)


CHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))  # as hardmine train: stop with a checkpoint
print("started", flush=True)
while True:
    time.sleep(0.05)
"""


def test_a_job_at_its_time_limit_stops_its_run_and_resubmits_it_to_resume(tmp_path):
    log = tmp_path / "train.log"
    job = RunJob([sys.executable, "-c", CHILD, "train.seed=0"], str(log), str(tmp_path))
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(job()))
    worker.start()
    for _ in range(400):
        if "started" in (log.read_text() if log.exists() else ""):
            break
        time.sleep(0.05)
    os.kill(job.process.pid, signal.SIGUSR2)  # Slurm's warning signal: the run ignores it
    time.sleep(0.3)
    assert job.process.poll() is None
    resubmitted = job.checkpoint()  # what submitit calls on the warning
    worker.join(timeout=30)
    assert result == [7]  # the run stopped as on SIGTERM (with its checkpoint)
    resumed = resubmitted.function
    assert resumed.argv == [*job.argv, "--resume"] and resumed.log == job.log
    assert pickle.loads(pickle.dumps(job)).process is None  # what submitit pickles holds no process
