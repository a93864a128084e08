"""napari readers (npe2 ``readers`` contributions): dataset stores, single volumes, sample arrays.

Every ``get_*_reader(path)`` follows the npe2 contract: it returns a reader function when it
claims ``path`` and ``None`` otherwise. Claiming is decided from the file name and, for zarr, the
small ``zarr.json`` / ``.zarray`` metadata document (:func:`~napari_conformal.io.paths.path_kind`);
it never raises, whatever ``path`` is. A claimed path that turns out to be broken makes the *reader
function* raise a :class:`~napari_conformal.errors.ConformalError` naming the file and the problem.

What each kind of path opens as:

* a dataset store — :func:`~napari_conformal.io.read_store.read_store`;
* a single volume (TIFF, NIfTI, ``.npy``, ``.npz``, zarr array) — :func:`~napari_conformal.io.read_volume.read_volume`;
* a ``*_samples`` array — :func:`~napari_conformal.io.read_samples.read_samples`.

Loading is safe (:mod:`napari_conformal.io.safe_load`): nothing is ever unpickled.
This module holds the entry points and the dispatch; the readers live in their own modules and are
importable from here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_conformal.errors import ConformalError
from napari_conformal.io.layers import LayerData, ReaderFunction
from napari_conformal.io.paths import path_kind
from napari_conformal.io.read_samples import read_samples, summarize_samples
from napari_conformal.io.read_store import read_store
from napari_conformal.io.read_volume import read_volume
from napari_conformal.io.safe_load import load_npy, load_npz

__all__ = [
    "LayerData",
    "get_reader",
    "get_samples_reader",
    "get_store_reader",
    "get_volume_reader",
    "load_npy",
    "load_npz",
    "path_kind",
    "read",
    "read_samples",
    "read_store",
    "read_volume",
    "summarize_samples",
]


def _as_paths(path: Any) -> list[str] | None:
    if isinstance(path, str | os.PathLike):
        return [os.fspath(path)]
    if isinstance(path, Sequence) and path and all(isinstance(p, str | os.PathLike) for p in path):
        return [os.fspath(p) for p in path]
    return None


def _reader_for(path: Any, kinds: tuple[str, ...]) -> ReaderFunction | None:
    """A reader for ``path`` (or a list of paths) when every path is of one of ``kinds``."""
    try:
        paths = _as_paths(path)
        if paths is None:
            return None
        found = [path_kind(p) for p in paths]
    except Exception:  # claiming must never raise, whatever napari hands us
        return None
    if all(k in kinds for k in found):
        return read
    return None


def get_reader(path: Any) -> ReaderFunction | None:
    """npe2 reader for anything napari-conformal opens (stores, sample arrays, volumes), else None."""
    return _reader_for(path, ("store", "samples", "volume"))


def get_store_reader(path: Any) -> ReaderFunction | None:
    """npe2 reader for dataset stores only, else None."""
    return _reader_for(path, ("store",))


def get_samples_reader(path: Any) -> ReaderFunction | None:
    """npe2 reader for ``*_samples`` arrays only, else None."""
    return _reader_for(path, ("samples",))


def get_volume_reader(path: Any) -> ReaderFunction | None:
    """npe2 reader for single volumes (``.tif``, ``.nii[.gz]``, ``.npy``, ``.npz``, zarr arrays), else None."""
    return _reader_for(path, ("volume",))


def read(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[LayerData]:
    """Read one path or several (layers concatenated) with the reader its kind calls for.

    Raises
    ------
    ConformalError
        A path that is not something napari-conformal opens, or a broken file.
    """
    paths = _as_paths(path)
    if paths is None:
        raise ConformalError(f"expected a path or a list of paths, got {path!r}")
    layers: list[LayerData] = []
    for p in paths:
        kind = path_kind(p)
        if kind == "store":
            layers += read_store(p)
        elif kind == "samples":
            layers += read_samples(p)
        elif kind == "volume":
            layers += read_volume(p)
        elif not Path(p).exists():
            raise ConformalError(f"{p}: no such file or directory")
        else:
            raise ConformalError(
                f"{p}: not a dataset store, a sample array or a volume napari-conformal reads"
            )
    return layers
