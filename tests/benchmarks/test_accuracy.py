"""Every row of the accuracy benchmark is a valid config, at any budget."""

import pytest

from benchmarks.accuracy import CONFIGS, ROWS, TRICKS, row_overrides
from hardmine.config import load_config


@pytest.mark.parametrize("name", list(ROWS))
def test_every_row_loads_and_validates(name):
    for iters in (30, 600):
        load_config(CONFIGS / ROWS[name][0], row_overrides(name, iters))


def test_the_presets_step_decay_moves_with_the_budget():
    # faster_rcnn.yaml decays at 333 of its 400 iterations: at round(333 * 900 / 400) = 749 of 900
    cfg = load_config(CONFIGS / "faster_rcnn.yaml", row_overrides("faster_rcnn step decay, no warmup", 900))
    assert (cfg.solver.schedule, cfg.solver.warmup_iters, cfg.solver.steps) == ("step", 0, [749])
    cosine = load_config(CONFIGS / "faster_rcnn.yaml", row_overrides("faster_rcnn + warmup + cosine", 900))
    assert (cosine.solver.schedule, cosine.solver.warmup_iters, cosine.solver.steps) == ("cosine", 50, [])


def test_the_all_tricks_preset_is_every_single_trick_together():
    preset, overrides = ROWS["faster_rcnn + all tricks"]
    together = load_config(CONFIGS / preset, [*overrides, "output_dir=x"])
    one_by_one = load_config(
        CONFIGS / "faster_rcnn.yaml", [o for t in TRICKS.values() for o in t] + ["output_dir=x"]
    )
    assert together.to_dict() == one_by_one.to_dict()
