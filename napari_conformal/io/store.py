"""The dataset store (docs/store.md): a zarr v3 group of images, softmax samples and optional labels.

One chunk per image (``images`` chunk ``(1, *S)``, ``samples`` chunk ``(1, T, L, *S)``), so
:meth:`DatasetStore.image`, :meth:`~DatasetStore.samples` and friends read exactly one image from
disk; the store may be far larger than memory. The format rules live in
:mod:`napari_conformal.io.validate`, the value checks in :mod:`napari_conformal.core.validation`.

Three ways in:

* :func:`create_store` — in-memory (or any indexable) arrays → a new store, validated before anything
  is written and renamed into place when complete (:mod:`napari_conformal.io.store_write`).
* :meth:`DatasetStore.create_empty` + :meth:`DatasetStore.write_image` — streaming writer for
  stores larger than memory (each image is validated before it is written).
* :func:`open_store` — open an existing store, read-only by default; the structure (attributes,
  shapes, dtypes, the metadata of every array) is validated on open, values when an image is read
  (:func:`napari_conformal.io.dataset.read_image`) or by :meth:`DatasetStore.validate`.

Reading refuses what zarr would paper over: a chunk missing on disk (zarr would return fill values)
or one that does not decode raises a :class:`~napari_conformal.errors.StoreValidationError` naming the
array and the image. The features cache is written by :mod:`napari_conformal.io.feature_cache`
(one writer at a time, committed whole with its record); a store opened before the cache is replaced
refuses to mix the new cache with the old record.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from napari_conformal.core.validation import check_image, check_label, check_samples
from napari_conformal.errors import ConformalError, StoreExistsError, StoreValidationError
from napari_conformal.io import feature_cache, store_write
from napari_conformal.io.store_write import create_store
from napari_conformal.io.validate import (
    ARRAY_NAMES,
    FEATURES_WRITE_ID_KEY,
    check_features,
    check_format_attrs,
    check_layout,
    check_metadata,
    check_stored_dtypes,
    features_record,
    resolve_atol,
)

__all__ = ["DatasetStore", "create_store", "open_store"]

_MODES = ("r", "r+")
#: Tries at opening ``features`` while another process swaps it (absent for an instant, then new).
_FEATURES_OPEN_TRIES = 5

Progress = Callable[[int, int], Any]


def _one_line(exc: BaseException, limit: int = 200) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"


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
        if mode == "r+":  # what a killed feature writer left behind (only when its process is gone)
            feature_cache.clear_leftovers_if_idle(self._path)
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

    def _open_array(self, name: str) -> zarr.Array | None:
        """Array ``name`` of the group, None when absent; unreadable metadata is a StoreValidationError.

        Only the arrays the format defines are opened (never whatever else is in the folder, such as a
        feature writer's temporary array).
        """
        folder = self._path / name
        if not folder.exists():
            return None
        meta = folder / "zarr.json"
        hint = "; the store is damaged" + (
            " (delete the 'features' folder to drop the feature cache)" if name == "features" else ""
        )
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if not folder.exists():  # removed meanwhile (a feature cache being swapped)
                return None
            raise StoreValidationError(
                f"{name}: the folder {folder} has no zarr.json (array metadata){hint}"
            ) from None
        except (OSError, ValueError) as exc:
            raise StoreValidationError(
                f"{name}: cannot read its array metadata {meta} ({_one_line(exc)}){hint}"
            ) from None
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "array":
            raise StoreValidationError(f"{name}: {meta} is not zarr v3 array metadata{hint}")
        try:
            array = self._group[name]
        except (KeyError, ValueError, TypeError, NotImplementedError, OSError) as exc:
            if not meta.exists():  # removed meanwhile (a feature cache being swapped)
                return None
            raise StoreValidationError(f"{name}: cannot open the array ({_one_line(exc)}){hint}") from None
        if not isinstance(array, zarr.Array):
            raise StoreValidationError(f"{name}: expected an array, found a group{hint}")
        return array.with_config(store_write.WRITE_CONFIG) if self._mode == "r+" else array

    def _open_features(self) -> zarr.Array | None:
        """The ``features`` array; retried while another process swaps a new cache in."""
        for attempt in range(_FEATURES_OPEN_TRIES):
            try:
                return self._open_array("features")
            except (FileNotFoundError, KeyError, StoreValidationError):
                if attempt == _FEATURES_OPEN_TRIES - 1:
                    raise
        return None  # pragma: no cover

    def _load(self) -> None:
        """(Re)read attributes and array metadata from disk and check the structure."""
        attrs = self._group.attrs.asdict()
        check_format_attrs(attrs)
        arrays = {}
        for name in ARRAY_NAMES:
            array = self._open_features() if name == "features" else self._open_array(name)
            if array is not None:
                arrays[name] = array
        layout = check_layout({name: a.shape for name, a in arrays.items()})
        check_stored_dtypes({name: a.dtype for name, a in arrays.items()})
        meta = check_metadata(attrs, layout)
        features = arrays.get("features")
        array_attrs = None if features is None else features.attrs.asdict()
        self._features_info = features_record(array_attrs, attrs, layout.feature_shape)
        self._features_write = None if array_attrs is None else array_attrs.get(FEATURES_WRITE_ID_KEY)
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
            Opened in ``"r+"`` mode. Reading an image never written is an error naming its missing
            chunk (never fill values).
        """
        return store_write.create_empty(
            path,
            n_images,
            spatial_shape,
            n_samples,
            n_labels,
            samples_dtype=samples_dtype,
            labels=labels,
            spacing=spacing,
            label_names=label_names,
            sampler=sampler,
            overwrite=overwrite,
        )

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
        """The record of the features cache (channels, grid shape, extractor description), or None.

        Read from the ``features`` array's own attributes, written with its data; None when the
        store has no features (or, for a store from an older writer, none that agree with the array).
        """
        return copy.deepcopy(self._features_info)

    @property
    def samples_dtype(self) -> np.dtype:
        """Storage dtype of the samples (float16 or float32)."""
        return np.dtype(self._arrays["samples"].dtype)

    @property
    def attrs(self) -> dict[str, Any]:
        """A deep copy of the group attributes, ``features`` being the record of the features cache.

        That entry is derived from the ``features`` array (:attr:`features_info`) and absent without one.
        """
        attrs = {k: v for k, v in self._attrs.items() if k != "features"}
        if self._features_info is not None:
            attrs["features"] = self._features_info
        return copy.deepcopy(attrs)

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
                f"{name}, image {k}: cannot decode its stored chunk ({_one_line(exc)}); the store is damaged"
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

    def _check_features_unchanged(self) -> None:
        """Refuse when the features cache on disk is no longer the one this store opened (replaced since)."""
        if self._features_write is None:  # written before write ids: nothing to compare
            return
        try:
            doc = json.loads((self._path / "features" / "zarr.json").read_text(encoding="utf-8"))
            now = doc.get("attributes", {}).get(FEATURES_WRITE_ID_KEY)
        except (OSError, ValueError, AttributeError):
            now = None
        if now != self._features_write:
            raise StoreValidationError(
                f"features: the feature cache of the store at {self._path} was replaced while this store was "
                "open (features were written since); open the store again"
            )

    def features(self, i: int) -> np.ndarray:
        """Precomputed features of image ``i`` as float32, shape ``(C, *S')``.

        Always those of the cache this store opened: if another process replaced it since, this
        raises instead of mixing the new data with the old record.
        """
        if not self.has_features:
            raise StoreValidationError(f"features: the store at {self._path} has no features array")
        try:
            values = self._read("features", i)
        except StoreValidationError:
            self._check_features_unchanged()  # a swap explains a missing/undecodable chunk better
            raise
        self._check_features_unchanged()  # read before this check: from the cache still in place then
        return np.asarray(values, dtype=np.float32)

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
            True: additionally read every image — a missing or undecodable chunk is an error — and
            check its values with :mod:`napari_conformal.core.validation`: images and features finite,
            samples in [0, 1] summing to 1 over the labels within ``atol``, labels in 0..L−1.
        atol : float, optional
            Tolerance on ``|Σ_l p_l − 1|``; default that of the stored samples dtype (1e-3 for
            float16, 1e-4 for float32).
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
        tol = resolve_atol(atol, self.samples_dtype)
        if progress is not None and not callable(progress):
            raise TypeError("progress must be a callable progress(done, total)")
        n, s = self.n_images, self.spatial_shape
        for i in range(n):
            check_image(self.image(i), i, shape=s)
            check_samples(self.samples(i), i, atol=tol, spatial_shape=s)
            if self.has_labels:
                check_label(self.label(i), i, n_labels=self.n_labels, shape=s)
            if self.has_features:
                check_features(i, self._read("features", i))
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

        Notes
        -----
        Nothing is written when any check fails.
        """
        self._require_writable()
        k = self._index(i)
        values = store_write.prepare_image(
            self._layout, self.samples_dtype, k, image, samples, label, atol=atol
        )
        store_write.write_one(self._arrays, k, *values)

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
            JSON-serialisable description (extractor, layer, grid spacing …), recorded with the array
            next to ``n_channels`` and ``grid_shape`` (:attr:`features_info`).
        overwrite : bool
            Replace existing features.

        Notes
        -----
        The new array is written, record included, under a temporary name of this process and renamed
        into place only when every image passed validation (finite after the float16 cast), so a
        failure leaves the previous state. One process writes at a time (:mod:`~napari_conformal.io.feature_cache`).

        Raises
        ------
        StoreBusyError
            (a :class:`~napari_conformal.errors.ConformalError`) Another process is writing features to
            this store: "another process (pid N) is writing features to this store …".
        StoreExistsError
            The store has features and ``overwrite`` is False.
        StoreValidationError
            A feature array violates the format.
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
        features only when it is asked for; reading :meth:`features` of the old cache meanwhile is
        fine). Closing the generator early, or an error, removes the partial array and leaves the
        store as it was; the new array replaces the old one only after the last image. The writer
        lock is held from the first image to the end.
        """
        self._require_writable()
        if self.has_features and not overwrite:
            raise StoreExistsError(
                f"the store at {self._path} already has features; pass overwrite=True to replace them"
            )
        yield from feature_cache.iter_write_features(
            self._path, self._layout, features, info=info, overwrite=overwrite
        )
        self._load()


# ------------------------------------------------------------------------------------- entry points


def open_store(path: str | os.PathLike[str], mode: str = "r") -> DatasetStore:
    """Open an existing dataset store and check its structure.

    Parameters
    ----------
    path : path-like
        The store directory (a zarr v3 group).
    mode : {"r", "r+"}
        ``"r"`` (default) opens the zarr store read-only: any write raises and nothing on disk
        changes. ``"r+"`` allows :meth:`DatasetStore.write_image` / ``write_features``, and clears what
        a killed feature writer left behind (once its process is gone).

    Raises
    ------
    StoreValidationError
        The path is missing, not a zarr v3 group, not a napari-conformal store (``format``), an unknown
        ``version``, an array's metadata is unreadable, or arrays/attributes violate the format.
    """
    return DatasetStore(path, mode)
