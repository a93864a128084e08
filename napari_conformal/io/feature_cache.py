"""Writing the features cache of a dataset store: one writer at a time, committed whole or not at all.

The ``features`` array ``(N, C, *S')`` (float16, one chunk per image) and its record — the extractor
description, ``n_channels`` and ``grid_shape`` — live in one directory, the record as the array's own
zarr attributes (:data:`~napari_conformal.io.validate.FEATURES_RECORD_KEY`). A write

1. takes the store's writer lock (``<store>/.features.lock``, :func:`~napari_conformal.io.lock.writer_lock`):
   a second writer is refused with "another process (pid N) is writing features to this store";
2. clears what killed writers left behind (:func:`clear_leftovers`);
3. fills a temporary array of its own, ``<store>/.features.tmp-<host>-<pid>-<random>``, record
   included, validating every image (finite after the float16 cast);
4. renames it to ``features`` (the previous cache, if any, is first renamed aside and removed after).

So a reader finds the previous cache, or briefly none while step 4 swaps, or the new one — never a
half-written array, never data without its record or a record without its data. A writer killed in
step 3 leaves only its temporary array, in step 4 at worst the previous cache renamed aside; the next
write, or the next :func:`~napari_conformal.io.store.open_store` with ``mode="r+"``, removes the first
and puts the second back, once the process that left them is gone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import uuid
from collections.abc import Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from napari_conformal.errors import StoreBusyError, StoreExistsError, StoreValidationError
from napari_conformal.io.lock import pid_alive, writer_lock
from napari_conformal.io.validate import (
    FEATURES_RECORD_KEY,
    FEATURES_WRITE_ID_KEY,
    Layout,
    check_features,
    normalize_features_info,
)

__all__ = [
    "LOCK_NAME",
    "check_features_in_memory",
    "clear_leftovers",
    "clear_leftovers_if_idle",
    "iter_write_features",
    "write_features_array",
]

#: The writer lock file, in the store directory.
LOCK_NAME = ".features.lock"
FEATURES = "features"
_TMP, _OLD = ".features.tmp-", ".features.old-"
#: What writers before the lock used as their (shared) temporary array.
_LEGACY_TMP = "features.partial"
_OWNER = re.compile(r"^(?P<host>.*)-(?P<pid>\d+)-[0-9a-f]+$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _own_name(prefix: str) -> str:
    return f"{prefix}{_host()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _owner_gone(name: str, prefix: str) -> bool:
    """Whether the process that made the leftover ``name`` is gone (False when it cannot be told)."""
    match = _OWNER.match(name[len(prefix) :])
    if match is None or match["host"] != _host():
        return False
    pid = int(match["pid"])
    return pid != os.getpid() and not pid_alive(pid)


def _leftovers(root: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Temporary arrays, previous caches renamed aside, and a legacy ``features.partial``, in ``root``."""
    tmp, old, legacy = [], [], []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return tmp, old, legacy
    for name in entries:
        if name.startswith(_TMP):
            tmp.append(root / name)
        elif name.startswith(_OLD):
            old.append(root / name)
        elif name == _LEGACY_TMP:
            legacy.append(root / name)
    return tmp, old, legacy


def clear_leftovers(root: Path) -> list[str]:
    """Remove what killed feature writers left in the store ``root``; call with its writer lock held.

    A temporary array or a previous cache renamed aside is handled only when the process named in
    it is gone (same host, pid no longer running). When ``features`` is missing and exactly one
    previous cache is aside (a writer died between its two renames), that cache is put back: it is
    complete, record included. A legacy ``features.partial`` (from writers without the lock, which
    had no owner in its name) is removed: with the lock held no writer of this version can be using it.

    Returns
    -------
    list of str
        The names removed or restored.
    """
    tmp, old, legacy = _leftovers(root)
    done = []
    old = [p for p in old if _owner_gone(p.name, _OLD)]
    if old and not (root / FEATURES).exists() and len(old) == 1:
        try:
            os.rename(old[0], root / FEATURES)
            done.append(old[0].name)
            old = []
        except OSError:
            pass
    for path in [*(p for p in tmp if _owner_gone(p.name, _TMP)), *old, *legacy]:
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            done.append(path.name)
    return done


def clear_leftovers_if_idle(root: Path) -> list[str]:
    """:func:`clear_leftovers` when there is anything to clear and no writer holds the lock; never raises.

    Run when a store is opened for writing. Touches nothing when the store is clean.
    """
    tmp, old, legacy = _leftovers(root)
    if not (tmp or old or legacy or (root / LOCK_NAME).exists()):
        return []
    try:
        with writer_lock(root / LOCK_NAME, what=f"clearing feature-cache leftovers in {root}", wait=0.0):
            return clear_leftovers(root)
    except (StoreBusyError, OSError):  # a writer is at work, a read-only folder, …: leave it for later
        return []


# ------------------------------------------------------------------------------------- the values


def _cast(values: Any, dtype: Any) -> np.ndarray:
    """``values`` as a numpy array of ``dtype``; overflow becomes ±inf silently (validation reports it)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values).astype(dtype)


def _real(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def _iter_features(features: Any, n_images: int, ndim: int) -> Iterable[np.ndarray]:
    """Per-image ``(C, *S')`` arrays from an ``(N, C, *S')`` array or a sequence/iterable of N arrays."""
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


def _check_one(i: int, feat: np.ndarray, ndim: int, shape: tuple[int, ...] | None) -> np.ndarray:
    """Image ``i``'s features as stored (float16), checked: real, ``(C, *S')``, the shape of image 0, finite."""
    if not _real(feat.dtype):
        raise StoreValidationError(f"features, image {i}: dtype {feat.dtype}, expected real numbers")
    if feat.ndim != ndim + 1 or min(feat.shape, default=0) < 1:
        raise StoreValidationError(
            f"features, image {i}: expected shape (C, *S') with {ndim} spatial axes, got {feat.shape}"
        )
    if shape is not None and feat.shape != shape:
        raise StoreValidationError(f"features, image {i}: shape {feat.shape} differs from image 0's {shape}")
    stored = _cast(feat, np.float16)
    check_features(i, stored)
    return stored


def check_features_in_memory(features: Any, layout: Layout) -> None:
    """Validate features given to ``create_store`` before anything is written (an array or a sequence)."""
    if not (hasattr(features, "shape") or isinstance(features, Sequence)):
        raise StoreValidationError(
            "features: create_store needs an (N, C, *S') array or a list of N arrays "
            "(use DatasetStore.write_features to stream an iterator)"
        )
    shape = None
    count = 0
    for i, feat in enumerate(_iter_features(features, layout.n_images, layout.ndim)):
        shape = _check_one(i, feat, layout.ndim, shape).shape
        count += 1
    if count != layout.n_images:
        raise StoreValidationError(f"features: got {count} per-image arrays, expected N={layout.n_images}")


def write_features_array(
    directory: Path, features: Any, layout: Layout, info: Mapping[str, Any] | None
) -> Generator[int, None, dict[str, Any]]:
    """Create the features array, record included, as the zarr array ``directory`` and fill it.

    Yields the number of images written so far; returns the record. ``directory`` must not exist
    (it is created with the first image, whose shape gives ``(C, *S')``).
    """
    info_dict = normalize_features_info(info)
    array = None
    record: dict[str, Any] = {}
    count = 0
    for i, feat in enumerate(_iter_features(features, layout.n_images, layout.ndim)):
        if i >= layout.n_images:
            raise StoreValidationError(f"features: more than N={layout.n_images} per-image arrays given")
        stored = _check_one(i, feat, layout.ndim, None if array is None else tuple(array.shape[1:]))
        if array is None:
            shape = tuple(int(k) for k in stored.shape)
            record = {**info_dict, "n_channels": shape[0], "grid_shape": list(shape[1:])}
            array = zarr.create_array(
                LocalStore(directory),
                shape=(layout.n_images, *shape),
                dtype=np.float16,
                chunks=(1, *shape),
                fill_value=0.0,
                zarr_format=3,
                attributes={FEATURES_RECORD_KEY: record, FEATURES_WRITE_ID_KEY: uuid.uuid4().hex},
                config={"write_empty_chunks": True},
            )
        array[i] = stored
        count += 1
        yield count
    if count != layout.n_images:
        raise StoreValidationError(f"features: got {count} per-image arrays, expected N={layout.n_images}")
    return record


def _commit(new: Path, root: Path) -> None:
    """Rename the complete array ``new`` to ``root/features``; the previous cache is renamed aside first."""
    target = root / FEATURES
    if not target.exists():
        os.rename(new, target)
        return
    old = root / _own_name(_OLD)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def iter_write_features(
    root: Path,
    layout: Layout,
    features: Any,
    *,
    info: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Generator[int, None, dict[str, Any]]:
    """Write the features cache of the store ``root`` (see the module docstring), one image at a time.

    Yields the number of images written so far and returns the record once the new cache is in
    place. Closing the generator early, or an error, removes the temporary array and leaves the store
    as it was.

    Raises
    ------
    StoreBusyError
        Another process is writing features to this store.
    StoreExistsError
        The store has features (possibly written by another process since it was opened) and
        ``overwrite`` is False.
    StoreValidationError
        A feature array violates the format (nothing is committed).
    """
    with writer_lock(root / LOCK_NAME, what=f"writing features to the store at {root}"):
        clear_leftovers(root)
        if (root / FEATURES).exists() and not overwrite:
            raise StoreExistsError(
                f"the store at {root} already has features; pass overwrite=True to replace them"
            )
        tmp = root / _own_name(_TMP)
        try:
            record = yield from write_features_array(tmp, features, layout, info)
            _commit(tmp, root)
        finally:  # also GeneratorExit: a generator closed early
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return record
