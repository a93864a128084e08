"""Cooperative cancellation for long loops of the core.

Long computations (feature extraction over slices, kNN blocks, diffusion
steps) take a ``should_stop()`` callback and poll it between units of work;
:func:`check_stop` turns a True answer into
:class:`~napari_conformal.errors.Cancelled`, so nothing partial is returned.
"""

from __future__ import annotations

from collections.abc import Callable

from napari_conformal.errors import Cancelled

__all__ = ["check_stop"]


def check_stop(should_stop: Callable[[], bool] | None) -> None:
    """Raise :class:`~napari_conformal.errors.Cancelled` when ``should_stop()`` returns True."""
    if should_stop is not None and should_stop():
        raise Cancelled()
