"""Rules of the dataset store format (docs/store.md): layout, attributes and dtypes, as pure functions.

The same rules serve every caller: :func:`~napari_conformal.io.store_write.create_store` checks
in-memory arrays before anything is written, :meth:`~napari_conformal.io.store.DatasetStore.write_image`
checks each image before it is stored, and :func:`~napari_conformal.io.store.open_store` checks a store
on disk. Every failure raises :class:`~napari_conformal.errors.StoreValidationError` with a message that
names the array (``images``, ``labels``, ``samples``, ``features`` or an attribute), the image index where
one applies, and the problem.

The *values* of an image (finite, probabilities in [0, 1] summing to 1, labels in 0..L−1) are checked by
:mod:`napari_conformal.core.validation`, for stores and in-memory data alike; this module adds only what
the store format itself says (the features cache must be finite after its float16 cast, the tolerance a
store's samples dtype implies).

Format (zarr v3 group)::

    images   (N, *S)        float32            S = (Y, X) or (Z, Y, X)
    labels   (N, *S)        integer, 0..L-1    optional
    samples  (N, T, L, *S)  float16 / float32  each (t, voxel) sums to 1 over L
    features (N, C, *S')    float16            optional, len(S') == len(S)

    group attrs: format="napari-conformal-dataset", version=1, spacing (mm per spatial axis),
                 label_names (L strings), sampler (str)
    features array attrs: features = {n_channels, grid_shape, extractor, ...} (the record of how the
                 cache was made, committed with the data); write_id (unique per write)

Stores written before the record moved into the features array keep it in the group attribute
``features``; it is read when the array has no record of its own and agrees with the array's shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_conformal.core.validation import check_finite, sum_tolerance
from napari_conformal.errors import ConformalError, StoreValidationError

__all__ = [
    "ARRAY_NAMES",
    "FEATURES_RECORD_KEY",
    "FEATURES_WRITE_ID_KEY",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Layout",
    "Metadata",
    "check_features",
    "check_format_attrs",
    "check_layout",
    "check_metadata",
    "check_stored_dtypes",
    "default_label_names",
    "features_record",
    "labels_storage_dtype",
    "normalize_features_info",
    "normalize_label_names",
    "normalize_sampler",
    "normalize_spacing",
    "resolve_atol",
]

FORMAT_NAME = "napari-conformal-dataset"
FORMAT_VERSION = 1
#: The arrays the format defines, required ones first.
ARRAY_NAMES = ("images", "samples", "labels", "features")
#: Attribute of the ``features`` array holding its record (channels, grid, extractor description).
FEATURES_RECORD_KEY = "features"
#: Attribute of the ``features`` array naming the write that made it (a new value for every write).
FEATURES_WRITE_ID_KEY = "write_id"
_REQUIRED = ("images", "samples")

_SAMPLES_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
_FEATURES_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


@dataclass(frozen=True)
class Layout:
    """Sizes of a store, as implied by its array shapes.

    Attributes
    ----------
    n_images : int
        N, number of images.
    spatial_shape : tuple of int
        S, ``(Y, X)`` or ``(Z, Y, X)``.
    n_samples : int
        T, softmax samples per image.
    n_labels : int
        L, number of classes (background included).
    has_labels : bool
        Whether a ``labels`` array is present.
    feature_shape : tuple of int or None
        ``(C, *S')`` of the ``features`` array per image, None when absent.
    """

    n_images: int
    spatial_shape: tuple[int, ...]
    n_samples: int
    n_labels: int
    has_labels: bool
    feature_shape: tuple[int, ...] | None = None

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return len(self.spatial_shape)


@dataclass(frozen=True)
class Metadata:
    """Normalised group attributes other than format and version."""

    spacing: tuple[float, ...]
    label_names: list[str]
    sampler: str


# ----------------------------------------------------------------------------------------- attributes


def check_format_attrs(attrs: Mapping[str, Any]) -> None:
    """Check the ``format`` and ``version`` attributes that mark a napari-conformal store.

    Raises
    ------
    StoreValidationError
        When ``format`` is missing or different, or ``version`` is not a supported integer.
    """
    fmt = attrs.get("format")
    if fmt is None:
        raise StoreValidationError(
            f"attrs['format'] is missing: this zarr group is not a {FORMAT_NAME!r} store"
        )
    if fmt != FORMAT_NAME:
        raise StoreValidationError(f"attrs['format'] is {fmt!r}, expected {FORMAT_NAME!r}")
    version = attrs.get("version")
    if version is None:
        raise StoreValidationError("attrs['version'] is missing")
    if isinstance(version, bool) or not isinstance(version, int):
        raise StoreValidationError(f"attrs['version'] must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise StoreValidationError(
            f"attrs['version'] is {version}, newer than the version this napari-conformal reads "
            f"({FORMAT_VERSION}); upgrade napari-conformal"
        )
    if version != FORMAT_VERSION:
        raise StoreValidationError(
            f"attrs['version'] is {version}: unknown store version (supported: {FORMAT_VERSION})"
        )


def default_label_names(n_labels: int) -> list[str]:
    """Return ``["background", "foreground"]`` for L = 2, else ``["background", "class 1", ...]``."""
    if n_labels == 2:
        return ["background", "foreground"]
    return ["background"] + [f"class {k}" for k in range(1, n_labels)]


def normalize_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Return the voxel spacing (mm per spatial axis) as a tuple of ``ndim`` positive floats.

    ``None`` means 1.0 mm on every axis.
    """
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, (str, bytes)) or not isinstance(spacing, Sequence | np.ndarray):
        raise StoreValidationError(
            f"spacing must be a sequence of {ndim} positive numbers (mm per axis), got {spacing!r}"
        )
    values = list(spacing)
    if len(values) != ndim:
        raise StoreValidationError(
            f"spacing has {len(values)} entries but the images have {ndim} spatial axes: {values!r}"
        )
    out = []
    for axis, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise StoreValidationError(f"spacing[{axis}] must be a number, got {v!r}")
        fv = float(v)
        if not math.isfinite(fv) or fv <= 0:
            raise StoreValidationError(f"spacing[{axis}] must be finite and > 0, got {v!r}")
        out.append(fv)
    return tuple(out)


def normalize_label_names(label_names: Sequence[str] | None, n_labels: int) -> list[str]:
    """Return ``n_labels`` distinct class names (background first); None gives the defaults."""
    if label_names is None:
        return default_label_names(n_labels)
    if isinstance(label_names, str) or not isinstance(label_names, Sequence):
        raise StoreValidationError(f"label_names must be a list of {n_labels} strings, got {label_names!r}")
    names = list(label_names)
    if len(names) != n_labels:
        raise StoreValidationError(
            f"label_names has {len(names)} entries but samples have L={n_labels} labels: {names!r}"
        )
    for k, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise StoreValidationError(f"label_names[{k}] must be a non-empty string, got {name!r}")
    if len(set(names)) != len(names):
        raise StoreValidationError(f"label_names must be distinct, got {names!r}")
    return names


def normalize_sampler(sampler: str | None) -> str:
    """Return the sampler description (free text); None gives ``"unknown"``."""
    if sampler is None:
        return "unknown"
    if not isinstance(sampler, str):
        raise StoreValidationError(f"sampler must be a string, got {sampler!r}")
    return sampler


def normalize_features_info(info: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return a JSON-serialisable copy of the user's feature description (extractor name, …)."""
    if info is None:
        return {}
    if not isinstance(info, Mapping):
        raise StoreValidationError(f"features info must be a dict, got {type(info).__name__}")
    out = dict(info)
    for key in out:
        if not isinstance(key, str):
            raise StoreValidationError(f"features info keys must be strings, got {key!r}")
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreValidationError(f"features info must be JSON-serialisable: {exc}") from None
    return out


def check_metadata(attrs: Mapping[str, Any], layout: Layout) -> Metadata:
    """Check and normalise the ``spacing``, ``label_names`` and ``sampler`` group attributes.

    They are optional in stores written by other tools (defaults: 1.0 mm, default names,
    ``"unknown"``) but must be valid when present. A legacy ``features`` group attribute must be a
    dict; what it says is weighed by :func:`features_record`.
    """
    try:
        spacing = normalize_spacing(attrs.get("spacing"), layout.ndim)
        label_names = normalize_label_names(attrs.get("label_names"), layout.n_labels)
        sampler = normalize_sampler(attrs.get("sampler"))
    except StoreValidationError as exc:
        raise StoreValidationError(f"attrs: {exc}") from None
    legacy = attrs.get("features")
    if legacy is not None and not isinstance(legacy, Mapping):
        raise StoreValidationError(f"attrs['features'] must be a dict, got {legacy!r}")
    return Metadata(spacing=spacing, label_names=label_names, sampler=sampler)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _record_agrees(record: Mapping[str, Any], feature_shape: tuple[int, ...]) -> bool:
    """Whether a record's ``n_channels`` and ``grid_shape`` are those of the array, ``(C, *S')``."""
    channels, grid = record.get("n_channels"), record.get("grid_shape")
    return (
        _is_int(channels)
        and channels == feature_shape[0]
        and isinstance(grid, list)
        and all(_is_int(g) for g in grid)
        and tuple(grid) == tuple(feature_shape[1:])
    )


def features_record(
    array_attrs: Mapping[str, Any] | None,
    group_attrs: Mapping[str, Any],
    feature_shape: tuple[int, ...] | None,
) -> dict[str, Any] | None:
    """The record of the features cache (``store.features_info``), derived from the array it describes.

    Parameters
    ----------
    array_attrs : mapping or None
        Attributes of the ``features`` array (None when the store has none).
    group_attrs : mapping
        Group attributes (a store from before the record moved into the array keeps it there).
    feature_shape : tuple of int or None
        ``(C, *S')`` of the array.

    Returns
    -------
    dict or None
        The array's own record; else a legacy group record that agrees with the array's shape; else
        None (no array, or data without a trustworthy record: the cache is then never used).

    Raises
    ------
    StoreValidationError
        The array's own record is not a dict or disagrees with the array (the writer commits both
        together, so this is damage).
    """
    if array_attrs is None or feature_shape is None:
        return None
    record = array_attrs.get(FEATURES_RECORD_KEY)
    if record is not None:
        if not isinstance(record, Mapping):
            raise StoreValidationError(
                f"features: its record (array attribute 'features') must be a dict, got {record!r}"
            )
        if not _record_agrees(record, feature_shape):
            raise StoreValidationError(
                f"features: its record says n_channels={record.get('n_channels')!r}, "
                f"grid_shape={record.get('grid_shape')!r}, but the array holds (C, *S') = {feature_shape}; "
                "the store is damaged (write the features again with overwrite=True)"
            )
        return dict(record)
    legacy = group_attrs.get("features")
    if isinstance(legacy, Mapping) and _record_agrees(legacy, feature_shape):
        return dict(legacy)
    return None


# ------------------------------------------------------------------------------------ shapes / dtypes


def _spatial_text(ndim: int) -> str:
    return "(Y, X)" if ndim == 2 else "(Z, Y, X)"


def check_layout(shapes: Mapping[str, tuple[int, ...]]) -> Layout:
    """Check the array shapes against each other and return the store's sizes.

    Parameters
    ----------
    shapes : mapping
        Array name → shape, for the arrays present (``images`` and ``samples`` are required;
        ``labels`` and ``features`` optional; other names are ignored).

    Raises
    ------
    StoreValidationError
        Missing required array, wrong number of axes, empty axis, or a shape mismatch between
        images, labels, samples and features.
    """
    for name in _REQUIRED:
        if name not in shapes:
            raise StoreValidationError(f"{name}: required array is missing")
    img = tuple(int(s) for s in shapes["images"])
    if len(img) not in (3, 4):
        raise StoreValidationError(
            f"images: expected shape (N, Y, X) or (N, Z, Y, X), got {img} ({len(img)} axes)"
        )
    if any(s < 1 for s in img):
        raise StoreValidationError(f"images: every axis must be non-empty, got shape {img}")
    n, spatial = img[0], img[1:]
    ndim = len(spatial)
    sshape = _spatial_text(ndim)

    smp = tuple(int(s) for s in shapes["samples"])
    if len(smp) != ndim + 3:
        raise StoreValidationError(
            f"samples: expected shape (N, T, L, *{sshape}) with {ndim + 3} axes to match images {img}, "
            f"got {smp}"
        )
    if smp[0] != n:
        raise StoreValidationError(
            f"shape mismatch between images and samples: images has N={n} images, samples has N={smp[0]}"
        )
    if smp[3:] != spatial:
        raise StoreValidationError(
            f"shape mismatch between images and samples: spatial shape {spatial} vs {smp[3:]}"
        )
    if smp[1] < 1:
        raise StoreValidationError(f"samples: needs at least one sample (T >= 1), got shape {smp}")
    if smp[2] < 2:
        raise StoreValidationError(
            f"samples: needs at least two labels (L >= 2, background first), got L={smp[2]}"
        )

    has_labels = "labels" in shapes
    if has_labels:
        lab = tuple(int(s) for s in shapes["labels"])
        if lab != img:
            raise StoreValidationError(
                f"shape mismatch between images and labels: images {img}, labels {lab}"
            )

    feature_shape = None
    if "features" in shapes:
        feat = tuple(int(s) for s in shapes["features"])
        if len(feat) != ndim + 2:
            raise StoreValidationError(
                f"features: expected shape (N, C, *S') with {ndim} spatial axes like the images, got {feat}"
            )
        if feat[0] != n:
            raise StoreValidationError(
                f"shape mismatch between images and features: images has N={n}, features has N={feat[0]}"
            )
        if any(s < 1 for s in feat):
            raise StoreValidationError(f"features: every axis must be non-empty, got shape {feat}")
        feature_shape = feat[1:]

    return Layout(
        n_images=n,
        spatial_shape=spatial,
        n_samples=smp[1],
        n_labels=smp[2],
        has_labels=has_labels,
        feature_shape=feature_shape,
    )


def check_stored_dtypes(dtypes: Mapping[str, np.dtype]) -> None:
    """Check the dtypes of the arrays present in a store.

    ``images`` float32, ``samples`` float16/float32, ``labels`` any integer (not bool),
    ``features`` float16 (float32 accepted from other writers).
    """
    if "images" in dtypes and np.dtype(dtypes["images"]) != np.float32:
        raise StoreValidationError(f"images: dtype {np.dtype(dtypes['images'])}, expected float32")
    if "samples" in dtypes and np.dtype(dtypes["samples"]) not in _SAMPLES_DTYPES:
        raise StoreValidationError(
            f"samples: dtype {np.dtype(dtypes['samples'])}, expected float16 or float32"
        )
    if "labels" in dtypes and not np.issubdtype(np.dtype(dtypes["labels"]), np.integer):
        raise StoreValidationError(f"labels: dtype {np.dtype(dtypes['labels'])}, expected an integer dtype")
    if "features" in dtypes and np.dtype(dtypes["features"]) not in _FEATURES_DTYPES:
        raise StoreValidationError(f"features: dtype {np.dtype(dtypes['features'])}, expected float16")


def labels_storage_dtype(n_labels: int) -> np.dtype:
    """Smallest unsigned integer dtype holding 0..L−1 (uint8, uint16, else int32)."""
    if n_labels <= 256:
        return np.dtype(np.uint8)
    if n_labels <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def resolve_atol(atol: float | None, samples_dtype: Any) -> float:
    """The tolerance on ``|Σ_l p_l − 1|``: ``atol`` when given (finite, ≥ 0), else that of the stored dtype.

    The default is :func:`napari_conformal.core.validation.sum_tolerance` (1e-3 for float16 samples,
    1e-4 for float32).
    """
    if atol is None:
        return sum_tolerance(samples_dtype)
    value = float(atol)
    if not math.isfinite(value) or value < 0:
        raise ConformalError(f"atol must be a finite number >= 0, got {atol!r}")
    return value


def check_features(index: int, features: np.ndarray) -> None:
    """The features ``(C, *S')`` of one image as stored: every value finite (float16 overflows to inf)."""
    check_finite(f"features, image {int(index)}", np.asarray(features))
