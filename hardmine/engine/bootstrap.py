"""Bootstrapping (`mining.rounds` = N > 0): train, mine the training set's false positives, retrain.

The classic offline recipe (Sung & Poggio 1994; the data mining of Felzenszwalb et al.'s DPM and of
R-CNN's SVMs) that OHEM replaced by online selection:

    OUTPUT_DIR/round0/   the first training (with `mining.file` if one is given)
    OUTPUT_DIR/round1/   hard_negatives.json: round 0's false positives on data.train, merged
                         with the regions round 0 trained with; then a training with that file
    ...                  up to roundN
    OUTPUT_DIR/          config.yaml (the whole run), and copies of the last round's
                         model_final.pt, metrics.json (plus the bootstrapping facts), pr50.json, log.csv,
                         eval_history.json

As in those methods the model is retrained from the previous round's solution
(`mining.init=previous`, the default; `scratch` starts every round from a fresh initialisation)
and the negative set grows: each round's file holds the regions of all earlier rounds.
Each round ≥ 1 trains `mining.round_iters` iterations (0 = `solver.max_iter`) with a fresh
learning-rate schedule. `--resume` skips the rounds that finished with the same config, reuses
mined files already written and resumes an interrupted round from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

from hardmine import distributed
from hardmine.config import Config, dump_yaml, validate
from hardmine.engine.checkpoint import FINAL, LAST, atomic_write, load_checkpoint
from hardmine.engine.coco_eval import PR_CURVE_FILE, write_metrics_json
from hardmine.engine.evaluation import EVAL_HISTORY_FILE
from hardmine.engine.mining import FILE_NAME, mine_checkpoint
from hardmine.engine.trainer import TrainResult
from hardmine.engine.training import train
from hardmine.errors import ConfigError

#: What the run folder holds of its last round, for the tools that read run folders (compare, eval).
FINAL_COPIES = (FINAL, "metrics.json", PR_CURVE_FILE, "log.csv", EVAL_HISTORY_FILE)
#: The entries of a metrics.json that the trainer adds after the metrics.
RUN_FACTS = (
    "iterations",
    "seconds_per_iter",
    "images_per_second",
    "peak_memory_mb",
    "device",
    "skipped_steps",
)


def round_dir(cfg: Config, r: int) -> Path:
    """The folder of bootstrapping round `r`."""
    return Path(cfg.output_dir) / f"round{r}"


def round_config(cfg: Config, r: int, mined_file: str) -> Config:
    """The config of round `r`: the run's, as a plain training (rounds = 0) in its own folder, on
    `mined_file` ('' = none), started from the previous round's weights (mining.init=previous)."""
    out = copy.deepcopy(cfg)
    out.mining.rounds = 0
    out.mining.file = mined_file
    out.output_dir = str(round_dir(cfg, r))
    if r > 0:
        if cfg.mining.init == "previous":
            out.mining.start_from = str(round_dir(cfg, r - 1) / FINAL)
        if cfg.mining.round_iters:
            out.solver.max_iter = cfg.mining.round_iters
    return out


def _finished(cfg: Config) -> bool:
    """The round trained to the end with exactly this config (and evaluated, if it should be)."""
    out = Path(cfg.output_dir)
    if not (out / FINAL).is_file() or not (out / "config.yaml").is_file():
        return False
    if cfg.train.eval_at_end and not (out / "metrics.json").is_file():
        return False
    return (out / "config.yaml").read_text() == dump_yaml(cfg)


def _result_of_finished(cfg: Config) -> TrainResult:
    """The TrainResult of a round finished earlier, from its folder."""
    out = Path(cfg.output_dir)
    saved = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    metrics = {k: float(v) for k, v in saved.items() if k not in RUN_FACTS} or None
    return TrainResult(
        output_dir=out,
        iterations=int(load_checkpoint(out / FINAL)["iteration"]),
        seconds_per_iter=float(saved.get("seconds_per_iter", 0.0)),
        images_per_second=float(saved.get("images_per_second", 0.0)),
        peak_memory_mb=float(saved.get("peak_memory_mb", 0.0)),
        skipped_steps=int(saved.get("skipped_steps", 0)),
        metrics=metrics,
    )


def mine_round(cfg: Config, r: int, previous_file: str) -> Path:
    """Mine round r-1's final model on data.train into round r's file, merged with `previous_file`."""
    m = cfg.mining
    checkpoint = round_dir(cfg, r - 1) / FINAL
    out = round_dir(cfg, r) / FILE_NAME
    return mine_checkpoint(checkpoint, out, m.score_thresh, m.iou_thresh, merge_with=previous_file).path


def train_rounds(cfg: Config, resume: bool = False) -> TrainResult:
    """Round 0, then `cfg.mining.rounds` rounds of mining and retraining; the last round's result
    (its `output_dir` is the run folder, its metrics the last round's). Single-process only."""
    validate(cfg)
    processes = distributed.launch_env()[2]
    if processes > 1:
        raise ConfigError(
            f"mining.rounds={cfg.mining.rounds} (bootstrapping) runs in a single process, not under "
            f"torchrun (WORLD_SIZE={processes}); train each round with mining.file instead"
        )
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "config.yaml") as fh:
        fh.write(dump_yaml(cfg).encode())
    start = time.perf_counter()
    mined_file = cfg.mining.file
    result: TrainResult | None = None
    for r in range(cfg.mining.rounds + 1):
        if r > 0:
            path = round_dir(cfg, r) / FILE_NAME
            if not (resume and path.is_file()):
                path = mine_round(cfg, r, mined_file)
            mined_file = str(path)
        rcfg = round_config(cfg, r, mined_file)
        if resume and _finished(rcfg):
            result = _result_of_finished(rcfg)
            continue
        result = train(rcfg, resume=resume and (Path(rcfg.output_dir) / LAST).is_file())
    assert result is not None
    last = round_dir(cfg, cfg.mining.rounds)
    for name in FINAL_COPIES:
        if (last / name).is_file():
            shutil.copy2(last / name, out / name)
    if (last / "metrics.json").is_file():
        saved = json.loads((last / "metrics.json").read_text())
        facts = {"mining_rounds": cfg.mining.rounds, "bootstrap_seconds": time.perf_counter() - start}
        write_metrics_json(out / "metrics.json", {}, extra={**saved, **facts})
    result.output_dir = out
    return result
