"""The dataset store (SPEC §3): a zarr v3 group of images, softmax samples and optional labels.

One chunk per image (``images`` chunk ``(1, *S)``, ``samples`` chunk ``(1, T, L, *S)``), so
:meth:`DatasetStore.image`, :meth:`~DatasetStore.samples` and friends read exactly one image from
disk; the store may be far larger than memory. The format rules live in
:mod:`napari_conformal.io.validate`.

Three ways in:

* :func:`create_store` — in-memory (or any indexable) arrays → a new store. All values are
  validated before anything is written; the store is built under a temporary sibling name and
  renamed into place, so a failure never leaves a half-written store.
* :meth:`DatasetStore.create_empty` + :meth:`DatasetStore.write_image` — streaming writer for
  stores larger than memory (each image is validated before it is written).
* :func:`open_store` — open an existing store, read-only by default; the structure (attributes,
  shapes, dtypes) is validated on open, values on demand with :meth:`DatasetStore.validate`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from napari_conformal.errors import ConformalError, StoreExistsError, StoreValidationError
from napari_conformal.io.atomic import atomic_directory, check_target
from napari_conformal.io.validate import (
    ARRAY_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    Layout,
    check_features,
    check_format_attrs,
    check_image,
    check_label,
    check_layout,
    check_metadata,
    check_samples,
    check_stored_dtypes,
    default_atol,
    labels_storage_dtype,
    normalize_features_info,
    normalize_label_names,
    normalize_sampler,
    normalize_spacing,
)

__all__ = ["DatasetStore", "create_store", "open_store"]

_MODES = ("r", "r+")
_FEATURES_TMP = "features.partial"

Progress = Callable[[int, int], Any]


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


def _is_real_number_dtype(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def _check_input_dtypes(images: Any, samples: Any, labels: Any | None) -> None:
    """Check that in-memory inputs can be stored without silent reinterpretation."""
    if not _is_real_number_dtype(np.dtype(images.dtype)):
        raise StoreValidationError(f"images: dtype {np.dtype(images.dtype)}, expected real numbers")
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


def _resolve_atol(atol: float | None, samples_dtype: np.dtype) -> float:
    if atol is None:
        return default_atol(samples_dtype)
    value = float(atol)
    if not np.isfinite(value) or value < 0:
        raise ConformalError(f"atol must be a finite number >= 0, got {atol!r}")
    return value


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
    group.create_array("images", shape=(n, *s), dtype=np.float32, chunks=(1, *s), fill_value=0.0)
    group.create_array(
        "samples", shape=(n, t, ll, *s), dtype=samples_dtype, chunks=(1, t, ll, *s), fill_value=0.0
    )
    if labels_dtype is not None:
        group.create_array("labels", shape=(n, *s), dtype=labels_dtype, chunks=(1, *s), fill_value=0)
    return group


def _iter_features(features: Any, n_images: int, ndim: int) -> Iterable[np.ndarray]:
    """Yield per-image ``(C, *S')`` arrays from an ``(N, C, *S')`` array or a sequence of N arrays."""
    if hasattr(features, "shape") and hasattr(features, "__getitem__") and len(features.shape) == ndim + 2:
        if features.shape[0] != n_images:
            raise StoreValidationError(
                f"shape mismatch between images and features: images has N={n_images}, "
                f"features has N={features.shape[0]}"
            )
        return (np.asarray(features[i]) for i in range(n_images))
    if isinstance(features, np.ndarray):
        raise StoreValidationError(
            f"features: expected shape (N, C, *S') with {ndim} spatial axes, got {features.shape}"
        )
    return (np.asarray(f) for f in features)


def _write_features(
    group: zarr.Group,
    name: str,
    features: Any,
    layout: Layout,
    info: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Validate and write features into array ``name`` of ``group``; return the attrs entry."""
    writer = _iter_write_features(group, name, features, layout, info)
    while True:
        try:
            next(writer)
        except StopIteration as done:
            return done.value


def _iter_write_features(
    group: zarr.Group,
    name: str,
    features: Any,
    layout: Layout,
    info: Mapping[str, Any] | None,
) -> Generator[int, None, dict[str, Any]]:
    """:func:`_write_features` one image at a time: yields the number written, returns the attrs entry."""
    info_dict = normalize_features_info(info)
    array = None
    count = 0
    for i, feat in enumerate(_iter_features(features, layout.n_images, layout.ndim)):
        if i >= layout.n_images:
            raise StoreValidationError(f"features: more than N={layout.n_images} per-image arrays given")
        if not np.issubdtype(feat.dtype, np.floating) and not np.issubdtype(feat.dtype, np.integer):
            raise StoreValidationError(f"features, image {i}: dtype {feat.dtype}, expected real numbers")
        if array is None:
            if feat.ndim != layout.ndim + 1 or min(feat.shape, default=0) < 1:
                raise StoreValidationError(
                    f"features, image {i}: expected shape (C, *S') with {layout.ndim} spatial axes, "
                    f"got {feat.shape}"
                )
            shape = tuple(int(k) for k in feat.shape)
            array = group.create_array(
                name,
                shape=(layout.n_images, *shape),
                dtype=np.float16,
                chunks=(1, *shape),
                fill_value=0.0,
                overwrite=True,
            )
        elif feat.shape != array.shape[1:]:
            raise StoreValidationError(
                f"features, image {i}: shape {feat.shape} differs from image 0's {array.shape[1:]}"
            )
        stored = _cast(feat, np.float16)
        check_features(i, stored)
        array[i] = stored
        count += 1
        yield count
    if count != layout.n_images:
        raise StoreValidationError(f"features: got {count} per-image arrays, expected N={layout.n_images}")
    return {**info_dict, "n_channels": int(array.shape[1]), "grid_shape": [int(k) for k in array.shape[2:]]}


# --------------------------------------------------------------------------------------------- store


class DatasetStore:
    """An opened dataset store; reads one image at a time.

    Use :func:`open_store`, :func:`create_store` or :meth:`create_empty` rather than the
    constructor. The structure (attributes, shapes, dtypes) is validated when the store is opened, so
    the sizes below can be trusted; :meth:`validate` checks the values.

    Attributes
    ----------
    path : pathlib.Path
        Location of the zarr group.
    mode : str
        ``"r"`` (read-only; zarr itself refuses writes) or ``"r+"``.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "r") -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be 'r' (read-only) or 'r+' (read/write), got {mode!r}")
        self._path = Path(path)
        self._mode = mode
        self._group = self._open_group()
        self._load()

    # -- opening -----------------------------------------------------------------------------------

    def _open_group(self) -> zarr.Group:
        p = self._path
        if not p.exists():
            raise StoreValidationError(f"no dataset store at {p}: the path does not exist")
        if not p.is_dir():
            raise StoreValidationError(f"{p} is a file, not a dataset store (a zarr v3 directory)")
        meta = p / "zarr.json"
        if not meta.is_file():
            if (p / ".zgroup").exists() or (p / ".zarray").exists():
                raise StoreValidationError(
                    f"{p} is a zarr v2 store; the dataset store must be zarr v3 (re-create it)"
                )
            raise StoreValidationError(f"{p} is not a dataset store: no zarr.json (zarr v3 metadata)")
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreValidationError(f"{p}: cannot read zarr.json: {exc}") from None
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
            raise StoreValidationError(f"{p}: zarr.json is not zarr v3 metadata")
        if doc.get("node_type") != "group":
            raise StoreValidationError(f"{p} is a zarr array, not a dataset store (a zarr group)")
        try:
            return zarr.open_group(LocalStore(p, read_only=self._mode == "r"), mode=self._mode, zarr_format=3)
        except (ValueError, OSError, KeyError) as exc:
            raise StoreValidationError(f"{p}: cannot open the zarr group: {exc}") from None

    def _load(self) -> None:
        """(Re)read attributes and array metadata from disk and check the structure."""
        attrs = self._group.attrs.asdict()
        check_format_attrs(attrs)
        present = set(self._group.array_keys())
        arrays = {name: self._group[name] for name in ARRAY_NAMES if name in present}
        layout = check_layout({name: a.shape for name, a in arrays.items()})
        check_stored_dtypes({name: a.dtype for name, a in arrays.items()})
        meta = check_metadata(attrs, layout, has_features="features" in arrays)
        self._attrs = attrs
        self._arrays = arrays
        self._layout = layout
        self._meta = meta

    # -- creation ----------------------------------------------------------------------------------

    @classmethod
    def create_empty(
        cls,
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
        """Create a store with empty arrays, to be filled with :meth:`write_image`.

        Parameters
        ----------
        path : path-like
            Target directory; must not exist unless ``overwrite`` (which only replaces a dataset store
            or an empty directory).
        n_images, n_samples, n_labels : int
            N, T and L (L ≥ 2, background first).
        spatial_shape : sequence of int
            S, ``(Y, X)`` or ``(Z, Y, X)``.
        samples_dtype : {"float16", "float32"}
            Storage precision of the samples.
        labels : bool
            Whether to create a ``labels`` array (uint8 for L ≤ 256).
        spacing : sequence of float, optional
            Voxel size in mm per spatial axis (default 1.0).
        label_names : sequence of str, optional
            L class names, background first.
        sampler : str
            Free-text description of how the samples were drawn.
        overwrite : bool
            Replace an existing store at ``path``.

        Returns
        -------
        DatasetStore
            Opened in ``"r+"`` mode. Images never written read as zeros, and full validation reports
            their samples as all-zero.
        """
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
        with atomic_directory(
            path, overwrite=overwrite, replaceable=_is_store_dir, what="napari-conformal dataset store"
        ) as tmp:
            _create_layout(tmp, layout, attrs, sdt, labels_storage_dtype(ll) if labels else None)
        return cls(path, "r+")

    # -- properties --------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """Location of the store."""
        return self._path

    @property
    def mode(self) -> str:
        """``"r"`` or ``"r+"``."""
        return self._mode

    @property
    def n_images(self) -> int:
        """N, number of images."""
        return self._layout.n_images

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """S, ``(Y, X)`` or ``(Z, Y, X)``."""
        return self._layout.spatial_shape

    @property
    def ndim(self) -> int:
        """Number of spatial axes, 2 or 3."""
        return self._layout.ndim

    @property
    def n_samples(self) -> int:
        """T, softmax samples per image."""
        return self._layout.n_samples

    @property
    def n_labels(self) -> int:
        """L, classes including background."""
        return self._layout.n_labels

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm per spatial axis (1.0 where the store does not say)."""
        return self._meta.spacing

    @property
    def label_names(self) -> list[str]:
        """L class names, background first (a copy)."""
        return list(self._meta.label_names)

    @property
    def sampler(self) -> str:
        """How the samples were drawn ("mc-dropout", "ensemble", …; "unknown" if not recorded)."""
        return self._meta.sampler

    @property
    def has_labels(self) -> bool:
        """Whether the store holds ground truth."""
        return self._layout.has_labels

    @property
    def has_features(self) -> bool:
        """Whether the store holds precomputed features."""
        return self._layout.feature_shape is not None

    @property
    def feature_shape(self) -> tuple[int, ...] | None:
        """``(C, *S')`` of one image's features, or None."""
        return self._layout.feature_shape

    @property
    def features_info(self) -> dict[str, Any] | None:
        """The ``features`` attribute (channels, grid shape, extractor description), or None."""
        info = self._meta.features_info
        return copy.deepcopy(info) if info is not None else None

    @property
    def samples_dtype(self) -> np.dtype:
        """Storage dtype of the samples (float16 or float32)."""
        return np.dtype(self._arrays["samples"].dtype)

    @property
    def attrs(self) -> dict[str, Any]:
        """A deep copy of the group attributes."""
        return copy.deepcopy(self._attrs)

    def __len__(self) -> int:
        return self._layout.n_images

    def __repr__(self) -> str:
        return (
            f"DatasetStore({str(self._path)!r}, mode={self._mode!r}, N={self.n_images}, "
            f"S={self.spatial_shape}, T={self.n_samples}, L={self.n_labels}, labels={self.has_labels}, "
            f"features={self.has_features})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles as "re-open this path" (e.g. for worker processes); nothing of the data travels.
        return (open_store, (str(self._path), self._mode))

    def array(self, name: str) -> zarr.Array:
        """The underlying zarr array (lazy, chunked per image), e.g. for a napari/dask view.

        Read-only when the store was opened with ``mode="r"``.
        """
        if name not in self._arrays:
            raise KeyError(f"store has no array {name!r} (present: {sorted(self._arrays)})")
        return self._arrays[name]

    # -- reading -----------------------------------------------------------------------------------

    def _index(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"image index must be an integer, got {type(i).__name__}")
        n = self.n_images
        k = int(i)
        if not -n <= k < n:
            raise IndexError(f"image index {k} is out of range for a store of {n} images (0..{n - 1})")
        return k % n

    def _read(self, name: str, i: int, *index: Any) -> np.ndarray:
        """Image ``i`` of array ``name`` as stored; a missing or unreadable chunk is an error, never fill values."""
        k = self._index(i)
        missing = self.missing_chunks(name, k)
        if missing:
            raise StoreValidationError(
                f"{name}, image {k}: chunk {missing[0]} is missing from the store at {self._path} "
                f"({len(missing)} of its chunks; deleted, or the image was never written)"
            )
        try:
            return np.asarray(self._arrays[name][(k, *index)])
        except (ValueError, RuntimeError, OSError, TypeError, KeyError) as exc:
            raise StoreValidationError(
                f"{name}, image {k}: cannot decode its stored chunk ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}); the store is damaged"
            ) from None

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as float32, shape ``S``."""
        return np.asarray(self._read("images", i), dtype=np.float32)

    def label(self, i: int) -> np.ndarray:
        """Ground truth of image ``i`` as int64, shape ``S``, values in 0..L−1."""
        if not self.has_labels:
            raise StoreValidationError(f"labels: the store at {self._path} has no ground truth")
        return np.asarray(self._read("labels", i), dtype=np.int64)

    def samples(self, i: int) -> np.ndarray:
        """Softmax samples of image ``i`` in the stored dtype (float16 or float32), shape ``(T, L, *S)``.

        Kept in the stored dtype so that checks apply that dtype's sum tolerance and memory stays
        half for float16 stores; the methods compute in float32/float64.
        """
        return self._read("samples", i)

    def foreground(self, i: int, cls: int = 1) -> np.ndarray:
        """Mean over the T samples of the probability of class ``cls``, float32, shape ``S``."""
        if isinstance(cls, bool) or not isinstance(cls, int | np.integer) or not 0 <= cls < self.n_labels:
            raise ConformalError(f"cls must be a class index in 0..{self.n_labels - 1}, got {cls!r}")
        probs = np.asarray(self._read("samples", i, slice(None), int(cls)), dtype=np.float32)
        return probs.mean(axis=0, dtype=np.float32)

    def features(self, i: int) -> np.ndarray:
        """Precomputed features of image ``i`` as float32, shape ``(C, *S')``."""
        if not self.has_features:
            raise StoreValidationError(f"features: the store at {self._path} has no features array")
        return np.asarray(self._read("features", i), dtype=np.float32)

    # -- validation --------------------------------------------------------------------------------

    def validate(
        self,
        full: bool = True,
        *,
        atol: float | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Check the store; never writes to it.

        Parameters
        ----------
        full : bool
            False: attributes, array presence, shapes and dtypes only (re-read from disk).
            True: additionally read every image and check that images, samples and features are
            finite, samples lie in [0, 1] and sum to 1 over the labels within ``atol``, and labels
            lie in 0..L−1.
        atol : float, optional
            Tolerance on ``|Σ_l p_l − 1|``; default 1e-3 for float16 samples, 1e-4 for float32.
        progress : callable, optional
            ``progress(done, total)`` after each image of a full check.

        Raises
        ------
        StoreValidationError
            Naming the array, the image index and the problem.
        """
        self._load()
        if not full:
            return
        tol = _resolve_atol(atol, self.samples_dtype)
        if progress is not None and not callable(progress):
            raise TypeError("progress must be a callable progress(done, total)")
        n = self.n_images
        for i in range(n):
            check_image(i, np.asarray(self._arrays["images"][i]))
            check_samples(i, np.asarray(self._arrays["samples"][i], dtype=np.float32), tol)
            if self.has_labels:
                check_label(i, np.asarray(self._arrays["labels"][i]), self.n_labels)
            if self.has_features:
                check_features(i, np.asarray(self._arrays["features"][i]))
            if progress is not None:
                progress(i + 1, n)

    # -- identity ----------------------------------------------------------------------------------

    def identity(self) -> str:
        """Content identity of the data, for calibration records (32 hex digits, BLAKE2b-128).

        Covers what a calibration depends on: the group attributes except the feature-cache entry;
        the zarr metadata (shape, dtype, chunks, codecs, fill value) of ``images``, ``samples`` and
        ``labels``; and the stored (compressed) bytes of every chunk of those arrays, with their chunk
        keys. Not covered: the ``features`` cache (caching features never changes the identity),
        other files in the directory, timestamps, the path. Cost: one sequential read of the stored
        bytes (no decompression), so it scales with the on-disk size of the store.
        """
        h = hashlib.blake2b(digest_size=16)
        names = sorted(n for n in self._arrays if n != "features")
        attrs = {k: v for k, v in self._group.attrs.asdict().items() if k != "features"}
        header = {
            "attrs": attrs,
            "arrays": {name: self._group[name].metadata.to_dict() for name in names},
        }
        h.update(json.dumps(header, sort_keys=True, default=str).encode())
        for name in names:
            root = self._path / name
            files = sorted(p for p in root.rglob("*") if p.is_file() and p != root / "zarr.json")
            for f in files:
                rel = f.relative_to(self._path).as_posix().encode()
                h.update(len(rel).to_bytes(8, "little") + rel)
                h.update(f.stat().st_size.to_bytes(8, "little"))
                with open(f, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)
        return h.hexdigest()

    def missing_chunks(self, name: str, i: int) -> list[str]:
        """Chunk keys of image ``i`` of array ``name`` that are not on disk (zarr would read fill values).

        Returns
        -------
        list of str
            Keys relative to the array folder, e.g. ``["c/3/0/0/0/0"]``; empty when every chunk exists.
        """
        arr = self.array(name)
        k = self._index(i)
        chunks = arr.chunks
        grid = [range(-(-dim // c)) for dim, c in zip(arr.shape[1:], chunks[1:], strict=True)]
        import itertools

        out = []
        for rest in itertools.product(*grid):
            key = arr.metadata.encode_chunk_key((k // chunks[0], *rest))
            if not (self._path / name / key).is_file():
                out.append(key)
        return out

    # -- writing -----------------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if self._mode != "r+":
            raise PermissionError(
                f"the store at {self._path} was opened read-only (mode='r'); open it with mode='r+' to write"
            )

    def write_image(
        self,
        i: int,
        *,
        image: Any,
        samples: Any,
        label: Any | None = None,
        atol: float | None = None,
    ) -> None:
        """Validate and write image ``i`` (streaming writer).

        Parameters
        ----------
        i : int
            Image index, ``-N <= i < N``.
        image : array, shape ``S``
            Real-valued image (stored as float32).
        samples : array, shape ``(T, L, *S)``
            Softmax probabilities (stored in the store's samples dtype; checked after that cast).
        label : integer array, shape ``S``
            Ground truth in 0..L−1; required when the store has labels, refused otherwise.
        atol : float, optional
            Tolerance on the sums of probabilities (default per samples dtype).

        Nothing is written when any check fails.
        """
        self._require_writable()
        k = self._index(i)
        s = self.spatial_shape
        img = np.asarray(image)
        if not _is_real_number_dtype(img.dtype):
            raise StoreValidationError(f"images, image {k}: dtype {img.dtype}, expected real numbers")
        if img.shape != s:
            raise StoreValidationError(f"images, image {k}: shape {img.shape}, expected {s}")
        img = _cast(img, np.float32)
        check_image(k, img)

        smp = np.asarray(samples)
        expected = (self.n_samples, self.n_labels, *s)
        if not np.issubdtype(smp.dtype, np.floating):
            raise StoreValidationError(f"samples, image {k}: dtype {smp.dtype}, expected floating point")
        if smp.shape != expected:
            raise StoreValidationError(
                f"samples, image {k}: shape {smp.shape}, expected (T, L, *S) = {expected}"
            )
        smp = _cast(smp, self.samples_dtype)
        check_samples(k, smp.astype(np.float32), _resolve_atol(atol, self.samples_dtype))

        lab = None
        if self.has_labels:
            if label is None:
                raise StoreValidationError(f"labels, image {k}: the store has labels, pass label=")
            lab = np.asarray(label)
            if lab.shape != s:
                raise StoreValidationError(f"labels, image {k}: shape {lab.shape}, expected {s}")
            check_label(k, lab, self.n_labels)
            lab = lab.astype(self._arrays["labels"].dtype)
        elif label is not None:
            raise StoreValidationError(f"labels, image {k}: the store was created without labels")

        self._arrays["images"][k] = img
        if lab is not None:
            self._arrays["labels"][k] = lab
        self._arrays["samples"][k] = smp

    def write_features(
        self,
        features: Any,
        *,
        info: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        """Store precomputed per-image features as ``features`` (N, C, *S') float16.

        Parameters
        ----------
        features : array ``(N, C, *S')`` or iterable of N arrays ``(C, *S')``
            ``S'`` has as many axes as the images (it may be a coarser grid). An iterable is consumed
            once, one image at a time, so features larger than memory can be streamed.
        info : dict, optional
            JSON-serialisable description (extractor, layer, grid spacing …) kept in
            ``attrs["features"]`` next to ``n_channels`` and ``grid_shape``.
        overwrite : bool
            Replace existing features.

        The new array is written under a temporary name and swapped in only when every image passed
        validation (finite after the float16 cast), so a failure leaves the previous state.
        """
        for _ in self.iter_write_features(features, info=info, overwrite=overwrite):
            pass

    def iter_write_features(
        self,
        features: Any,
        *,
        info: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> Generator[int, None, None]:
        """:meth:`write_features` one image at a time, yielding the number of images written so far.

        The features are consumed lazily, so a caller can report progress (or compute each image's
        features only when it is asked for). Closing the generator early, or an error, removes the
        partial array and leaves the store as it was; the new array replaces the old one only after
        the last image.
        """
        self._require_writable()
        if self.has_features and not overwrite:
            raise StoreExistsError(
                f"the store at {self._path} already has features; pass overwrite=True to replace them"
            )
        try:
            entry = yield from _iter_write_features(self._group, _FEATURES_TMP, features, self._layout, info)
        except BaseException:  # includes GeneratorExit: a generator closed early
            if _FEATURES_TMP in set(self._group.array_keys()):
                del self._group[_FEATURES_TMP]
            raise
        _swap_directory(self._path / _FEATURES_TMP, self._path / "features")
        self._group.attrs["features"] = entry
        self._load()


def _swap_directory(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``, replacing an existing ``target`` only after the rename worked."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, target)


# ------------------------------------------------------------------------------------- entry points


def open_store(path: str | os.PathLike[str], mode: str = "r") -> DatasetStore:
    """Open an existing dataset store and check its structure.

    Parameters
    ----------
    path : path-like
        The store directory (a zarr v3 group).
    mode : {"r", "r+"}
        ``"r"`` (default) opens the zarr store read-only: any write raises and nothing on disk
        changes. ``"r+"`` allows :meth:`DatasetStore.write_image` / ``write_features``.

    Raises
    ------
    StoreValidationError
        The path is missing, not a zarr v3 group, not a napari-conformal store (``format``), an unknown
        ``version``, or arrays/attributes violate the format.
    """
    return DatasetStore(path, mode)


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
        JSON description of the features, kept in ``attrs["features"]``.
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
    tol = _resolve_atol(atol, sdt)
    attrs = _group_attrs(
        normalize_spacing(spacing, layout.ndim),
        normalize_label_names(label_names, layout.n_labels),
        normalize_sampler(sampler),
    )
    if features is not None:
        normalize_features_info(features_info)
    what = "napari-conformal dataset store"
    check_target(path, overwrite=overwrite, replaceable=_is_store_dir, what=what)

    def image_arrays(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        img = _cast(images[i], np.float32)
        smp = _cast(samples[i], sdt)
        lab = np.asarray(labels[i]) if labels is not None else None
        return img, smp, lab

    # Pass 1: every value, before anything touches the disk.
    for i in range(layout.n_images):
        img, smp, lab = image_arrays(i)
        check_image(i, img)
        check_samples(i, smp.astype(np.float32), tol)
        if lab is not None:
            check_label(i, lab, layout.n_labels)
    if features is not None:
        _check_features_in_memory(features, layout)

    # Pass 2: write under a temporary name, rename into place.
    with atomic_directory(path, overwrite=overwrite, replaceable=_is_store_dir, what=what) as tmp:
        group = _create_layout(tmp, layout, attrs, sdt, ldt)
        arrays = {name: group[name] for name in group.array_keys()}
        for i in range(layout.n_images):
            _write_one(arrays, i, *image_arrays(i))
        if features is not None:
            entry = _write_features(group, "features", features, layout, features_info)
            group.attrs["features"] = entry
    return DatasetStore(path, "r+")


def _check_features_in_memory(features: Any, layout: Layout) -> None:
    """Validate features given to :func:`create_store` (must be re-iterable: an array or a sequence)."""
    if not (hasattr(features, "shape") or isinstance(features, Sequence)):
        raise StoreValidationError(
            "features: create_store needs an (N, C, *S') array or a list of N arrays "
            "(use DatasetStore.write_features to stream an iterator)"
        )
    shape = None
    count = 0
    for i, feat in enumerate(_iter_features(features, layout.n_images, layout.ndim)):
        if not _is_real_number_dtype(feat.dtype):
            raise StoreValidationError(f"features, image {i}: dtype {feat.dtype}, expected real numbers")
        if feat.ndim != layout.ndim + 1 or min(feat.shape, default=0) < 1:
            raise StoreValidationError(
                f"features, image {i}: expected shape (C, *S') with {layout.ndim} spatial axes, got {feat.shape}"
            )
        if shape is not None and feat.shape != shape:
            raise StoreValidationError(
                f"features, image {i}: shape {feat.shape} differs from image 0's {shape}"
            )
        shape = feat.shape
        check_features(i, _cast(feat, np.float16))
        count += 1
    if count != layout.n_images:
        raise StoreValidationError(f"features: got {count} per-image arrays, expected N={layout.n_images}")


def _write_one(
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
