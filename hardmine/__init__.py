"""hardmine: train object detectors on imbalanced data with OHEM and its rivals."""

__version__ = "0.1.0"
