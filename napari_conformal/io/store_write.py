"""Writing dataset stores: a whole store from arrays, or an empty one filled image by image.

* :func:`create_store` — in-memory (or any indexable) arrays → a new store. All values are validated
  before anything is written; the store is built under a temporary sibling name and renamed into
  place, so a failure never leaves a half-written store.
* :func:`create_empty` + :func:`prepare_image` / :func:`write_one` — the streaming writer behind
  :meth:`DatasetStore.create_empty <napari_conformal.io.store.DatasetStore.create_empty>` and
  :meth:`~napari_conformal.io.store.DatasetStore.write_image`, for stores larger than memory (each
  image validated before it is written).

Values are checked by :mod:`napari_conformal.core.validation` on what is stored (after the cast to
the storage dtype), with the sum tolerance of the samples' storage dtype unless ``atol`` is given.
Every chunk is written, even one equal to the fill value (an all-background label image), so a chunk
missing on disk always means damage or an image never written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from napari_conformal.core.validation import check_image, check_label, check_samples
from napari_conformal.errors import ConformalError, StoreValidationError
from napari_conformal.io.atomic import atomic_directory, check_target
from napari_conformal.io.feature_cache import FEATURES, check_features_in_memory, write_features_array
from napari_conformal.io.validate import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Layout,
    check_layout,
    labels_storage_dtype,
    normalize_features_info,
    normalize_label_names,
    normalize_sampler,
    normalize_spacing,
    resolve_atol,
)

if TYPE_CHECKING:
    from napari_conformal.io.store import DatasetStore

__all__ = ["WRITE_CONFIG", "create_empty", "create_store", "prepare_image", "write_one"]

#: zarr array configuration of every write: store chunks equal to the fill value too.
WRITE_CONFIG = {"write_empty_chunks": True}
_WHAT = "napari-conformal dataset store"


# ------------------------------------------------------------------------------------------- helpers


def _is_store_dir(path: Path) -> bool:
    """Whether ``path`` holds a zarr group whose ``format`` attribute is ours (for overwrite=True)."""
    meta = path / "zarr.json"
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and (doc.get("attributes") or {}).get("format") == FORMAT_NAME


def _as_array(name: str, value: Any) -> Any:
    """Return ``value`` if it is array-like with shape/dtype/indexing (numpy, zarr, dask), else asarray."""
    if value is None:
        raise StoreValidationError(f"{name}: array is required")
    if hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__getitem__"):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise StoreValidationError(f"{name}: cannot be converted to an array: {exc}") from None


def _cast(values: Any, dtype: Any) -> np.ndarray:
    """``values`` as a numpy array of ``dtype``; overflow becomes ±inf silently (validation reports it)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values).astype(dtype)


def _check_input_dtypes(images: Any, samples: Any, labels: Any | None) -> None:
    """Check that in-memory inputs can be stored without silent reinterpretation."""
    dt = np.dtype(images.dtype)
    if not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise StoreValidationError(f"images: dtype {dt}, expected real numbers")
    if not np.issubdtype(np.dtype(samples.dtype), np.floating):
        raise StoreValidationError(
            f"samples: dtype {np.dtype(samples.dtype)}, expected floating-point probabilities"
        )
    if labels is not None and not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise StoreValidationError(
            f"labels: dtype {np.dtype(labels.dtype)}, expected an integer dtype (e.g. .astype(np.uint8))"
        )


def _samples_storage_dtype(requested: Any, input_dtype: np.dtype | None) -> np.dtype:
    if requested is None:
        return np.dtype(np.float16) if input_dtype == np.float16 else np.dtype(np.float32)
    try:
        dt = np.dtype(requested)
    except TypeError:
        raise StoreValidationError(f"samples_dtype must be float16 or float32, got {requested!r}") from None
    if dt not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise StoreValidationError(f"samples_dtype must be float16 or float32, got {dt}")
    return dt


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise ConformalError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _group_attrs(spacing: tuple[float, ...], label_names: list[str], sampler: str) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "spacing": list(spacing),
        "label_names": list(label_names),
        "sampler": sampler,
    }


def _create_layout(
    root: Path,
    layout: Layout,
    attrs: dict[str, Any],
    samples_dtype: np.dtype,
    labels_dtype: np.dtype | None,
) -> zarr.Group:
    """Create the group and its empty per-image-chunked arrays under ``root``."""
    group = zarr.open_group(LocalStore(root), mode="w-", zarr_format=3, attributes=attrs)
    n, s = layout.n_images, layout.spatial_shape
    t, ll = layout.n_samples, layout.n_labels
    common = {"config": WRITE_CONFIG}
    group.create_array("images", shape=(n, *s), dtype=np.float32, chunks=(1, *s), fill_value=0.0, **common)
    group.create_array(
        "samples", shape=(n, t, ll, *s), dtype=samples_dtype, chunks=(1, t, ll, *s), fill_value=0.0, **common
    )
    if labels_dtype is not None:
        group.create_array(
            "labels", shape=(n, *s), dtype=labels_dtype, chunks=(1, *s), fill_value=0, **common
        )
    return group


# ------------------------------------------------------------------------------------- one image


def prepare_image(
    layout: Layout,
    samples_dtype: np.dtype,
    i: int,
    image: Any,
    samples: Any,
    label: Any | None,
    *,
    atol: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Image ``i`` as it will be stored, every value checked: ``(image, samples, label)``.

    The image is cast to float32 and the samples to ``samples_dtype`` before the checks, so they see
    what a reader will see. The label is required exactly when the layout has labels.

    Raises
    ------
    StoreValidationError
        Naming the array, the image and the problem ("samples, image 3: …").
    """
    s = layout.spatial_shape
    img = np.asarray(image)
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise StoreValidationError(f"images, image {i}: dtype {img.dtype}, expected real numbers")
    img = check_image(_cast(img, np.float32), i, shape=s)

    smp = np.asarray(samples)
    expected = (layout.n_samples, layout.n_labels, *s)
    if not np.issubdtype(smp.dtype, np.floating):
        raise StoreValidationError(f"samples, image {i}: dtype {smp.dtype}, expected floating point")
    if smp.shape != expected:
        raise StoreValidationError(f"samples, image {i}: shape {smp.shape}, expected (T, L, *S) = {expected}")
    smp = check_samples(_cast(smp, samples_dtype), i, atol=resolve_atol(atol, samples_dtype))

    lab = None
    if layout.has_labels:
        if label is None:
            raise StoreValidationError(f"labels, image {i}: the store has labels, pass label=")
        lab = check_label(label, i, n_labels=layout.n_labels, shape=s)
    elif label is not None:
        raise StoreValidationError(f"labels, image {i}: the store was created without labels")
    return img, smp, lab


def write_one(
    arrays: Mapping[str, zarr.Array],
    i: int,
    image: np.ndarray,
    samples: np.ndarray,
    label: np.ndarray | None,
) -> None:
    """Write one already-validated image (samples last: their presence marks the image as written)."""
    arrays["images"][i] = image
    if label is not None:
        arrays["labels"][i] = label.astype(arrays["labels"].dtype)
    arrays["samples"][i] = samples


# ------------------------------------------------------------------------------------ whole stores


def create_empty(
    path: str | os.PathLike[str],
    n_images: int,
    spatial_shape: Sequence[int],
    n_samples: int,
    n_labels: int,
    *,
    samples_dtype: str | np.dtype = "float16",
    labels: bool = True,
    spacing: Sequence[float] | None = None,
    label_names: Sequence[str] | None = None,
    sampler: str = "unknown",
    overwrite: bool = False,
) -> DatasetStore:
    """:meth:`DatasetStore.create_empty <napari_conformal.io.store.DatasetStore.create_empty>` (see there)."""
    from napari_conformal.io.store import DatasetStore

    n = _positive_int("n_images", n_images)
    t = _positive_int("n_samples", n_samples)
    ll = _positive_int("n_labels", n_labels)
    if isinstance(spatial_shape, str | bytes) or not isinstance(spatial_shape, Sequence):
        raise ConformalError(f"spatial_shape must be (Y, X) or (Z, Y, X), got {spatial_shape!r}")
    s = tuple(_positive_int(f"spatial_shape[{k}]", v) for k, v in enumerate(spatial_shape))
    shapes = {"images": (n, *s), "samples": (n, t, ll, *s)}
    if labels:
        shapes["labels"] = (n, *s)
    layout = check_layout(shapes)
    sdt = _samples_storage_dtype(samples_dtype, None)
    attrs = _group_attrs(
        normalize_spacing(spacing, layout.ndim),
        normalize_label_names(label_names, ll),
        normalize_sampler(sampler),
    )
    with atomic_directory(path, overwrite=overwrite, replaceable=_is_store_dir, what=_WHAT) as tmp:
        _create_layout(tmp, layout, attrs, sdt, labels_storage_dtype(ll) if labels else None)
    return DatasetStore(path, "r+")


def create_store(
    path: str | os.PathLike[str],
    images: Any,
    samples: Any,
    labels: Any | None = None,
    *,
    spacing: Sequence[float] | None = None,
    label_names: Sequence[str] | None = None,
    sampler: str = "unknown",
    features: Any | None = None,
    features_info: Mapping[str, Any] | None = None,
    samples_dtype: str | np.dtype | None = None,
    atol: float | None = None,
    overwrite: bool = False,
) -> DatasetStore:
    """Write arrays to a new dataset store, validating everything first.

    Parameters
    ----------
    path : path-like
        Target directory. Must not exist unless ``overwrite=True`` (which replaces only an existing
        dataset store or an empty directory).
    images : array ``(N, *S)``
        Real-valued images, stored as float32. S = ``(Y, X)`` or ``(Z, Y, X)``.
    samples : array ``(N, T, L, *S)``
        Softmax probabilities, L ≥ 2 (background first).
    labels : integer array ``(N, *S)``, optional
        Ground truth in 0..L−1 (stored as uint8 for L ≤ 256).
    spacing : sequence of float, optional
        Voxel size in mm per spatial axis; default 1.0.
    label_names : sequence of str, optional
        L distinct class names; default ``["background", "foreground"]`` / ``"class k"``.
    sampler : str
        Free text ("mc-dropout", "ensemble", …).
    features : array ``(N, C, *S')`` or sequence of N arrays ``(C, *S')``, optional
        Precomputed features, stored as float16.
    features_info : dict, optional
        JSON description of the features, recorded with the ``features`` array (``store.features_info``).
    samples_dtype : {None, "float16", "float32"}
        Storage precision; None keeps float16 input as float16 and stores anything else as float32.
    atol : float, optional
        Tolerance on ``|Σ_l p_l − 1|`` (default 1e-3 for float16 storage, 1e-4 for float32).
    overwrite : bool
        Replace an existing store.

    Returns
    -------
    DatasetStore
        The new store, opened ``"r+"``.

    Raises
    ------
    StoreValidationError
        Any array violates the format (nothing is written).
    StoreExistsError
        (a :class:`FileExistsError`) ``path`` exists and ``overwrite`` is False, or it is not a store.
    """
    from napari_conformal.io.store import DatasetStore

    images = _as_array("images", images)
    samples = _as_array("samples", samples)
    if labels is not None:
        labels = _as_array("labels", labels)
    _check_input_dtypes(images, samples, labels)
    shapes = {"images": tuple(images.shape), "samples": tuple(samples.shape)}
    if labels is not None:
        shapes["labels"] = tuple(labels.shape)
    layout = check_layout(shapes)
    sdt = _samples_storage_dtype(samples_dtype, np.dtype(samples.dtype))
    ldt = labels_storage_dtype(layout.n_labels) if labels is not None else None
    resolve_atol(atol, sdt)
    attrs = _group_attrs(
        normalize_spacing(spacing, layout.ndim),
        normalize_label_names(label_names, layout.n_labels),
        normalize_sampler(sampler),
    )
    if features is not None:
        normalize_features_info(features_info)
    check_target(path, overwrite=overwrite, replaceable=_is_store_dir, what=_WHAT)

    def image_arrays(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        lab = None if labels is None else labels[i]
        return prepare_image(layout, sdt, i, images[i], samples[i], lab, atol=atol)

    # Pass 1: every value, before anything touches the disk.
    for i in range(layout.n_images):
        image_arrays(i)
    if features is not None:
        check_features_in_memory(features, layout)

    # Pass 2: write under a temporary name, rename into place.
    with atomic_directory(path, overwrite=overwrite, replaceable=_is_store_dir, what=_WHAT) as tmp:
        group = _create_layout(tmp, layout, attrs, sdt, ldt)
        arrays = {
            name: group[name].with_config(WRITE_CONFIG)
            for name in ("images", "samples", "labels")
            if name in group
        }
        for i in range(layout.n_images):
            write_one(arrays, i, *image_arrays(i))
        if features is not None:
            for _ in write_features_array(tmp / FEATURES, features, layout, features_info):
                pass
    return DatasetStore(path, "r+")
