"""What the calibration engine reads: a dataset store, or the same arrays held in memory.

Both kinds answer the reading interface of :class:`~napari_conformal.io.store.DatasetStore`
(``n_images``, ``spatial_shape``, ``n_samples``, ``n_labels``, ``spacing``, ``samples_dtype``,
``has_labels``, ``has_features``, ``path``, ``image(i)``, ``samples(i)``, ``label(i)``,
``identity()``), so :func:`napari_conformal.api.calibrate` takes a store, its path, or a notebook's
arrays alike (:func:`as_dataset`). :func:`read_image` reads one image, its samples and its label
and validates their values in the same pass (:mod:`napari_conformal.core.validation`), with the
sum tolerance of the dtype the samples were stored in.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_conformal.core.validation import check_image, check_label, check_samples
from napari_conformal.errors import StoreValidationError

__all__ = ["ArrayDataset", "ImageData", "as_dataset", "read_image"]


@dataclass(frozen=True)
class ImageData:
    """One image as the methods need it, values validated.

    Attributes
    ----------
    index : int
        Its index in the dataset.
    image : ndarray of float32, shape S
    samples : ndarray, shape (T, L, *S)
        In the stored dtype (float16 or float32).
    label : ndarray of int64, shape S, or None
    """

    index: int
    image: np.ndarray
    samples: np.ndarray
    label: np.ndarray | None


class ArrayDataset:
    """Images, softmax samples and (optional) labels held in memory, read like a dataset store.

    Parameters
    ----------
    images : array, shape (N, *S)
        Real-valued images; S = (Y, X) or (Z, Y, X).
    samples : array, shape (N, T, L, *S)
        Softmax probabilities (float16 or float32 as the model wrote them; kept as given).
    labels : integer array, shape (N, *S), optional
        Ground truth in 0..L−1.
    spacing : sequence of float, optional
        Voxel size in mm per spatial axis (default 1.0).
    label_names : sequence of str, optional
        L class names, background first.

    Notes
    -----
    Shapes and dtypes are checked here; values are checked image by image when they are read
    (:func:`read_image`), as for a store.
    """

    path: Path | None = None
    has_features = False
    features_info = None
    mode = "r"

    def __init__(
        self,
        images: Any,
        samples: Any,
        labels: Any | None = None,
        *,
        spacing: Sequence[float] | None = None,
        label_names: Sequence[str] | None = None,
    ) -> None:
        from napari_conformal.io.validate import check_layout, normalize_label_names, normalize_spacing

        self._images = np.asarray(images)
        self._samples = np.asarray(samples)
        self._labels = None if labels is None else np.asarray(labels)
        shapes = {"images": self._images.shape, "samples": self._samples.shape}
        if self._labels is not None:
            shapes["labels"] = self._labels.shape
        self._layout = check_layout(shapes)
        if not np.issubdtype(self._samples.dtype, np.floating):
            raise StoreValidationError(f"samples: dtype {self._samples.dtype}, expected floating-point probabilities")
        if self._labels is not None and not (
            np.issubdtype(self._labels.dtype, np.integer) or self._labels.dtype == np.bool_
        ):
            raise StoreValidationError(f"labels: dtype {self._labels.dtype}, expected an integer label map")
        self.spacing = normalize_spacing(spacing, self._layout.ndim)
        self.label_names = normalize_label_names(label_names, self._layout.n_labels)
        self._identity: str | None = None

    @property
    def n_images(self) -> int:
        """N."""
        return self._layout.n_images

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """S."""
        return self._layout.spatial_shape

    @property
    def ndim(self) -> int:
        """Spatial axes, 2 or 3."""
        return self._layout.ndim

    @property
    def n_samples(self) -> int:
        """T."""
        return self._layout.n_samples

    @property
    def n_labels(self) -> int:
        """L."""
        return self._layout.n_labels

    @property
    def has_labels(self) -> bool:
        """Whether ground truth was given."""
        return self._labels is not None

    @property
    def samples_dtype(self) -> np.dtype:
        """The dtype the samples were given in."""
        return self._samples.dtype

    def __len__(self) -> int:
        return self.n_images

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(N={self.n_images}, S={self.spatial_shape}, T={self.n_samples}, L={self.n_labels}, "
            f"labels={self.has_labels}, samples {self.samples_dtype})"
        )

    def _index(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"image index must be an integer, got {type(i).__name__}")
        n = self.n_images
        if not -n <= int(i) < n:
            raise IndexError(f"image index {int(i)} is out of range for {n} images (0..{n - 1})")
        return int(i) % n

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as float32."""
        return np.asarray(self._images[self._index(i)], dtype=np.float32)

    def samples(self, i: int) -> np.ndarray:
        """Samples of image ``i`` in their own dtype, shape (T, L, *S)."""
        return np.asarray(self._samples[self._index(i)])

    def label(self, i: int) -> np.ndarray:
        """Ground truth of image ``i`` as int64."""
        if self._labels is None:
            raise StoreValidationError("labels: no ground truth was given")
        return np.asarray(self._labels[self._index(i)], dtype=np.int64)

    def identity(self) -> str:
        """Content identity (BLAKE2b-128 of the shapes, dtypes and bytes of images, samples, labels)."""
        if self._identity is None:
            h = hashlib.blake2b(digest_size=16)
            for name, arr in (("images", self._images), ("samples", self._samples), ("labels", self._labels)):
                if arr is None:
                    continue
                h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
                h.update(np.ascontiguousarray(arr).tobytes())
            self._identity = "arrays:" + h.hexdigest()
        return self._identity


def as_dataset(
    data: Any = None,
    *,
    images: Any = None,
    samples: Any = None,
    labels: Any = None,
    spacing: Sequence[float] | None = None,
) -> Any:
    """A dataset from a store, a store path, a mapping of arrays, or arrays given by keyword.

    Parameters
    ----------
    data : DatasetStore, ArrayDataset, path, or mapping, optional
        A store (or its path, opened read-only), a dataset, or ``{"images", "samples", "labels"}``.
    images, samples, labels : array, optional
        In-memory arrays (``images`` (N, *S), ``samples`` (N, T, L, *S), ``labels`` (N, *S)) instead of ``data``.
    spacing : sequence of float, optional
        Voxel size of in-memory arrays.

    Raises
    ------
    StoreValidationError
        Neither or both of ``data`` and arrays, a missing store, or arrays that do not fit together.
    """
    given = any(x is not None for x in (images, samples, labels))
    if data is not None and given:
        raise StoreValidationError("pass either a store (or dataset) or images=/samples=/labels= arrays, not both")
    if data is None:
        if images is None or samples is None:
            raise StoreValidationError("in-memory data needs both images= (N, *S) and samples= (N, T, L, *S)")
        return ArrayDataset(images, samples, labels, spacing=spacing)
    if isinstance(data, str | os.PathLike):
        from napari_conformal.io.store import open_store

        return open_store(data, mode="r")
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"images", "samples", "labels", "spacing"})
        if unknown:
            raise StoreValidationError(f"unknown keys {unknown} in the data mapping (images, samples, labels, spacing)")
        return as_dataset(
            images=data.get("images"), samples=data.get("samples"), labels=data.get("labels"), spacing=data.get("spacing")
        )
    if hasattr(data, "image") and hasattr(data, "samples") and hasattr(data, "identity"):
        return data
    raise StoreValidationError(f"expected a dataset store, its path or arrays, got {type(data).__name__}")


def read_image(data: Any, i: int, *, with_label: bool = True) -> ImageData:
    """Image ``i`` of ``data`` with its samples and label, every value validated in one pass.

    Images finite; samples finite, in [0, 1] and summing to 1 over the labels within the tolerance
    of the dtype they are stored in; labels in 0..L−1. Chunks missing from a store are errors
    (:meth:`~napari_conformal.io.store.DatasetStore.samples` refuses to read fill values).

    Raises
    ------
    StoreValidationError
        Naming the array, the image and the problem.
    """
    i = int(i)
    image = check_image(data.image(i), i, shape=data.spatial_shape)
    samples = check_samples(data.samples(i), i, stored_dtype=data.samples_dtype, spatial_shape=data.spatial_shape)
    label = None
    if with_label:
        label = check_label(data.label(i), i, n_labels=data.n_labels, shape=data.spatial_shape)
    return ImageData(i, image, samples, label)
