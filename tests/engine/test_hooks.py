"""The hooks of a training run: evaluation during training (train.eval_period) changes no weight and
is logged and kept across a resume; train.stop_at stops with a checkpoint and --resume continues
exactly; the signal stop request."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from hardmine.config import load_config
from hardmine.engine import training
from hardmine.engine.checkpoint import load_checkpoint
from hardmine.engine.evaluation import DETECTIONS_DIR, EVAL_HISTORY_FILE, detections_file, read_eval_history
from hardmine.engine.hooks import StopRequest


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "log.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluating_during_training_changes_nothing_and_stop_at_resumes_exactly(fast_overrides, tmp_path):
    base = [*fast_overrides, "solver.max_iter=4", "train.log_period=2", "train.checkpoint_period=100"]
    plain = tmp_path / "plain"
    training.train(load_config(None, [*base, "train.eval_at_end=false", f"output_dir={plain}"]))

    run = tmp_path / "evaluated"
    evaluated = [*base, "train.eval_period=1", f"output_dir={run}"]
    first = training.train(load_config(None, [*evaluated, "train.stop_at=2"]))
    assert (first.iterations, first.stopped, first.metrics) == (2, "train.stop_at=2", None)
    assert load_checkpoint(run / "checkpoint_last.pt")["iteration"] == 2
    assert not (run / "model_final.pt").exists() and not (run / "metrics.json").exists()
    assert [e["iteration"] for e in read_eval_history(run / EVAL_HISTORY_FILE)] == [1, 2]
    assert sorted(p.name for p in (run / DETECTIONS_DIR).iterdir()) == ["0000001.json", "0000002.json"]
    stale = detections_file(run, 3)  # e.g. left by an attempt that was killed after iteration 3
    stale.write_text("[]")
    # resumed with the same stop: nothing left to train
    again = training.train(load_config(None, [*evaluated, "train.stop_at=2"]), resume=True)
    assert (again.iterations, again.stopped) == (2, "train.stop_at=2")
    assert not stale.exists()  # after the iteration it resumed from

    result = training.train(load_config(None, evaluated), resume=True)
    assert result.iterations == 4 and not result.stopped and result.metrics is not None
    expected, weights = (
        load_checkpoint(plain / "model_final.pt")["model"],
        load_checkpoint(run / "model_final.pt")["model"],
    )
    assert expected.keys() == weights.keys()
    for key in expected:
        assert torch.equal(weights[key], expected[key]), key

    # every evaluation in the history (the final one too); AP / AP50 in the rows of the periodic ones
    history = read_eval_history(run / EVAL_HISTORY_FILE)
    assert [e["iteration"] for e in history] == [1, 2, 3, 4]
    assert history[-1] == {"iteration": 4, **result.metrics}
    # each evaluation's detections: a COCO results file on the validation images
    kept = sorted(p.name for p in (run / DETECTIONS_DIR).iterdir())
    assert kept == [f"000000{i}.json" for i in (1, 2, 3, 4)]
    final = json.loads(detections_file(run, 4).read_text())
    assert isinstance(final, list)
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in final)
    rows = _rows(run)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]  # log_period 2, evaluations at 1 and 3
    for row, entry in zip(rows[:3], history):
        assert float(row["eval/AP"]) == pytest.approx(entry["AP"], rel=1e-5, abs=1e-9)
        assert float(row["eval/AP50"]) == pytest.approx(entry["AP50"], rel=1e-5, abs=1e-9)
    assert rows[3]["eval/AP"] == rows[3]["eval/AP50"] == ""  # the final evaluation is in metrics.json
    for row, same in zip(rows[1::2], _rows(plain)):  # what both logged is the same
        for key in same:
            if key != "time_per_iter":
                assert row[key] == same[key], key


def test_a_new_run_drops_an_earlier_runs_evaluation_history(fast_overrides, tmp_path):
    cfg = load_config(None, [*fast_overrides, "solver.max_iter=1", "train.eval_at_end=false"])
    history = Path(cfg.output_dir) / EVAL_HISTORY_FILE
    history.parent.mkdir(parents=True)
    history.write_text('{"evaluations": [{"iteration": 7, "AP": 0.5}]}\n')
    detections_file(Path(cfg.output_dir), 7).parent.mkdir()
    detections_file(Path(cfg.output_dir), 7).write_text("[]")
    training.train(cfg)
    assert not history.exists() and not (Path(cfg.output_dir) / DETECTIONS_DIR).exists()
    assert "eval/AP" not in _rows(Path(cfg.output_dir))[0]  # no evaluation column without eval_period


def test_the_first_signal_asks_to_stop_and_the_second_aborts():
    previous = signal.getsignal(signal.SIGTERM)
    with StopRequest() as request:
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is previous
