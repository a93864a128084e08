"""Make napari open dataset stores and NIfTI volumes with this plugin when they are dropped on the canvas.

What napari allows (napari 0.5–0.9, npe2): a reader contribution cannot claim priority. For a *folder*
(a store is one) npe2 offers every reader that accepts directories, whatever its filename patterns, and
napari's builtin reader is always one of them; ``.nii.gz`` and ``.npy`` match the builtin reader's
patterns too. With two candidates napari uses the reader its settings prefer for the path
(``settings.plugins.extension2reader``, a filename pattern → plugin; a folder is matched with a trailing
``/``), and without a preference the GUI asks (its dialog can remember the choice, for that folder only)
and ``viewer.open(path, plugin=None)`` raises ``MultipleReaderError``. ``viewer.open(path)`` without
``plugin=`` uses napari's builtin reader, always.

:func:`prefer_plugin_reader` records this plugin as the preferred reader for :data:`PATTERNS` in napari's
settings (saved to napari's settings file, so it lasts across sessions); ``napari-conformal
prefer-reader`` does the same from the command line, ``--remove`` undoes it. A zarr folder that is not a
napari-conformal store nor a zarr array then fails with this plugin and napari offers its other readers.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["PATTERNS", "PLUGIN", "prefer_plugin_reader", "preferred_readers", "remove_plugin_preference"]

PLUGIN = "napari-conformal"
#: Stores (named ``*.zarr``), NIfTI volumes and napari-conformal sample arrays.
PATTERNS = ("*.zarr/", "*.nii", "*.nii.gz", "*_samples.npy", "*_samples.npz")


def preferred_readers() -> dict[str, str]:
    """napari's preferred readers: filename pattern → plugin (a copy)."""
    from napari.settings import get_settings

    return dict(get_settings().plugins.extension2reader)


def prefer_plugin_reader(patterns: Sequence[str] = PATTERNS) -> dict[str, str | None]:
    """Make napari-conformal napari's preferred reader for ``patterns``; saved in napari's settings.

    Returns
    -------
    dict
        Pattern → the plugin preferred before (None where there was none).
    """
    from napari.settings import get_settings

    settings = get_settings()
    current = dict(settings.plugins.extension2reader)
    before = {p: current.get(p) for p in patterns}
    settings.plugins.extension2reader = {**current, **{p: PLUGIN for p in patterns}}
    return before


def remove_plugin_preference(patterns: Sequence[str] = PATTERNS) -> list[str]:
    """Remove the preferences for ``patterns`` that name napari-conformal; returns the patterns removed."""
    from napari.settings import get_settings

    settings = get_settings()
    current = dict(settings.plugins.extension2reader)
    removed = [p for p in patterns if current.get(p) == PLUGIN]
    settings.plugins.extension2reader = {k: v for k, v in current.items() if k not in removed}
    return removed
