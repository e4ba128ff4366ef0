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
from hardmine.sampling.ohem import OHEMSampler
from hardmine.sampling.random import RandomSampler

#: CLI / config name -> sampler class. Later samplers (iou_balanced, hard_negative) add theirs.
SAMPLERS: dict[str, type[Sampler]] = {
    "random": RandomSampler,
    "none": NoSampler,
    "ohem": OHEMSampler,
}

__all__ = [
    "IGNORE",
    "SAMPLERS",
    "CandidateLosses",
    "Candidates",
    "IoUThresholds",
    "NoSampler",
    "OHEMSampler",
    "RandomSampler",
    "Sampler",
    "SampleResult",
    "ScoreFn",
    "assign_labels",
]
