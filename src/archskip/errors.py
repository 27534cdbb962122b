"""The errors a user's input can cause. The CLI prints these as one line (no traceback) and exits 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


class DataError(ValueError):
    """A data file is missing, malformed, or does not fit the task."""


class PlanError(ValueError):
    """A skip plan does not fit the model it is applied to."""


class BackboneError(ValueError):
    """The model's layout is not one archskip knows how to wrap, or the model cannot be loaded."""


class CheckpointError(BackboneError):
    """An original checkpoint is unreadable, unsafe to read, or does not have the expected layout."""


class ArtifactError(ValueError):
    """An artifact is missing, corrupt, too new, or made for another base model."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the last checkpoint is kept."""


class OutputError(OSError):
    """An output file or directory cannot be written."""


USER_ERRORS = (ConfigError, DataError, PlanError, BackboneError, ArtifactError, TrainingError, OutputError,
               FileNotFoundError)
