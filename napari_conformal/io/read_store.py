"""The napari layers of a dataset store: images, ground truth, mean and per-sample predictions.

A store (a zarr group whose ``format`` attribute is ``"napari-conformal-dataset"``, docs/store.md) opens as
four layers, all lazy (dask arrays over the per-image zarr chunks, so opening reads one image to set
the contrast and nothing else):

* ``<name> images``: image, ``(N, *S)``;
* ``<name> ground truth``: labels, ``(N, *S)`` (only when the store has labels);
* ``<name> mean prediction``: labels, ``(N, *S)``, the argmax over classes of the mean of the T
  softmax samples (ties go to the lower class index);
* ``<name> sample predictions``: labels, ``(T, N, *S)``, the argmax of every sample, with the
  sample index as an extra leading axis (a dims slider); hidden at first.

Scale is ``(1, *spacing)`` (``(1, 1, *spacing)`` for the samples), spacing in mm. The labels
layers carry a ``features`` table (``index``, ``class``) so the status bar names the class under
the cursor. ``metadata["napari_conformal"]`` holds the store path, its content identity (see
:data:`IDENTITY_MAX_BYTES`), the array shown and the store attributes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.io.layers import LayerData, class_features
from napari_conformal.io.provenance import PROVENANCE_KEY
from napari_conformal.io.safe_load import check_zarr_array_safe
from napari_conformal.io.validate import ARRAY_NAMES, labels_storage_dtype

__all__ = ["IDENTITY_MAX_BYTES", "read_store"]

#: Stores whose chunk files add up to at most this many bytes get their content identity computed
#: on open (one sequential read of the stored bytes); larger stores record ``identity: None`` so
#: that opening stays fast, and tools that need it call ``DatasetStore.identity()`` themselves.
IDENTITY_MAX_BYTES = 256 * 2**20


def _display_name(path: str | os.PathLike[str]) -> str:
    p = Path(os.fspath(path))
    name = p.name or p.resolve().name
    return name[:-5] if name.lower().endswith(".zarr") and len(name) > 5 else name


def _chunk_bytes(root: Path, limit: int) -> int:
    """Size of the files :meth:`DatasetStore.identity` reads (images, samples, labels); stops past ``limit``."""
    total = 0
    for name in ("images", "samples", "labels"):
        for dirpath, _dirs, files in os.walk(root / name):
            for f in files:
                try:
                    total += os.stat(os.path.join(dirpath, f)).st_size
                except FileNotFoundError:
                    continue
                if total > limit:
                    return total
    return total


def _store_identity(store: Any, limit: int) -> str | None:
    if _chunk_bytes(Path(store.path), limit) > limit:
        return None
    return store.identity()


def read_store(
    path: str | os.PathLike[str], *, identity_max_bytes: int = IDENTITY_MAX_BYTES
) -> list[LayerData]:
    """Layers for a dataset store (see the module docstring), lazily backed by its zarr arrays.

    Parameters
    ----------
    path : path-like
        The store directory.
    identity_max_bytes : int
        Compute the store identity for the provenance only when its files total at most this many
        bytes; ``identity`` is None otherwise.

    Returns
    -------
    list of (data, kwargs, layer_type)
        napari layer data tuples, in display order (images first).

    Raises
    ------
    StoreValidationError
        The store's structure is broken (a :class:`~napari_conformal.errors.ConformalError`).
    """
    import dask.array as da

    from napari_conformal.io.store import open_store

    root = Path(os.fspath(path))
    for name in ARRAY_NAMES:  # the arrays the store opens (not, say, a feature writer's temporary one)
        if (root / name).is_dir():
            check_zarr_array_safe(root / name)
    store = open_store(path, mode="r")
    name = _display_name(path)
    spacing = [float(s) for s in store.spacing]
    names = store.label_names
    spatial_axes = "ZYX"[-store.ndim :]
    base = {
        "source": "dataset-store",
        "store": {
            "path": str(Path(store.path).resolve()),
            "identity": _store_identity(store, identity_max_bytes),
        },
        "spacing": spacing,
        "label_names": names,
        "sampler": store.sampler,
    }

    def meta(array: str, view: str, axes: str) -> dict[str, Any]:
        return {PROVENANCE_KEY: {**base, "array": array, "view": view, "axes": axes}}

    label_dtype = labels_storage_dtype(store.n_labels)
    scale = [1.0, *spacing]
    images = da.from_zarr(store.array("images"))
    first = store.image(0)
    lo, hi = (float(first.min()), float(first.max())) if first.size else (0.0, 1.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    layers: list[LayerData] = [
        (
            images,
            {
                "name": f"{name} images",
                "scale": scale,
                "contrast_limits": [lo, hi],
                "colormap": "gray",
                "metadata": meta("images", "images", "N" + spatial_axes),
            },
            "image",
        )
    ]
    if store.has_labels:
        layers.append(
            (
                da.from_zarr(store.array("labels")),
                {
                    "name": f"{name} ground truth",
                    "scale": scale,
                    "features": class_features(names),
                    "opacity": 0.5,
                    "metadata": meta("labels", "ground truth", "N" + spatial_axes),
                },
                "labels",
            )
        )
    samples = da.from_zarr(store.array("samples"))  # (N, T, L, *S), one chunk per image
    mean_pred = samples.astype(np.float32).sum(axis=1).argmax(axis=1).astype(label_dtype)
    layers.append(
        (
            mean_pred,
            {
                "name": f"{name} mean prediction",
                "scale": scale,
                "features": class_features(names),
                "opacity": 0.6,
                "metadata": meta("samples", "mean prediction", "N" + spatial_axes),
            },
            "labels",
        )
    )
    per_sample = samples.argmax(axis=2).astype(label_dtype)  # (N, T, *S)
    per_sample = da.moveaxis(per_sample, 1, 0)  # (T, N, *S)
    layers.append(
        (
            per_sample,
            {
                "name": f"{name} sample predictions",
                "scale": [1.0, *scale],
                "features": class_features(names),
                "opacity": 0.6,
                "visible": False,
                "metadata": meta("samples", "sample predictions", "TN" + spatial_axes),
            },
            "labels",
        )
    )
    return layers
