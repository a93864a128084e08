"""Read the demo data that ships inside the package (``napari_conformal/data/demo/*.npz``).

Every file is a plain ``.npz`` of integer arrays, read with ``allow_pickle=False``. It holds the
held-out images (and, for the single nuclei image, all tiles) plus the identifiers of the training,
calibration and test parts (see :mod:`napari_conformal.demo_data.splits`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from napari_conformal.demo_data.catalog import DemoSpec, get_demo
from napari_conformal.errors import ConformalError

__all__ = [
    "SLICES_PER_VOLUME",
    "SLICE_MIN_PIXELS",
    "DemoData",
    "data_dir",
    "largest_slice",
    "load_demo_data",
    "read_npz",
    "slice_positions",
    "subset_counts",
    "tile_grid",
]

#: hippocampus-2d: sagittal slices taken from each volume, at evenly spaced positions
SLICES_PER_VOLUME = 6
#: hippocampus-2d: a slice qualifies when it holds at least this many pixels of class 1 (anterior)
SLICE_MIN_PIXELS = 30
#: nuclei: each packaged tile is cut into this many parts per side (64 × 64 → four 32 × 32 images)
NUCLEI_QUADRANT_DIVISOR = 2
#: nuclei: a quadrant is kept when it holds at least this many nucleus pixels
NUCLEI_MIN_PIXELS = 20


def data_dir() -> Path:
    """``napari_conformal/data/demo`` (packaged data, licence notes, demo model weights)."""
    return Path(str(resources.files("napari_conformal") / "data" / "demo"))


def read_npz(filename: str) -> dict[str, np.ndarray]:
    """All arrays of a packaged ``.npz`` (``allow_pickle=False``)."""
    path = data_dir() / filename
    if not path.is_file():
        raise ConformalError(f"packaged demo data {path} is missing; run scripts/pack_demo_data.py")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def largest_slice(label_volume: np.ndarray, axis: int = 0) -> int:
    """Index along ``axis`` of the slice with the most foreground (label > 0) voxels (first on ties)."""
    other = tuple(a for a in range(label_volume.ndim) if a != axis)
    return int(np.argmax((np.asarray(label_volume) > 0).sum(axis=other)))


def slice_positions(
    label_volume: np.ndarray,
    n: int = SLICES_PER_VOLUME,
    *,
    fg_class: int = 1,
    min_pixels: int = SLICE_MIN_PIXELS,
) -> list[int]:
    """Indices along axis 0 of ``n`` slices spread evenly over the span of a structure.

    The qualifying slices are those with at least ``min_pixels`` pixels of ``fg_class``; the ``n``
    positions are evenly spaced between the first and the last of them (``numpy.linspace``,
    rounded), each moved to the nearest qualifying slice (the lower one on ties). Duplicates are
    removed, so fewer than ``n`` come back only when fewer than ``n`` slices qualify.

    Parameters
    ----------
    label_volume : ndarray, shape (Z, Y, X)
        Integer labels of one volume.
    n : int
        Number of slices wanted (≥ 1).
    fg_class : int
        The class whose presence qualifies a slice.
    min_pixels : int
        Minimum number of pixels of ``fg_class`` in a qualifying slice.

    Returns
    -------
    list of int
        Sorted, distinct slice indices (empty when no slice qualifies).
    """
    counts = (np.asarray(label_volume) == fg_class).reshape(label_volume.shape[0], -1).sum(axis=1)
    ok = np.flatnonzero(counts >= min_pixels)
    if ok.size == 0:
        return []
    wanted = np.rint(np.linspace(ok[0], ok[-1], int(n))).astype(np.int64)
    chosen = {int(ok[np.argmin(np.abs(ok - w))]) for w in wanted}
    return sorted(chosen)


def tile_grid(image: np.ndarray, tile: int) -> np.ndarray:
    """Cut a 2D array into non-overlapping ``tile × tile`` tiles, row-major: ``(n_tiles, tile, tile)``.

    The image sides must be multiples of ``tile``.
    """
    h, w = image.shape
    if h % tile or w % tile:
        raise ValueError(f"image shape {image.shape} is not a multiple of the tile size {tile}")
    return image.reshape(h // tile, tile, w // tile, tile).transpose(0, 2, 1, 3).reshape(-1, tile, tile)


def subset_counts(n_calibration: int, n_test: int, n_images: int | None) -> tuple[int, int]:
    """How many calibration and test images a subset of ``n_images`` takes (proportional, each ≥ 1).

    None keeps everything.
    """
    total = n_calibration + n_test
    if n_images is None:
        return n_calibration, n_test
    if isinstance(n_images, bool) or not isinstance(n_images, int | np.integer) or not 2 <= n_images <= total:
        raise ConformalError(f"n_images must be an integer in 2..{total} (or None for all), got {n_images!r}")
    n_cal = min(n_calibration, n_images - 1, max(1, math.floor(n_images * n_calibration / total + 0.5)))
    n_cal = max(n_cal, n_images - n_test)
    return n_cal, n_images - n_cal


@dataclass
class DemoData:
    """The images of one demo store, before sampling.

    Attributes
    ----------
    spec : DemoSpec
    images : float32 array ``(N, *S)``
        Calibration images first, then test images; intensities in [0, 1].
    labels : uint8 array ``(N, *S)``
    source_ids : list of int
        Identifier of each image in its source, the unit the split never cuts (hippocampus case
        number; MNI slice z index; nuclei tile index, the quadrant is ``quadrants[i]``; for
        hippocampus-2d the case number, the slice is ``slices[i]``).
    split : dict
        ``{"train": [], "calibration": [...], "test": [...]}``: indices into ``images`` (no image of
        the store was used to train the model).
    train_source_ids : list of int
        Source identifiers of the model-training images (not in the store).
    slices : list of int
        hippocampus-2d only: index along axis 0 of each slice in its volume.
    quadrants : list of int
        nuclei only: which quadrant of its 64 × 64 tile each 32 × 32 image is (0–3, row-major).
    keys : list of int
        Per-image seed keys of the sampler (the source identifier; ``1000 · case + slice`` for
        hippocampus-2d, ``1000 · tile + quadrant`` for nuclei), so an image's samples depend neither
        on the subset nor on its neighbours.
    """

    spec: DemoSpec
    images: np.ndarray
    labels: np.ndarray
    source_ids: list[int]
    split: dict[str, list[int]]
    train_source_ids: list[int]
    slices: list[int] = field(default_factory=list)
    quadrants: list[int] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)

    @property
    def groups(self) -> list[int]:
        """The unit of exchangeability of each image: its volume (case number) or source item."""
        return list(self.source_ids)


def _take(data: dict[str, np.ndarray], n_images: int | None) -> tuple[list[int], list[int], list[int]]:
    """Positions (in ``data['ids']``) of the kept calibration and test items, and the training ids."""
    ids = [int(v) for v in data["ids"]]
    where = {v: k for k, v in enumerate(ids)}
    cal = [where[int(v)] for v in data["calibration_ids"]]
    test = [where[int(v)] for v in data["test_ids"]]
    n_cal, n_test = subset_counts(len(cal), len(test), n_images)
    return cal[:n_cal], test[:n_test], [int(v) for v in data["train_ids"]]


def _hippocampus_slices(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The packaged volumes cut into :func:`slice_positions` slices (one item per slice)."""
    ids, images, labels, slices = [], [], [], []
    for case, vol, lab in zip(data["ids"], data["images"], data["labels"], strict=True):
        for k in slice_positions(lab):
            ids.append(int(case))
            images.append(vol[k])
            labels.append(lab[k])
            slices.append(k)
    return {
        "ids": np.asarray(ids, dtype=np.int64),
        "images": np.stack(images),
        "labels": np.stack(labels),
        "slices": np.asarray(slices, dtype=np.int64),
    }


def _nuclei_quadrants(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tile of the nuclei image cut into its 2 × 2 quadrants (row-major), those with a nucleus.

    A quadrant is kept when it holds at least :data:`NUCLEI_MIN_PIXELS` nucleus pixels (the same rule
    for calibration and test tiles; without foreground an image's false-negative rate is undefined).
    """
    tile = int(data["tile_size"])
    half = tile // NUCLEI_QUADRANT_DIVISOR
    tiles = tile_grid(data["image"], tile)
    masks = tile_grid(data["mask"], tile)
    ids, images, labels, parts = [], [], [], []
    for t, (img, msk) in enumerate(zip(tiles, masks, strict=True)):
        for q, (a, b) in enumerate(zip(tile_grid(img, half), tile_grid(msk, half), strict=True)):
            if int((b > 0).sum()) < NUCLEI_MIN_PIXELS:  # no nucleus to segment: its FNR is undefined
                continue
            ids.append(t)
            images.append(a)
            labels.append(b)
            parts.append(q)
    return {
        "ids": np.asarray(ids, dtype=np.int64),
        "images": np.stack(images),
        "labels": np.stack(labels),
        "parts": np.asarray(parts, dtype=np.int64),
    }


def load_demo_data(name: str, *, n_images: int | None = None) -> DemoData:
    """Images, labels and split of demo dataset ``name`` from the packaged data.

    Parameters
    ----------
    name : str
        ``"hippocampus-3d"``, ``"hippocampus-2d"``, ``"hippocampus-2d-fewshot"``, ``"brain-mri"`` or
        ``"nuclei"``.
    n_images : int, optional
        Keep only the first calibration and test images, ``n_images`` in all (≥ 2), in the
        proportion of the full split; for quick tests.

    Returns
    -------
    DemoData
        hippocampus-2d (and hippocampus-2d-fewshot, the same slices) holds :data:`SLICES_PER_VOLUME`
        sagittal slices of every calibration and test volume (:func:`slice_positions`); nuclei holds
        the 32 × 32 quadrants of every calibration and test tile that show a nucleus. Calibration items first, then
        test items: the split is by volume (tile), never inside one.
    """
    spec = get_demo(name)
    data = read_npz(spec.data_file)
    parts: list[int] = []
    expanded = None
    if name.startswith("hippocampus-2d"):  # hippocampus-2d and hippocampus-2d-fewshot: the same slices
        expanded = _hippocampus_slices(data)
        expanded["parts"] = expanded.pop("slices")
    elif name == "nuclei":
        expanded = _nuclei_quadrants(data)
    if expanded is not None:
        items = [int(v) for v in expanded["ids"]]
        cal_set = {int(v) for v in data["calibration_ids"]}
        test_set = {int(v) for v in data["test_ids"]}
        # calibration items first, then test items, each in the order of their source identifiers
        cal = [k for k, v in enumerate(items) if v in cal_set]
        test = [k for k, v in enumerate(items) if v in test_set]
        n_cal, n_test = subset_counts(len(cal), len(test), n_images)
        cal, test = cal[:n_cal], test[:n_test]
        train_ids = [int(v) for v in data["train_ids"]]
        order = cal + test
        parts = [int(expanded["parts"][k]) for k in order]
        data = {**data, **expanded}
    else:
        cal, test, train_ids = _take(data, n_images)
        order = cal + test
    images = data["images"][order]
    labels = data["labels"][order]
    if images.ndim != spec.ndim + 1:
        raise ConformalError(f"packaged data {spec.data_file}: images have shape {images.shape}")
    source_ids = [int(data["ids"][k]) for k in order]
    keys = [1000 * c + k for c, k in zip(source_ids, parts, strict=True)] if parts else list(source_ids)
    return DemoData(
        spec=spec,
        images=images.astype(np.float32) / np.float32(255.0),
        labels=labels.astype(np.uint8),
        source_ids=source_ids,
        split={"train": [], "calibration": list(range(len(cal))), "test": list(range(len(cal), len(order)))},
        train_source_ids=train_ids,
        slices=parts if name.startswith("hippocampus-2d") else [],
        quadrants=parts if name == "nuclei" else [],
        keys=keys,
    )
