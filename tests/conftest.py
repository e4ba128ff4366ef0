"""Shared fixtures: a tiny built-in dataset generated once per test session."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardmine.data.synthetic import generate_synthetic

#: Overrides that make training runs fast enough for tests (a few iterations on tiny images).
FAST = [
    "model.min_size=192",
    "model.max_size=192",
    "rpn.pre_nms_top_n_train=200",
    "rpn.post_nms_top_n_train=100",
    "rpn.pre_nms_top_n_test=100",
    "rpn.post_nms_top_n_test=50",
    "roi_head.sampler.batch_size_per_image=32",
    "solver.warmup_iters=2",
    "solver.lr=0.01",
    "train.progress=false",
    "train.log_period=1",
]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never read or write the user's cache (sampling-free dataset statistics)."""
    previous = os.environ.get("HARDMINE_CACHE_DIR")
    os.environ["HARDMINE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("HARDMINE_CACHE_DIR", None)
    else:
        os.environ["HARDMINE_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, seed=3, num_train=6, num_val=4)
    return root


@pytest.fixture
def fast_overrides(synth_dir: Path, tmp_path: Path) -> list[str]:
    return [
        *FAST,
        f"data.train={synth_dir / 'train.json'}",
        f"data.val={synth_dir / 'val.json'}",
        f"output_dir={tmp_path / 'run'}",
    ]
