"""Distributed training (`hardmine/distributed.py`, `sync_bn.py`, the trainer under torchrun).

Two torchrun launches of 2 CPU processes (gloo): `-m hardmine train` itself, and a driver that
checks the collectives and trains, stops and resumes three runs in the same two processes; the
tests read what they left. The images of the test dataset all have one size, so a process's batch
is padded exactly as the combined batch is (padding changes BatchNorm / GroupNorm statistics and
the anchors).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hardmine import distributed
from hardmine.config import load_config
from hardmine.data import synthetic
from hardmine.engine import training
from hardmine.engine.checkpoint import load_checkpoint
from hardmine.errors import CheckpointError, ConfigError, HardmineError

ITERS = 4
#: RetinaNet with focal loss on all anchors (no sampling: no random draw that could differ between
#: one process on the combined batch and two processes on its halves), tiny images at random
#: shapes, sync BN.
COMMON = [
    "model.arch=retinanet",
    "model.backbone=tiny",
    "model.min_size=[96,128]",  # random shapes: 96, 128, 96, 128; a size differing between the
    "model.max_size=128",  # processes would change the weights (and mismatch SyncBN's all-reduce)
    "model.sync_bn=true",
    "dense_head.bias_init=dataset",  # exercises the rank-0-first dataset-priors cache
    f"solver.max_iter={ITERS}",
    "solver.warmup_iters=1",
    "solver.lr=0.01",
    "train.progress=false",
    "train.log_period=1",
    "train.checkpoint_period=2",
    "train.num_threads=1",
    # the plain layout: with channels-last weights the float32 rounding of a batch of 4 against
    # two of 2 moved a stem weight by 1.9e-4 (measured in the full suite), beyond TOLERANCE
    "solver.channels_last=false",
]
#: Parameters may differ by float32 rounding only: BatchNorm statistics summed per process, then
#: over processes, and gradients averaged by all-reduce, instead of one sum over the combined
#: batch. Measured after 4 iterations: at most 8e-7 within the whole suite, and 1.1e-5 on one
#: element of 36864 (a GroupNorm tower weight near 5e-3) when this file ran alone.
TOLERANCE = {"rtol": 1e-4, "atol": 5e-5}
#: Faster R-CNN with every assigned anchor and RoI (no random draw), for the exact comparison.
TWO_STAGE_EXACT = [
    "model.arch=faster_rcnn",
    "rpn.sampler=none",
    "roi_head.sampler=none",
    "rpn.pre_nms_top_n_train=200",
    "rpn.post_nms_top_n_train=100",
    "solver.max_iter=3",
]
#: The resume runs: random anchor sampling, so each process's RNG state matters; no evaluation.
SAMPLED = ["dense_head.sampler=random", "train.eval_at_end=false"]

#: Runs under torchrun in one process group that it sets up itself; the trainer uses it and leaves it
#: in place (destroying and re-creating the default group in one process under torchrun's store
#: failed to connect or hung here). Checks of the collectives, then three training runs; JSON
#: results per rank.
DRIVER = r"""
import json, os, signal, sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from hardmine.cli import main
from hardmine import distributed
from hardmine.engine import trainer
from hardmine.engine.faults import guarded_step
from hardmine.engine.logging import MetricLogger
from hardmine.models.criterion import ForegroundNormaliser

out, common = Path(sys.argv[1]), sys.argv[2:]
TWO_STAGE_EXACT = json.loads(os.environ["TWO_STAGE_EXACT"])
checks = {}
with distributed.process_group("gloo", torch.device("cpu")) as run:
    rank = run.rank
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.ones(1, 2)
    loss = ddp(x).sum() * (float("nan") if rank == 1 else 1.0)
    outcome = guarded_step(model, optimizer, {"loss": loss})
    checks["nan_on_rank1"] = [outcome.ok, outcome.reason]
    outcome = guarded_step(model, optimizer, {"loss": ddp(x * (rank + 1)).sum()})
    checks["next_step"] = [outcome.ok, model.weight.detach().flatten().tolist()]
    plain, ema = ForegroundNormaliser(momentum=0.0), ForegroundNormaliser()  # the dense head's
    labels = torch.tensor([1, 2, 1] if rank == 0 else [0])  # 3 foreground samples on rank 0, none on 1
    checks["normaliser"] = float(plain(len(labels), labels, False)[0])
    checks["ema_normaliser"] = float(ema(len(labels), labels, False)[0])
    checks["averaged"] = distributed.average_scalars({"loss": float(rank), f"only_on_{rank}": 1.0})
    with distributed.main_process_first("the test file"):
        if rank == 0:
            (out / "first.txt").write_text("rank 0 was first")
        checks["main_first"] = (out / "first.txt").read_text()
    checks["gathered"] = distributed.gather_objects(rank * 10)
    checks["any"] = distributed.any_process(rank == 1)

    class Branchy(torch.nn.Module):  # `b` gets no gradient on rank 1 (as a box regressor without fg)
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)

        def forward(self, x, use_b):
            return self.a(x).sum() + (self.b(x).sum() if use_b else 0.0)

    branchy = Branchy()
    wrapped = trainer.data_parallel(branchy, run)
    for _ in range(2):  # the second iteration would wait forever without find_unused_parameters
        branchy.zero_grad()
        wrapped(x, rank == 0).backward()
    checks["unused_on_rank1"] = branchy.b.weight.grad.flatten().tolist()

    codes = {"sampled": main(["train", *common, f"output_dir={out / 'sampled'}"])}
    real_log = MetricLogger.log

    def log_then_stop(self, iteration, scalars):  # rank 0 alone has a logger, so alone gets the signal
        real_log(self, iteration, scalars)
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    MetricLogger.log = log_then_stop
    codes["stopped"] = main(["train", *common, f"output_dir={out / 'resumed'}"])
    MetricLogger.log = real_log
    codes["resumed"] = main(["train", *common, f"output_dir={out / 'resumed'}", "--resume"])
    # two-stage with OHEM: RoI-head branches that differ between the processes, sync BN
    two_stage = ["model.arch=faster_rcnn", "roi_head.sampler=ohem", "solver.max_iter=3"]
    two_stage += ["rpn.pre_nms_top_n_train=200", "rpn.post_nms_top_n_train=100"]
    codes["faster_rcnn"] = main(["train", *common, *two_stage, f"output_dir={out / 'faster_rcnn'}"])
    # two-stage without sampling: every process's normalisers count the global batch, so the
    # result equals one process on the combined batch (compared by the test)
    codes["faster_exact"] = main(["train", *common, *TWO_STAGE_EXACT, f"output_dir={out / 'faster_exact'}"])
    checks["codes"] = codes
    checks["group_left_in_place"] = distributed.is_distributed()
(out / f"checks{rank}.json").write_text(json.dumps(checks))
"""


@dataclass
class Launch:
    out: Path
    stdout: str
    stderr: str

    def checks(self, rank: int) -> dict:
        return json.loads((self.out / f"checks{rank}.json").read_text())


def _torchrun(out: Path, *args: str) -> Launch:
    """`torchrun --standalone --nproc_per_node=2 ARGS` (--standalone: a free port)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parents[1]),  # the repository root
        "TWO_STAGE_EXACT": json.dumps(TWO_STAGE_EXACT),
    }
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return Launch(out, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small built-in dataset whose images are all 256 x 256."""
    root = tmp_path_factory.mktemp("same_size")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic, "IMAGE_SIDE", (256, 256))
        synthetic.generate_synthetic(root, seed=5, num_train=8, num_val=4, workers=1)
    sizes = {(i["width"], i["height"]) for i in json.loads((root / "train.json").read_text())["images"]}
    assert sizes == {(256, 256)}
    return root


def _data(data_dir: Path) -> list[str]:
    return [f"data.train={data_dir / 'train.json'}", f"data.val={data_dir / 'val.json'}"]


@pytest.fixture(scope="module")
def cli_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """`torchrun ... -m hardmine train` with data.batch_size=2 per process."""
    out = tmp_path_factory.mktemp("distributed") / "full"
    return _torchrun(
        out, "-m", "hardmine", "train", *COMMON, *_data(data_dir), "data.batch_size=2", f"output_dir={out}"
    )


@pytest.fixture(scope="module")
def driver(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """`DRIVER` under torchrun; its runs sample anchors at random and skip the evaluation."""
    out = tmp_path_factory.mktemp("driver")
    script = out / "driver.py"
    script.write_text(DRIVER)
    overrides = [*COMMON, *_data(data_dir), "data.batch_size=2", *SAMPLED]
    return _torchrun(out, str(script), str(out), *overrides)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "model_final.pt")["model"]


def _log(run: Path) -> list[dict[str, str]]:
    with (run / "log.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_without_torchrun_no_process_group_is_set_up(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with distributed.process_group("nccl", torch.device("cpu")) as run:  # nccl is not even checked
        assert (run.rank, run.world_size, run.distributed, run.is_main) == (0, 1, False, True)
        assert not torch.distributed.is_initialized()
        assert distributed.average_scalars({"a": 1.0}) == {"a": 1.0}
        assert distributed.any_process(True) and distributed.gather_objects(5) == [5]


def test_backend_auto_picks_gloo_on_the_cpu_and_nccl_needs_cuda():
    assert distributed.resolve_backend("auto", torch.device("cpu")) == "gloo"
    assert distributed.resolve_backend("gloo", torch.device("cpu")) == "gloo"
    with pytest.raises(ConfigError, match="train.dist_backend=nccl needs CUDA"):
        distributed.resolve_backend("nccl", torch.device("cpu"))


def test_a_broken_launch_environment_is_a_clear_error(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(HardmineError, match="inconsistent torchrun environment: RANK=2"):
        distributed.launch_env()
    monkeypatch.setenv("RANK", "0")  # WORLD_SIZE without torchrun's rendezvous address
    with pytest.raises(HardmineError, match="start distributed runs with torchrun"):
        with distributed.process_group("gloo", torch.device("cpu")):
            pass
    with pytest.raises(ConfigError, match="train.device=cuda:1 names one GPU for every process"):
        with distributed.process_group("auto", torch.device("cuda", 1)):
            pass
    assert not torch.distributed.is_initialized()


def test_two_processes_train_like_one_process_on_the_combined_batch(cli_run, data_dir, tmp_path, capfd):
    one_dir = tmp_path / "one"
    training.train(
        load_config(None, [*COMMON, *_data(data_dir), "data.batch_size=4", f"output_dir={one_dir}"])
    )
    assert "model.sync_bn: one process has nothing to synchronise" in capfd.readouterr().err
    one, two = _final_weights(one_dir), _final_weights(cli_run.out)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], **TOLERANCE, msg=lambda m, k=key: f"{k}: {m}")
    # the logged losses are the mean over the processes: the combined batch's loss
    for row_one, row_two in zip(_log(one_dir), _log(cli_run.out), strict=True):
        for column in ("loss", "loss_dense_cls", "loss_dense_box"):
            assert float(row_two[column]) == pytest.approx(float(row_one[column]), rel=1e-4)


def test_rank_0_alone_writes_the_run_files(cli_run):
    run = cli_run.out
    assert [int(row["iteration"]) for row in _log(run)] == list(range(1, ITERS + 1))  # one row each
    for name in ("config.yaml", "checkpoint_last.pt", "model_final.pt", "dataset_priors.json", "pr50.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["iterations"] == ITERS and "AP" in metrics
    assert not list(run.glob(".*.tmp"))
    assert cli_run.stdout.count(f"trained {ITERS} iterations") == 1  # rank 0 alone prints the summary
    ckpt = load_checkpoint(run / "model_final.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2
    assert not torch.equal(ckpt["rng_per_rank"][0]["torch"], ckpt["rng_per_rank"][1]["torch"])


def test_a_stop_signal_to_one_process_stops_all_and_resume_gives_the_uninterrupted_weights(driver):
    codes = {"sampled": 0, "stopped": 130, "resumed": 0, "faster_rcnn": 0, "faster_exact": 0}
    assert driver.checks(0)["codes"] == driver.checks(1)["codes"] == codes
    assert "stopped by SIGTERM after iteration 2" in driver.stderr
    assert "stopped by a signal to another process after iteration 2" in driver.stderr
    resumed, uninterrupted = driver.out / "resumed", driver.out / "sampled"
    assert [int(row["iteration"]) for row in _log(resumed)] == list(range(1, ITERS + 1))
    one, two = _final_weights(uninterrupted), _final_weights(resumed)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")
    assert driver.checks(0)["group_left_in_place"]  # the trainer used the driver's process group


def test_resume_with_another_number_of_processes_is_refused(driver, data_dir, tmp_path):
    shutil.copytree(driver.out / "sampled", tmp_path / "run")
    overrides = [*COMMON, *_data(data_dir), "data.batch_size=2", *SAMPLED, f"output_dir={tmp_path / 'run'}"]
    with pytest.raises(CheckpointError, match=r"written by a run of 2 process\(es\), this run has 1"):
        training.train(load_config(None, overrides), resume=True)


def test_collectives_decide_alike_on_every_process(driver):
    first, second = driver.checks(0), driver.checks(1)
    # a NaN loss on rank 1 alone skips the step on both (else rank 0 would wait for its gradients)
    assert first["nan_on_rank1"] == [False, "non-finite loss on another process"]
    assert second["nan_on_rank1"][0] is False and "non-finite loss (loss=nan)" in second["nan_on_rank1"][1]
    assert first["next_step"][0] and first["next_step"] == second["next_step"]  # averaged gradients
    # foreground counts 3 and 0: the global count 3, divided by the 2 processes DDP averages over
    assert first["normaliser"] == second["normaliser"] == 1.5
    # the EMA moves by the global count (3) on every process: (0.9 * 100 + 0.1 * 3) / 2 processes
    assert first["ema_normaliser"] == second["ema_normaliser"] == pytest.approx((0.9 * 100 + 0.1 * 3) / 2)
    assert first["averaged"] == {"loss": 0.5, "only_on_0": 1.0, "only_on_1": 1.0}
    assert first["main_first"] == second["main_first"] == "rank 0 was first"
    assert first["gathered"] == [0, 10] and second["gathered"] is None
    assert first["any"] is second["any"] is True
    # a parameter unused on one process: its gradient there counts as 0 in the average
    assert first["unused_on_rank1"] == second["unused_on_rank1"] == [0.5, 0.5]


def test_two_stage_normalisers_count_the_global_batch(driver, data_dir, tmp_path):
    """RPN and RoI head without sampling: the processes sample different numbers of RoIs, and their
    normalisers must count the global batch for the result to equal one process on both halves."""
    one_dir = tmp_path / "one"
    overrides = [*COMMON, *_data(data_dir), *SAMPLED, *TWO_STAGE_EXACT]
    training.train(load_config(None, [*overrides, "data.batch_size=4", f"output_dir={one_dir}"]))
    one, two = _final_weights(one_dir), _final_weights(driver.out / "faster_exact")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], **TOLERANCE, msg=lambda m, k=key: f"{k}: {m}")


def test_a_segmentation_model_trains_under_torchrun_and_its_sharded_miou_is_the_whole_sets(
    data_dir, tmp_path
):
    """Two processes train the segmentation model (pixel OHEM); the evaluation at the end, each
    process on half of the images with torchmetrics summing their states, gives the metrics one
    process computes on every image with the same weights."""
    out = tmp_path / "seg"
    preset = Path(__file__).parents[1] / "configs" / "segmentation_tiny.yaml"
    overrides = ["model.min_size=128", "model.max_size=128", "solver.max_iter=3", "train.progress=false"]
    _torchrun(
        out,
        "-m",
        "hardmine",
        "train",
        str(preset),
        *overrides,
        *_data(data_dir),
        "seg_head.sampler=ohem",
        f"output_dir={out}",
    )
    distributed_metrics = json.loads((out / "metrics.json").read_text())
    assert distributed_metrics["world_size"] == 2
    assert float(_log(out)[-1]["seg/num_kept"]) > 0
    from hardmine.engine.tasks import SEGMENTATION

    single, _ = SEGMENTATION.evaluate_checkpoint(out / "model_final.pt", [], tmp_path / "eval")
    for key, value in single.items():
        assert distributed_metrics[key] == pytest.approx(value, nan_ok=True), key
