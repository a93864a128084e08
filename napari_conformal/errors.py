"""Exceptions raised by napari-conformal.

Every error a user can cause (bad store, bad arguments, a calibration set too
small for the requested risk level) derives from :class:`ConformalError`, so the
command line and the dock widgets can turn it into a one-line message without
catching programming errors by accident.
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "CalibrationFileError",
    "ConformalError",
    "ImportInputError",
    "InsufficientCalibrationError",
    "LambdaMaxReachedError",
    "NonMonotoneCurveError",
    "ParameterError",
    "StoreBusyError",
    "StoreExistsError",
    "StoreValidationError",
]


class ConformalError(ValueError):
    """Base class of all user-facing errors of napari-conformal."""


class ParameterError(ConformalError):
    """An argument is out of its range (α, ν, K, a foreground class, a method option)."""


class CalibrationFileError(ConformalError):
    """A saved calibration (``CALIB.json``) is unreadable, truncated, tampered with or of an unknown schema."""


class StoreValidationError(ConformalError):
    """A dataset store (or an array given in its place) violates the format."""


class CalibrationError(ConformalError):
    """Calibration cannot produce a valid threshold for the given inputs."""


class InsufficientCalibrationError(CalibrationError):
    """The calibration set is too small for the requested risk level α."""


class LambdaMaxReachedError(CalibrationError):
    """No λ up to λ_max satisfies the risk bound."""


class NonMonotoneCurveError(CalibrationError):
    """A per-image loss curve increases with λ, so risk control does not apply."""


class Cancelled(Exception):
    """A run was stopped by its ``should_stop()`` callback; nothing partial is returned.

    Deliberately not a :class:`ConformalError`: cancelling is not a user error.
    """


class ImportInputError(ConformalError):
    """The input files of an import (case folders, arrays, a model) do not fit together or are invalid.

    The message names the case, the file and, for a shape mismatch, both shapes.
    """


class StoreBusyError(ConformalError):
    """Another process holds the writer lock of what this process wants to write (e.g. a feature cache)."""


class StoreExistsError(ConformalError, FileExistsError):
    """A writer was asked to create something (a store, its features) that already exists.

    Also a :class:`FileExistsError`; pass ``overwrite=True`` to replace.
    """
