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
from hardmine.sampling.hard_negative import HardNegativeSampler
from hardmine.sampling.iou_balanced import IoUBalancedSampler
from hardmine.sampling.none import NoSampler
from hardmine.sampling.ohem import OHEMSampler
from hardmine.sampling.random import RandomSampler

#: CLI / config name -> sampler class (the config's sampler choices, in this order).
SAMPLERS: dict[str, type[Sampler]] = {
    "random": RandomSampler,
    "none": NoSampler,
    "ohem": OHEMSampler,
    "iou_balanced": IoUBalancedSampler,
    "hard_negative": HardNegativeSampler,
}

__all__ = [
    "IGNORE",
    "SAMPLERS",
    "CandidateLosses",
    "Candidates",
    "HardNegativeSampler",
    "IoUBalancedSampler",
    "IoUThresholds",
    "NoSampler",
    "OHEMSampler",
    "RandomSampler",
    "Sampler",
    "SampleResult",
    "ScoreFn",
    "assign_labels",
]
