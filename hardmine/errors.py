"""Errors that hardmine reports to the user without a traceback."""


class HardmineError(Exception):
    """Base class: the CLI prints the message and exits with status 2."""


class ConfigError(HardmineError):
    """A configuration key or value is invalid; the message names the key and the allowed values."""


class DataError(HardmineError):
    """A dataset file or record is invalid; the message names the file and the record."""


class CheckpointError(HardmineError):
    """A checkpoint cannot be read or does not fit the model."""


class TrainingInterrupted(HardmineError):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; `--resume` continues it."""


class TrainingDiverged(HardmineError):
    """Training stopped after too many consecutive non-finite steps; the last checkpoint is intact."""
