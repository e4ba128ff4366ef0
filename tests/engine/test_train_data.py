"""Training batches: iteration t's batch a pure function of (seed, t), sliced over the processes."""

import pytest

from hardmine.engine.train_data import IterationBatchSampler


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_slices_add_up_to_the_single_process_batch_of_the_global_size(world):
    single = list(IterationBatchSampler(10, 2 * world, seed=4, start=0, stop=9))
    slices = [
        list(IterationBatchSampler(10, 2, seed=4, start=0, stop=9, rank=r, world_size=world))
        for r in range(world)
    ]
    for t, batch in enumerate(single):
        assert [item for part in slices for item in part[t]] == batch
        assert all(len(part[t]) == 2 for part in slices)
    if world == 1:  # unchanged for a single process: the same batches as before the rank options
        assert single == list(IterationBatchSampler(10, 2, seed=4, start=0, stop=9))


def test_sampler_started_late_continues_with_the_same_batches():
    whole = list(IterationBatchSampler(7, 2, seed=1, start=0, stop=12, rank=1, world_size=2))
    assert list(IterationBatchSampler(7, 2, seed=1, start=5, stop=12, rank=1, world_size=2)) == whole[5:]
    with pytest.raises(ValueError, match="rank 2"):
        IterationBatchSampler(7, 2, seed=1, start=0, stop=1, rank=2, world_size=2)
