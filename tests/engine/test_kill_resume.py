"""SIGKILL `python -m hardmine train` at several points; `--resume` must end with exactly the weights of
an uninterrupted run (CPU, deterministic) and lose at most the iterations since the last checkpoint."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hardmine.config import load_config
from hardmine.engine import training
from hardmine.engine.checkpoint import load_checkpoint

MAX_ITER, PERIOD = 6, 2

#: Runs `python -m hardmine ARGS...` with a fault injected: SIGKILL inside the Nth optimizer step
#: (after the backward pass, before the update) or halfway through writing the Nth checkpoint; or
#: N ms of sleep in every step, so that a kill from outside surely finds the run still going.
KILLER = r"""
import io, os, runpy, signal, sys
import torch

phase, n = sys.argv[1], int(sys.argv[2])
sys.argv = ["hardmine", *sys.argv[3:]]
calls = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if phase == "step":
    real_step = torch.optim.SGD.step
    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            die()
        return real_step(self, *args, **kwargs)
    torch.optim.SGD.step = step
elif phase == "save":
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            die()
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
elif phase == "slow":
    import time
    real_step = torch.optim.SGD.step
    def step(self, *args, **kwargs):
        time.sleep(n / 1000)
        return real_step(self, *args, **kwargs)
    torch.optim.SGD.step = step
runpy.run_module("hardmine", run_name="__main__", alter_sys=True)
"""

#: name -> (how the run is killed, the iteration its last checkpoint must hold afterwards). A kill
#: before the first checkpoint leaves nothing to resume from: tests/engine/test_resume.py covers
#: `--resume` without a checkpoint in-process, sparing a fourth start of Python and torch here.
KILLS = {
    "mid-iteration after a checkpoint": (["step", "3"], 2),
    "while writing a checkpoint": (["save", "2"], 2),
    "from outside, once a checkpoint exists": (["slow", "300"], "any"),
}


@pytest.fixture
def one_thread():
    """The runs use train.num_threads=1 (so that every process computes alike); restore afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _overrides(synth_dir: Path, out: Path) -> list[str]:
    from tests.conftest import FAST

    return [
        *FAST,
        f"data.train={synth_dir / 'train.json'}",
        f"data.val={synth_dir / 'val.json'}",
        f"solver.max_iter={MAX_ITER}",
        f"train.checkpoint_period={PERIOD}",
        "train.eval_at_end=false",
        "train.num_threads=1",
        f"output_dir={out}",
    ]


def _start(how: list[str], overrides: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-c", KILLER, *how, "train", *overrides]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_once_checkpointed(process: subprocess.Popen, out: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "checkpoint_last.pt").exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)


def test_sigkill_then_resume_gives_the_uninterrupted_weights(synth_dir, tmp_path, one_thread):
    # all killed runs start at once (their start-up dominates), the reference trains meanwhile
    runs = {name: tmp_path / f"run{k}" for k, name in enumerate(KILLS)}
    processes = {name: _start(KILLS[name][0], _overrides(synth_dir, runs[name])) for name in KILLS}
    reference = tmp_path / "reference"
    training.train(load_config(None, _overrides(synth_dir, reference)))
    expected = load_checkpoint(reference / "model_final.pt")["model"]

    _kill_once_checkpointed(
        processes["from outside, once a checkpoint exists"], runs["from outside, once a checkpoint exists"]
    )
    for name, process in processes.items():
        output = process.communicate(timeout=300)[0]
        assert process.returncode == -signal.SIGKILL, f"{name}: exit {process.returncode}\n{output}"

    for name, out in runs.items():
        kept = KILLS[name][1]
        iteration = load_checkpoint(out / "checkpoint_last.pt")["iteration"]
        assert iteration == kept if kept != "any" else iteration % PERIOD == 0 and iteration < MAX_ITER
        if name == "while writing a checkpoint":
            assert list(out.glob(".checkpoint_last.pt.*.tmp")), "the half-written file should be left"

        training.train(load_config(None, _overrides(synth_dir, out)), resume=True)

        weights = load_checkpoint(out / "model_final.pt")["model"]
        assert weights.keys() == expected.keys()
        for key in expected:
            assert torch.equal(weights[key], expected[key]), f"{name}: {key}"
        rows = list(csv.DictReader((out / "log.csv").open()))
        assert [int(r["iteration"]) for r in rows] == list(range(1, MAX_ITER + 1)), name
        assert not list(out.glob(".*.tmp")), name
