"""Aggregation over seeds, table cells, the results files and seed-averaged curves."""

import csv
import json

import numpy as np
import pytest

from hardmine.report.results import (
    FAILED,
    TRAINED,
    MeanStd,
    RunRecord,
    degenerate_output,
    format_stat,
    format_text_table,
    mean_over_seeds,
    read_log_columns,
    seed_rows,
    summarize,
    write_results_csv,
    write_results_json,
)


def record(name: str, seed: int, ap: float | None, family: str = "two-stage", **extra: float) -> RunRecord:
    metrics = None if ap is None else {"AP": ap, "APl": -1.0, "seconds_per_iter": 0.2, **extra}
    return RunRecord(
        name=name,
        family=family,
        seed=seed,
        status=TRAINED if ap is not None else FAILED,
        run_dir=f"runs/{name}-seed{seed}",
        command=f"hardmine train x.yaml train.seed={seed}",
        metrics=metrics,
        error=None if ap is not None else "boom",
    )


def test_summaries_are_mean_and_sample_std_over_successful_seeds():
    runs = [
        record("a", 0, 0.10),
        record("a", 1, 0.20),
        record("a", 2, None),
        record("b", 0, 0.3, "one-stage"),
    ]
    a, b = summarize(runs)
    assert (a.name, a.seeds, a.failed_seeds) == ("a", [0, 1], [2])
    assert a.stats["AP"].mean == pytest.approx(0.15) and a.stats["AP"].std == pytest.approx(
        0.0707107, abs=1e-6
    )
    assert a.stats["APl"] == MeanStd(None, None, 0)  # COCO's -1 (no ground truth) is no value
    assert b.family == "one-stage" and b.stats["AP"].std is None  # one seed: no spread


def test_cells_show_percent_with_spread_costs_plainly_and_a_dash_without_value():
    assert format_stat(MeanStd(0.1523, 0.0081, 3), "AP") == "15.2 ± 0.8"
    assert format_stat(MeanStd(0.1523, None, 1), "AP50") == "15.2"
    assert format_stat(MeanStd(0.2123, 0.01, 3), "seconds_per_iter") == "0.212"
    assert format_stat(MeanStd(1116.9, 3.0, 3), "peak_memory_mb") == "1117"
    assert format_stat(MeanStd(None, None, 0), "AP") == "–"


def test_text_table_has_a_block_per_family():
    text = format_text_table(summarize([record("a", 0, 0.1), record("b", 0, None, "one-stage")]))
    two, one = text.split("\n\n")
    assert two.startswith("two-stage") and "10.0" in two
    assert one.startswith("one-stage") and "0 (1 failed)" in one


def test_results_files_have_one_row_per_run(tmp_path):
    runs = [record("a", 0, 0.1), record("a", 1, None)]
    write_results_csv(tmp_path / "r.csv", runs)
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [(r["name"], r["seed"], r["status"], r["AP"], r["degenerate"]) for r in rows] == [
        ("a", "0", "trained", "0.1", ""),
        ("a", "1", "failed", "", ""),
    ]
    write_results_json(tmp_path / "r.json", runs, summarize(runs), {"budget": 5})
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["comparison"] == {"budget": 5} and data["runs"][1]["error"] == "boom"
    assert data["methods"][0]["stats"]["AP"] == {"mean": 0.1, "std": None, "n": 1}


def test_log_columns_and_mean_over_seeds(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("iteration,loss,roi/fg_loss_share\n10,2.0,0.1\n20,1.0,0.2\n")
    columns = read_log_columns(log, ["loss", "dense/fg_loss_share"])
    assert set(columns) == {"iteration", "loss"} and columns["loss"].tolist() == [2.0, 1.0]
    log.write_text("iteration,loss,eval/AP\n10,2.0,\n20,1.0,0.25\n")
    assert np.isnan(read_log_columns(log, ["eval/AP"])["eval/AP"]).tolist() == [True, False]
    x, mean, std = mean_over_seeds(
        [(np.array([10, 20, 30]), np.array([1.0, 2.0, 3.0])), (np.array([10, 20]), np.array([3.0, 4.0]))]
    )
    assert (
        x.tolist() == [10, 20] and mean.tolist() == [2.0, 3.0] and std.tolist() == pytest.approx([2**0.5] * 2)
    )
    assert mean_over_seeds([(np.array([1]), np.array([5.0]))])[2] is None


def detection(score: float, category_id: int = 2) -> dict:
    return {"image_id": 1, "category_id": category_id, "bbox": [0.0, 0.0, 4.0, 4.0], "score": score}


def test_degenerate_output_is_no_detection_or_one_score_per_class_for_all():
    assert degenerate_output([]) == "no detections"
    assert degenerate_output([detection(0.0797082)] * 3) == "collapsed: all 3 detections score 0.0797"
    assert (
        degenerate_output([detection(0.5), detection(0.5000001)])
        == "collapsed: all 2 detections score 0.5000"
    )
    # Within FLAT_SCORE_SPREAD (0.005) of each other: as flat as the bf16-collapsed OHEM runs.
    assert (
        degenerate_output([detection(0.0967), detection(0.0985), detection(0.0970)])
        == "collapsed: all 3 detections score 0.0967-0.0985"
    )
    # One score per class (a constant class-score vector), two classes.
    assert (
        degenerate_output([detection(0.08, 1), detection(0.08, 1), detection(0.16, 2), detection(0.1601, 2)])
        == "collapsed: all 4 detections score 0.0800-0.1601 (one score per class)"
    )
    assert degenerate_output([detection(0.5)]) is None  # one detection is no evidence
    assert degenerate_output([detection(0.3, 1), detection(0.3, 2)]) is None  # nor one per class
    assert degenerate_output([detection(0.08), detection(0.0851)]) is None  # spread 0.0051
    # A live but weak detector: one class flat, another not.
    assert (
        degenerate_output([detection(0.08, 1), detection(0.08, 1), detection(0.06, 2), detection(0.2, 2)])
        is None
    )


def test_seed_rows_show_each_seed_failures_and_degenerate_runs():
    runs = [record("a", 0, 0.093), record("a", 1, 0.179), record("a", 2, None), record("b", 0, 0.0)]
    runs[3].degenerate = "no detections"
    header, rows = seed_rows(summarize(runs), runs)
    assert header == ["method", "AP, seed 0", "AP, seed 1", "AP, seed 2"]
    assert rows == [["a", "9.3", "17.9", "failed"], ["b", "0.0 (no detections)", "–", "–"]]
    assert seed_rows(summarize(runs[:1]), runs[:1]) is None  # one seed: the mean is the seed
    assert seed_rows(summarize(runs[3:]), runs[3:]) == (
        ["method", "AP, seed 0"],
        [["b", "0.0 (no detections)"]],
    )
