"""Every row of the accuracy benchmark is a valid config, at any budget."""

import pytest

from benchmarks.accuracy import CONFIGS, ROWS, TRICKS
from hardmine.config import load_config


@pytest.mark.parametrize("name", list(ROWS))
def test_every_row_loads_and_validates(name):
    preset, overrides = ROWS[name]
    for iters in (30, 600):
        budget = {"iters": iters, "two_thirds": 2 * iters // 3, "eight_ninths": 8 * iters // 9}
        load_config(CONFIGS / preset, [o.format(**budget) for o in overrides])


def test_step_row_decays_at_two_thirds_and_eight_ninths_of_the_budget():
    preset, overrides = ROWS["faster_rcnn step decay, no warmup"]
    budget = {"iters": 900, "two_thirds": 600, "eight_ninths": 800}
    cfg = load_config(CONFIGS / preset, [o.format(**budget) for o in overrides])
    assert (cfg.solver.schedule, cfg.solver.warmup_iters, cfg.solver.steps) == ("step", 0, [600, 800])


def test_the_all_tricks_preset_is_every_single_trick_together():
    preset, overrides = ROWS["faster_rcnn + all tricks"]
    together = load_config(CONFIGS / preset, [*overrides, "output_dir=x"])
    one_by_one = load_config(
        CONFIGS / "faster_rcnn.yaml", [o for t in TRICKS.values() for o in t] + ["output_dir=x"]
    )
    assert together.to_dict() == one_by_one.to_dict()
