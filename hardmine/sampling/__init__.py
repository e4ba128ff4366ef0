"""Samplers: which candidates (RoIs, anchors) train a head. See `hardmine.sampling.base`.

`SAMPLERS` maps each config name to its sampler class. It is filled once, here, from the package's
own modules: every module of `hardmine.sampling` is imported and each concrete `Sampler` subclass it
defines is listed under its `name`. Adding a sampler is therefore one new module (and its test); no
list elsewhere needs an edit. The dict is read-only by convention and nothing outside this package
adds to it, so it stays "a dict that maps CLI names to classes", not a global registry.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

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


def _discover() -> dict[str, type[Sampler]]:
    """Config name -> sampler class, for every concrete sampler defined in this package's modules,
    in the order of the module names."""
    found: dict[str, type[Sampler]] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Sampler) and cls.__module__ == module.__name__ and not inspect.isabstract(cls):
                if cls.name in found:
                    raise RuntimeError(f"two samplers are named {cls.name!r}: {found[cls.name]} and {cls}")
                found[cls.name] = cls
    return found


#: Config name -> sampler class (the choices of every head's `sampler` option).
SAMPLERS: dict[str, type[Sampler]] = _discover()

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
