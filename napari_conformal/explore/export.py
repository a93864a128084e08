"""Export what an explorer shows: sets, sampled members and calibration records, with provenance.

Layers go through the project's writers (:mod:`napari_conformal.io.writers`):
one ``.npz`` per layer with its JSON provenance header, and one ``CALIB.json``
per calibration record. Nothing existing is overwritten: every target is
checked first and the export refuses (writing nothing) when one exists; each
file itself is written atomically by the writers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_conformal.errors import ConformalError

__all__ = ["ExportItem", "export_results", "safe_filename"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_filename(name: str) -> str:
    """A file-name stem from a layer name: runs of other characters become ``_`` (never empty)."""
    stem = _UNSAFE.sub("_", str(name)).strip("._")
    return stem or "layer"


@dataclass(frozen=True)
class ExportItem:
    """One layer to write.

    Attributes
    ----------
    data : array-like
        Layer data (e.g. ``(Y, X)``, ``(Z, Y, X)`` or ``(N, *S)`` members).
    layer_type : {"image", "labels"}
        napari layer type.
    attributes : dict
        ``name``, ``scale``, ``translate`` and ``metadata`` (with the
        ``"napari_conformal"`` provenance), as napari hands them to writers.
    """

    data: Any
    layer_type: str
    attributes: Mapping[str, Any]


def export_results(
    folder: str | os.PathLike[str],
    items: Sequence[ExportItem],
    records: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write layers (``.npz`` with provenance) and calibration records (``CALIB_<name>.json``).

    Parameters
    ----------
    folder : path-like
        An existing directory.
    items : sequence of ExportItem
        Layers; file names come from the layer names (made unique).
    records : mapping name -> Calibration, optional
        Calibrations, written as ``CALIB_<name>.json``.

    Returns
    -------
    list of str
        The paths written.

    Raises
    ------
    ConformalError
        ``folder`` is not a directory, there is nothing to export, or a target
        file exists (nothing is written then).
    """
    from napari_conformal.io.writers import write_calibration, write_layer_npz

    root = Path(folder)
    if not root.is_dir():
        raise ConformalError(f"export folder {root} does not exist or is not a directory")
    records = dict(records or {})
    if not items and not records:
        raise ConformalError("nothing to export yet: calibrate and show a set first")
    plan: list[tuple[Path, Any]] = []
    used: set[str] = set()
    for item in items:
        stem = safe_filename(item.attributes.get("name") or item.layer_type)
        candidate, k = stem, 2
        while candidate in used:
            candidate, k = f"{stem}_{k}", k + 1
        used.add(candidate)
        plan.append((root / f"{candidate}.npz", item))
    for name, record in records.items():
        plan.append((root / f"CALIB_{safe_filename(name)}.json", record))
    existing = [str(p) for p, _ in plan if p.exists()]
    if existing:
        raise ConformalError(
            f"{existing[0]} already exists"
            + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
            + "; choose an empty folder (nothing was written)"
        )
    written = []
    for path, what in plan:
        if isinstance(what, ExportItem):
            written.append(write_layer_npz(path, what.data, what.layer_type, what.attributes))
        else:
            written.append(write_calibration(path, what))
    return written
