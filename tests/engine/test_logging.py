"""log.csv: the header of the first row plus columns filled now and then; resuming drops later rows."""

import csv

from hardmine.engine.logging import MetricLogger


def _read(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_columns_filled_now_and_then_and_a_resume_that_adds_them(tmp_path):
    logger = MetricLogger(tmp_path, tensorboard=False)
    logger.log(1, {"loss": 2.0})
    logger.log(2, {"loss": 1.5, "other": 3.0})  # outside the header: TensorBoard only
    assert _read(tmp_path / "log.csv") == [{"iteration": "1", "loss": "2"}, {"iteration": "2", "loss": "1.5"}]

    resumed = MetricLogger(tmp_path, resume_from=1, tensorboard=False, columns=["eval/AP"])
    resumed.log(2, {"loss": 1.25, "eval/AP": 0.5})
    resumed.log(3, {"loss": 1.0})
    assert _read(tmp_path / "log.csv") == [
        {"iteration": "1", "loss": "2", "eval/AP": ""},
        {"iteration": "2", "loss": "1.25", "eval/AP": "0.5"},
        {"iteration": "3", "loss": "1", "eval/AP": ""},
    ]
