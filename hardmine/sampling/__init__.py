"""Samplers: which candidates (RoIs, anchors) train a head. See `hardmine.sampling.base`."""

from hardmine.sampling.base import (
    IGNORE,
    CandidateLosses,
    Candidates,
    IoUThresholds,
    Sampler,
    SampleResult,
    ScoreFn,
    assign_labels,
)
from hardmine.sampling.none import NoSampler
from hardmine.sampling.random import RandomSampler

#: CLI / config name -> sampler class. Later samplers (ohem, iou_balanced, hard_negative) add theirs.
SAMPLERS: dict[str, type[Sampler]] = {
    "random": RandomSampler,
    "none": NoSampler,
}

__all__ = [
    "IGNORE",
    "SAMPLERS",
    "CandidateLosses",
    "Candidates",
    "IoUThresholds",
    "NoSampler",
    "RandomSampler",
    "Sampler",
    "SampleResult",
    "ScoreFn",
    "assign_labels",
]
